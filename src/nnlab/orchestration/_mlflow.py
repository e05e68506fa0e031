"""MLflow for a search or a study: the target store, a parent run per study, a child run per unit.

MLflow is imported (through :mod:`nnlab.integrations`) only when a parent run is opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MlflowTarget", "abort_parent", "finish_parent", "open_parent", "parent_name", "resolve_mlflow"]


@dataclass(frozen=True)
class MlflowTarget:
    """Where the runs of a search or study go in MLflow; handed to the workers with the plan (picklable).

    ``parent`` is the id of the parent run once :func:`open_parent` opened it,
    None while it is not open or when MLflow cannot be used -- then the runs
    are not logged either: one warning for the search, not one per run.

    Example:
        >>> target = MlflowTarget("sqlite:///mlflow.db", "nnlab", parent="abc")
        >>> target.child_tags({"nnlab.trial": 3})
        {'mlflow.parentRunId': 'abc', 'nnlab.trial': '3'}
    """

    uri: str
    experiment: str
    parent: str | None = None
    artifacts: str | None = None  # a database server's artifact folder: <output dir>/mlartifacts

    def run_overrides(self) -> dict[str, Any]:
        """The configuration keys of a child run: the parent's store and experiment, or MLflow off."""
        if self.parent is None:
            return {"mlflow_tracking_uri": None}
        return {"mlflow_tracking_uri": self.uri, "mlflow_experiment": self.experiment}

    def child_tags(self, tags: Mapping[str, Any]) -> dict[str, str] | None:
        """The MLflow tags of a child run (``mlflow.parentRunId`` first); None without a parent."""
        if self.parent is None:
            return None
        return {"mlflow.parentRunId": self.parent, **{k: str(v) for k, v in tags.items()}}


def resolve_mlflow(option: str | None, output_dir: str | os.PathLike,
                   configs: Sequence[Mapping[str, Any]]) -> MlflowTarget | None:
    """The MLflow target of ``--mlflow [URI]`` (``option``; ``""`` for ``MLFLOW_TRACKING_URI`` when the
    environment sets it, else the store in ``output_dir``).

    Without the option: the ``mlflow_tracking_uri`` every configuration in
    ``configs`` sets (e.g. by ``--set``), or None. The experiment is the first
    configuration's ``mlflow_experiment``; its default gives way to ``MLFLOW_EXPERIMENT_NAME``.

    Raises:
        ConfigError: naming --mlflow, for an option that is not text, a URI of
            the wrong form or a local store in a directory that does not exist.
    """
    from nnlab.errors import ConfigError
    from nnlab.integrations import experiment_name, mlflow_option

    if option is not None and not isinstance(option, str):
        raise ConfigError(f"--mlflow: expected a tracking URI (text), got {type(option).__name__}")

    experiment = experiment_name(configs[0].get("mlflow_experiment") if configs else None)
    artifacts = str((Path(output_dir) / "mlartifacts").resolve())
    if option is not None:
        return MlflowTarget(mlflow_option(option, output_dir), experiment, artifacts=artifacts)
    uris = {c.get("mlflow_tracking_uri") for c in configs}
    if len(uris) == 1 and None not in uris:
        return MlflowTarget(str(uris.pop()), experiment, artifacts=artifacts)
    return None


def parent_name(study_name: str, storage_label: str) -> str:
    """The name of a parent run: the study's, and 8 hex digits of its storage.

    Two studies of one name (``nnlab-hpo`` by default) in two output
    directories logging to one tracking server get two parents; a rerun of the
    same study reopens its own.
    """
    return f"{study_name}@{hashlib.sha256(storage_label.encode('utf-8')).hexdigest()[:8]}"


def open_parent(target: MlflowTarget, *, kind: str, study_name: str, storage_label: str,
                params: Mapping[str, Any], say: Callable[[str], Any] | None = None,
                preset: str | None = None) -> MlflowTarget:
    """``target`` with its parent run opened (created, or reopened by a rerun); parent None on failure.

    MLflow that cannot be used (package missing, server unreachable) costs one
    warning; the search or study goes on without it.
    """
    from nnlab._redact import redact_url_password
    from nnlab.integrations.mlflow import open_parent_run
    from nnlab.tracking import ErrorRecorder

    name = parent_name(study_name, storage_label)
    run_id = open_parent_run(target.uri, target.experiment, kind=kind, name=name,
                             params={"study_name": study_name, "storage": storage_label, **params},
                             errors=ErrorRecorder(), artifacts=target.artifacts, preset=preset or "default")
    if run_id is not None and say is not None:
        # Two lines: a store's URI is as long as its path, and every printed line fits 120 columns.
        say(f"MLflow: parent run {run_id} ('{kind}: {name}', experiment '{target.experiment}'), "
            f"a child run per {'trial' if kind == 'hpo' else '(cell, seed)'}\n  store {redact_url_password(target.uri)}")
    return dataclasses.replace(target, parent=run_id)


def finish_parent(target: MlflowTarget | None, *, status: str, metrics: Mapping[str, Any],
                  files: Sequence[tuple[Path, str | None]]) -> None:
    """Log the parent run's summary metrics and files and end it (nothing without a parent)."""
    if target is None or target.parent is None:
        return
    from nnlab.integrations.mlflow import finish_parent_run
    from nnlab.tracking import ErrorRecorder

    finish_parent_run(target.uri, target.parent, status=status, metrics=metrics, files=files,
                      errors=ErrorRecorder())


def abort_parent(target: MlflowTarget | None, error: BaseException, *,
                 metrics: Callable[[], Mapping[str, Any]], files: Sequence[tuple[Path, str | None]]) -> None:
    """End the parent run as the work did when ``error`` stopped it: KILLED (Ctrl-C) or FAILED.

    ``metrics`` is called only when there is a parent run; if it fails (the
    storage may be what failed), the run ends without them.
    """
    if target is None or target.parent is None:
        return
    try:
        values = dict(metrics())
    except Exception:  # noqa: BLE001 - the storage may be what failed; the original error goes on
        values = {}
    finish_parent(target, status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED",
                  metrics=values, files=files)
