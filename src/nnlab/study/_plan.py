"""The validated plan of a study: its cells, seeds, base configuration, directory, storage and data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnlab._redact import redact
from nnlab.errors import ConfigError
from nnlab.orchestration import (
    MlflowTarget,
    StorageSpec,
    budget_lock_path,
    check_positive,
    resolve_mlflow,
    resolve_storage,
    storage_spec,
)
from nnlab.study._cells import SEED_KEY, StudySpec

__all__ = ["DATA_FILE", "JOURNAL_FILE", "STUDY_ROOT", "default_output_dir", "make_plan"]

STUDY_ROOT = Path("training_output") / "studies"
DATA_FILE = "particles.csv"
JOURNAL_FILE = "study_journal.log"
_TABLE_KEYS = ("data_targets", "data_features", "data_drop_missing")
MAX_STUDY_NAME = 200  # the lock file .study-<name>.lock stays within a file name's 255 bytes


def default_output_dir(kind: str) -> Path:
    """``training_output/studies/<kind>``: where a study writes unless told otherwise."""
    return STUDY_ROOT / kind


@dataclass(frozen=True)
class _StudyPlan:
    """The validated study, handed to every worker (picklable)."""

    kind: str
    keys: tuple[str, ...]
    cells: tuple[dict[str, Any], ...]  # {"key", "overrides", "id", "label"}
    seeds: tuple[int, ...]
    reference: dict[str, Any]
    base: dict[str, Any]  # the flat base configuration
    preset: str | None
    study_dir: Path
    storage: StorageSpec
    study_name: str
    lock_path: Path
    data_path: Path
    data_generated: bool
    workers: int
    progress: bool
    n_existing: int = 0
    data_sha256: str = ""
    shown_dir: str = ""  # the study directory as the user named it, for messages
    shown_data: str = ""  # --data as the user named it, for messages
    mlflow: MlflowTarget | None = None  # a parent run per study, a child per run

    def shown(self, path: Path | str) -> str:
        """``path`` for a message: under the study directory as the user named it."""
        path = Path(path)
        if path.is_relative_to(self.study_dir):
            return str(Path(self.shown_dir) / path.relative_to(self.study_dir))
        return str(path)

    @property
    def shown_storage(self) -> str:
        return self.shown(self.storage.location) if self.storage.kind == "journal" else self.storage.label

    @property
    def runs_path(self) -> Path:
        return self.study_dir / f"{self.kind}_runs.csv"

    @property
    def record(self) -> dict[str, Any]:
        """The spec stored on the Optuna study; a rerun must match it (seeds may grow). Passwords masked (it is
        written to the storage and study_spec.json): a rerun compares the masked forms."""
        return redact({"kind": self.kind, "keys": list(self.keys),
                       "cells": [{"key": c["key"], "overrides": c["overrides"]} for c in self.cells],
                       "reference": self.reference, "seeds": list(self.seeds), "base": self.base,
                       "preset": self.preset, "data_sha256": self.data_sha256})

    def cell_of(self, cell_id: str) -> dict[str, Any] | None:
        return next((c for c in self.cells if c["id"] == cell_id), None)

    def param_distributions(self) -> dict[str, Any]:
        """Optuna distributions of the cells' key columns and the seed: a unit's trial parameters.

        Integer columns (bits, seed) are ``IntDistribution`` over their range, other
        numbers ``FloatDistribution``, anything else ``CategoricalDistribution`` of
        the cells' values -- so optuna-dashboard's history and importance plots show
        what a unit trained. Example: a precision study's ``{"schedule", "rounding",
        "bits", "policy", "seed"}``.
        """
        columns = {k: [c["key"][k] for c in self.cells] for k in self.keys}
        return {name: _distribution(values) for name, values in {**columns, SEED_KEY: list(self.seeds)}.items()}

    def label(self, cell: Mapping[str, Any]) -> str:
        """The cell's varying key columns (all of them when only one cell)."""
        varying = [k for k in self.keys if len({json.dumps(c["key"][k]) for c in self.cells}) > 1] or list(self.keys)
        return redact(" ".join(f"{k}={cell['key'][k]}" for k in varying))  # shown and written: no password


def _resolve_base(spec: StudySpec) -> dict[str, Any]:
    """The flat base configuration; keys every cell sets (and ``seed``) cannot also be set by it."""
    from nnlab.config import Config, load_config

    if isinstance(spec.base, Config):
        if spec.preset is not None:
            raise ConfigError("preset applies to a dict base configuration; a Config is used as it is")
        return spec.base.to_flat()
    if spec.base is not None and not isinstance(spec.base, Mapping):
        raise ConfigError(f"base must be a Config or a dict of configuration keys, got {type(spec.base).__name__}")
    overrides = dict(spec.base or {})
    if SEED_KEY in overrides:
        raise ConfigError("--set seed: the study sets 'seed' to each of its seeds (--seeds); remove it")
    fixed = set.intersection(*(set(c.overrides) for c in spec.cells))
    taken = sorted(set(overrides) & fixed)
    if taken:
        from nnlab.study._cells import PRECISION_OPTIONS

        key = taken[0]
        if spec.kind == "precision":
            how = (f"use {PRECISION_OPTIONS[key]}" if key in PRECISION_OPTIONS else
                   "its cells differ only in the rounding: the other constraints are off")
            raise ConfigError(f"--set {key}: a precision study sets it in every cell ({how}); remove the --set")
        raise ConfigError(f"--set {key}: every variant sets it, so the --set would change nothing; remove it")
    return load_config(spec.config_dir, preset=spec.preset, overrides=overrides).to_flat()


def make_plan(spec: StudySpec, *, output_dir: Any, workers: int, storage: str | None, study_name: str | None,
              data: Any, progress: bool, mlflow: str | None = None) -> _StudyPlan:
    """Validate everything once, before any file is written.

    Raises:
        ConfigError, DataValidationError: naming the option or key at fault.
    """
    if not isinstance(spec, StudySpec):
        raise ConfigError(f"run_study expects a StudySpec, got {type(spec).__name__}")
    check_positive("--workers", workers)
    base = _resolve_base(spec)
    cells = _cells(spec, base)
    study_dir = _study_dir(spec, output_dir)
    store = resolve_storage(storage_spec(storage, study_dir, default=study_dir / JOURNAL_FILE), workers=workers)
    name = study_name if study_name is not None else f"nnlab-study-{spec.kind}"
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("--study-name: give a non-empty name")
    if len(name) > MAX_STUDY_NAME:  # it names the study's lock file, whose name the file system limits
        raise ConfigError(f"--study-name: '{name[:40]}...' is {len(name)} characters long; at most "
                          f"{MAX_STUDY_NAME} are allowed")
    if data is not None:
        from nnlab.data import check_data_file

        data_path = check_data_file(data, option="--data", what=_data_what(base)).resolve()
        generated = False
    else:
        from nnlab.config import Config
        from nnlab.runs import check_table_keys

        check_table_keys(Config.from_flat(base))  # the study's own particles have the particle task's columns
        data_path, generated = (study_dir / DATA_FILE).resolve(), True
    # Not in the study's record: a rerun may add or drop it. One store per output directory: <out>/studies/<kind>
    # (the default study directory) logs to <out>/mlflow.db, as train and hpo of <out> do.
    target = resolve_mlflow(mlflow, mlflow_home(study_dir), [base])
    return _StudyPlan(kind=spec.kind, keys=spec.keys, cells=cells, seeds=tuple(spec.seeds),
                 reference=dict(spec.reference), base=base, preset=spec.preset, study_dir=study_dir.resolve(),
                 storage=store, study_name=name,
                 lock_path=budget_lock_path(study_dir.resolve(), name, prefix="study"),
                 data_path=data_path, data_generated=generated, workers=workers, progress=progress,
                 shown_dir=str(study_dir), shown_data=str(data) if data is not None else "", mlflow=target)


def mlflow_home(study_dir: Path) -> Path:
    """The output directory whose MLflow store a study uses: ``<out>`` for ``<out>/studies/<name>``, else itself.

    Example:
        >>> str(mlflow_home(Path("training_output/studies/bits")))
        'training_output'
    """
    return study_dir.parent.parent if study_dir.parent.name == STUDY_ROOT.name else study_dir


def _distribution(values: list[Any]) -> Any:
    """The Optuna distribution that holds ``values`` (JSON scalars of one key column)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return IntDistribution(min(values), max(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return FloatDistribution(float(min(values)), float(max(values)))
    unique = {json.dumps(v, sort_keys=True): v for v in values}
    # A choice must be None, bool, int, float or str: anything else is named by its JSON text.
    return CategoricalDistribution([v if v is None or isinstance(v, (bool, int, float, str)) else text
                                    for text, v in sorted(unique.items())])


def _data_what(base: dict[str, Any]) -> str:
    return "data file" if base.get("data_targets") else "particle data file"


def _cells(spec: StudySpec, base: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The plan's cells (JSON values), each one's configuration validated now: a bad key fails before training."""
    from nnlab.config import Config

    base_cfg = Config.from_flat(base)
    cells = []
    for cell in spec.cells:
        shared = sorted(set(cell.overrides) & set(_TABLE_KEYS))
        if shared:
            raise ConfigError(f"{spec.source(cell)}: {shared[0]} chooses the data, which every cell of a study shares; "
                              "set it for the whole study with --targets, --features or --drop-missing")
        base_cfg.updated({**cell.overrides, SEED_KEY: spec.seeds[0]}, source=spec.source(cell))
        cells.append({"key": json.loads(json.dumps(dict(cell.key))), "overrides": json.loads(json.dumps(
            dict(cell.overrides))), "id": cell.id, "label": redact(cell.label), "source": spec.source(cell)})
    return tuple(cells)


def _study_dir(spec: StudySpec, output_dir: Any) -> Path:
    """The study directory (as given, or the kind's default), checked writable without creating it."""
    from nnlab._files import probe_writable

    study_dir = Path(output_dir) if output_dir is not None else default_output_dir(spec.kind)
    _check_utf8(study_dir)
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(f"--output-dir: '{study_dir}' exists and is not a directory")
    try:
        probe_writable(study_dir)
    except OSError as exc:
        raise ConfigError(f"--output-dir: '{study_dir}' cannot be written: {exc.strerror or exc}") from None
    return study_dir


def _check_utf8(study_dir: Path) -> None:
    """The study directory's full path is UTF-8: the study's files (runs table, record, run logs) name it."""
    import os

    for path in (study_dir, study_dir.absolute()):
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            raise ConfigError(f"--output-dir: '{shown}' is not a UTF-8 path (the study's files record it); "
                              "choose a directory whose full path is UTF-8") from None
