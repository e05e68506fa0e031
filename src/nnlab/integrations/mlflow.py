"""MLflow: one MLflow run per nnlab run, parent runs for searches and studies.

Everything goes through MLflow's own client (:class:`mlflow.MlflowClient`);
``mlflow`` is imported only when a tracking URI is configured, and it is an
optional extra (``pip install 'nnlab[mlflow]'``). An unreachable server or a
missing package costs the run one warning and an entry in its error summary.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import keras

from nnlab._files import atomic_write_json
from nnlab._numbers import float_or_none
from nnlab._redact import redact, redact_url_password, without_masked_password
from nnlab.integrations._uri import local_store_dir
from nnlab.tracking import ErrorRecorder

__all__ = ["MlflowSink", "RUN_RECORD", "MLFLOW_STATUS", "open_parent_run", "finish_parent_run", "log_files",
           "client_for", "run_record"]

# The run directory's record of its MLflow run: a resumed run reopens it.
RUN_RECORD = "mlflow_run.json"
# nnlab status -> MLflow run status.
MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}
_NOT_METRICS = ("epoch", "timestamp")
_INSTALL_HINT = "the mlflow package is not installed: pip install 'nnlab[mlflow]' (or pip install mlflow)"
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic", "mlflow.tracking.fluent")


def mlflow_status(status: str) -> str:
    """The MLflow run status of an nnlab run status (FAILED for failed, diverged, disk full...)."""
    return MLFLOW_STATUS.get(status, "FAILED")


def client_for(tracking_uri: str) -> Any:
    """An :class:`mlflow.MlflowClient` for ``tracking_uri``.

    A server that does not answer is given up after 2 retries of 10 s at most
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``..._TIMEOUT`` set in the environment
    win), not MLflow's default of minutes; the store's schema-migration INFO
    lines are kept out of the console.

    Raises:
        ImportError: MLflow is not installed (the message says how to install it).
        ConfigError: the URI is a database of another kind (an Optuna storage...), left unchanged.
    """
    from nnlab.integrations._uri import check_tracking_database

    check_tracking_database(tracking_uri, option="mlflow_tracking_uri")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created if needed (a local store keeps its artifacts beside it).

    Without an explicit location MLflow would put a sqlite store's artifacts in
    ``./mlruns`` of whatever directory the process runs in.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    store = local_store_dir(tracking_uri)
    location = (store / "mlartifacts").resolve().as_uri() if store is not None else None
    try:
        # The experiment kind MLflow 3's UI itself records for classic model training (not GenAI traces).
        return client.create_experiment(name, artifact_location=location,
                                        tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # another process created it first
        if experiment is None:
            raise
        return experiment.experiment_id


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _timestamp_ms(row: Mapping[str, Any]) -> int:
    try:
        return int(datetime.fromisoformat(str(row["timestamp"])).timestamp() * 1000)
    except (KeyError, ValueError):
        return int(datetime.now().timestamp() * 1000)



def row_metrics(row: Mapping[str, Any]) -> list[Any]:
    """MLflow ``Metric`` entities of one training_results.csv row (step = its epoch; non-finite cells left out)."""
    from mlflow.entities import Metric

    step, stamp = int(row["epoch"]), _timestamp_ms(row)
    return [Metric(key, number, stamp, step) for key, value in row.items()
            if key not in _NOT_METRICS and (number := float_or_none(value)) is not None]


def metric_part(name: str) -> str:
    """``name`` as one part of an MLflow metric key: a table's column may hold characters MLflow refuses.

    Example:
        >>> metric_part("price ($)/unit")
        'price ____unit'
    """
    text = re.sub(r"[^\w\-. ]", "_", str(name)).strip() or "_"
    return "_" if text.strip(".") == "" else text


def test_metrics(test: Mapping[str, Any] | None) -> dict[str, float]:
    """``test_<metric>`` (scaled) and ``test_physical/<target>/<metric>`` of a run's test report
    (a target's characters MLflow refuses in a key become ``_``: :func:`metric_part`)."""
    if not test:
        return {}
    out = {f"test_{k}": v for k, v in (test.get("scaled") or {}).items()}
    for target, values in (test.get("per_target_physical") or {}).items():
        out.update({f"test_physical/{metric_part(target)}/{k}": v for k, v in values.items()})
    return {k: number for k, v in out.items() if (number := float_or_none(v)) is not None}


def log_files(client: Any, run_id: str, files: Iterable[tuple[Path, str | None]]) -> int:
    """Log each (file, artifact folder or None) that exists; returns how many were logged."""
    logged = 0
    for path, folder in files:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path), folder)
            logged += 1
    return logged


def run_files(run_dir: Path) -> list[tuple[Path, str | None]]:
    """A run directory's artifacts for MLflow: its CSV, JSON and text files and the final weights."""
    files = [(p, None) for p in sorted(run_dir.iterdir())
             if p.is_file() and p.suffix in (".csv", ".json", ".txt") and not p.name.startswith(".")]
    return files + [(run_dir / "weights" / "final.weights.h5", "weights")]


def run_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``mlflow_run.json`` (tracking_uri, experiment_id, run_id), or None when there is none.

    ``tracking_uri`` is the configured one; neither file holds a password: a masked one is dropped from it, so the
    driver takes the password from the environment (``PGPASSWORD``, ``~/.pgpass``, ``MLFLOW_TRACKING_PASSWORD``).
    """
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    # The record keeps no password; the run's configuration has the URI as it was given, password masked.
    try:
        saved = json.loads((Path(run_dir) / "training_config.json").read_text(encoding="utf-8"))
        configured = saved["config"]["mlflow_tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError):
        configured = None
    if isinstance(configured, str) and redact_url_password(configured) == record.get("tracking_uri"):
        record["tracking_uri"] = without_masked_password(configured)
    return record


class MlflowSink(keras.callbacks.Callback):
    """Log one nnlab run to MLflow: params, per-epoch metrics, test metrics, tags, files, status.

    At training start it creates the MLflow run (``run_name`` = the nnlab run
    id; the resolved configuration as params; ``tags``) and records it in
    ``<run_dir>/mlflow_run.json``; a resumed run reopens that MLflow run. Each
    row of the tracker (the columns of ``training_results.csv``) is logged with
    ``step`` = its epoch, in one batch every ``flush_every`` epochs (config
    ``checkpoint_every``: exactly the epochs a resume can continue from, so a
    resumed run's history has every epoch once) and at the end. :meth:`finish`
    logs the test metrics and the run's files and ends the MLflow run with the
    status matching nnlab's (FINISHED, KILLED for interrupted, else FAILED).

    The first failure (package missing, server unreachable, a rejected request)
    is recorded in ``errors`` with one warning; the sink then stops.

    Args:
        tracking_uri: where to log (config ``mlflow_tracking_uri``).
        experiment: the experiment name (config ``mlflow_experiment``).
        run_dir: the nnlab run directory.
        rows: a function returning the tracker's rows so far (a resumed run's
            earlier rows first).
        params: the resolved configuration, flat.
        tags: tags of the MLflow run (``mlflow.parentRunId`` makes it a child).
        errors: the run's :class:`~nnlab.tracking.ErrorRecorder`.
        flush_every: epochs per batch of metrics.
        resuming: reopen the MLflow run recorded in ``run_dir``.

    Example:
        >>> # sink = MlflowSink("sqlite:///mlflow.db", "nnlab", run_dir=run_dir,
        >>> #                   rows=lambda: tracker.rows, params=cfg.to_flat())
        >>> # model.fit(..., callbacks=[tracker, sink]); sink.finish("completed", test_report)
    """

    component = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str, *, run_dir: str | os.PathLike,
                 rows: Callable[[], Sequence[Mapping[str, Any]]], params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, str] | None = None, errors: ErrorRecorder | None = None,
                 flush_every: int = 10, resuming: bool = False) -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_dir = Path(run_dir)
        self._rows = rows
        self.config_params = redact(dict(params or {}))  # what MLflow stores: no password
        self.tags = {k: redact(str(v)) for k, v in (tags or {}).items()}
        self.errors = errors if errors is not None else ErrorRecorder()
        self.flush_every = max(1, int(flush_every))
        self.resuming = resuming
        self.client: Any = None
        self.run_id: str | None = None
        self._logged_epoch = 0
        self._failed = False

    def _fail(self, exc: BaseException) -> None:
        self._failed = True
        self.client = None
        # MLflow's messages may hold the tracking URI (an http request's URL): recorded in the run's files masked.
        text = f"{type(exc).__name__}: {exc}"
        shown = redact_url_password(text)
        self.errors.record(self.component, exc if shown == text else shown)

    def on_train_begin(self, logs=None):
        if self.client is not None or self._failed:
            return
        try:
            self._start()
        except Exception as exc:  # ImportError, an unreachable server, a refused request: degrade
            self._fail(exc)

    def _start(self) -> None:
        from mlflow.entities import Param

        client = client_for(self.tracking_uri)
        record = run_record(self.run_dir) if self.resuming else None
        shown_uri = redact_url_password(self.tracking_uri)  # the record keeps no password
        if (record is not None and redact_url_password(str(record.get("tracking_uri"))) == shown_uri
                and record.get("run_id")):
            self.run_id = str(record["run_id"])
            client.update_run(self.run_id, status="RUNNING")
            history = client.get_metric_history(self.run_id, "train_loss")
            self._logged_epoch = max((m.step for m in history), default=0)
        else:
            exp_id = experiment_id(client, self.experiment, self.tracking_uri)
            run = client.create_run(exp_id, tags=self.tags, run_name=self.tags.get("nnlab.run_id"))
            self.run_id = run.info.run_id
            atomic_write_json(self.run_dir / RUN_RECORD, {"tracking_uri": shown_uri,
                                                          "experiment_id": exp_id, "run_id": self.run_id})
            client.log_batch(self.run_id, params=[Param(k, _text(v)[:6000]) for k, v in self.config_params.items()])
        self.client = client

    def _flush(self) -> None:
        rows = [r for r in self._rows() if int(r.get("epoch", 0)) > self._logged_epoch]
        if not rows or self.client is None:
            return
        metrics = [m for row in rows for m in row_metrics(row)]
        self.client.log_batch(self.run_id, metrics=metrics)
        self._logged_epoch = int(rows[-1]["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        if self.client is None or (epoch + 1) % self.flush_every:
            return
        try:
            self._flush()
        except Exception as exc:  # an optional sink must not cost the run
            self._fail(exc)

    def describe(self) -> str | None:
        """The MLflow run, for the run's summary (None when the sink failed or never started)."""
        if self.client is None or self.run_id is None:
            return None
        return f"run {self.run_id}, experiment '{self.experiment}' at {redact_url_password(self.tracking_uri)}"

    def finish(self, status: str, test: Mapping[str, Any] | None) -> None:
        """Log what is left, the test metrics, the run's files and tags; end the MLflow run."""
        if self.client is None:
            return
        from mlflow.entities import Metric, RunTag

        try:
            self._flush()
            stamp = int(datetime.now().timestamp() * 1000)
            self.client.log_batch(
                self.run_id, metrics=[Metric(k, v, stamp, self._logged_epoch) for k, v in test_metrics(test).items()],
                tags=[RunTag("nnlab.status", status)])
            log_files(self.client, self.run_id, run_files(self.run_dir))
            self.client.set_terminated(self.run_id, status=mlflow_status(status))
        except Exception as exc:  # an optional sink must not cost the run
            self._fail(exc)


def _parent_filter(kind: str, name: str) -> str:
    return f"tags.`nnlab.{kind}` = '{name}' and tags.`nnlab.parent` = 'true'"


def open_parent_run(tracking_uri: str, experiment: str, *, kind: str, name: str,
                    params: Mapping[str, Any] | None = None, errors: ErrorRecorder | None = None) -> str | None:
    """The MLflow parent run of search/study ``name`` (``kind`` "hpo" or "study"), created or reopened.

    Children are made with the tag ``mlflow.parentRunId`` = the returned id. A
    rerun of the same search or study reopens the same parent. When two
    processes create one at the same moment, the earliest wins and the other
    deletes its own. Returns None (one warning, recorded in ``errors`` when
    given) when MLflow cannot be used: the search goes on without it.
    """
    try:
        from mlflow.entities import Param

        client = client_for(tracking_uri)
        exp_id = experiment_id(client, experiment, tracking_uri)
        found = client.search_runs([exp_id], _parent_filter(kind, name), order_by=["attributes.start_time ASC"])
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return run_id
        run = client.create_run(exp_id, tags={f"nnlab.{kind}": name, "nnlab.parent": "true"},
                                run_name=f"{kind}: {name}")
        client.log_batch(run.info.run_id,
                         params=[Param(k, _text(v)[:6000]) for k, v in redact(dict(params or {})).items()])
        found = client.search_runs([exp_id], _parent_filter(kind, name), order_by=["attributes.start_time ASC"])
        first = found[0].info.run_id if found else run.info.run_id
        if first != run.info.run_id:
            client.delete_run(run.info.run_id)
        return first
    except Exception as exc:  # ImportError, unreachable server: the search goes on without MLflow
        (errors or ErrorRecorder()).record(f"mlflow ({kind} parent run)", exc)
        return None


def finish_parent_run(tracking_uri: str, run_id: str, *, status: str = "FINISHED",
                      metrics: Mapping[str, Any] | None = None, files: Iterable[tuple[Path, str | None]] = (),
                      errors: ErrorRecorder | None = None) -> None:
    """Log a parent run's summary ``metrics`` and ``files`` and end it with ``status``."""
    try:
        from mlflow.entities import Metric

        client = client_for(tracking_uri)
        stamp = int(datetime.now().timestamp() * 1000)
        values = {k: number for k, v in (metrics or {}).items() if (number := float_or_none(v)) is not None}
        client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in values.items()])
        log_files(client, run_id, files)
        client.set_terminated(run_id, status=status)
    except Exception as exc:  # an optional component must not cost the search
        (errors or ErrorRecorder()).record("mlflow (parent run)", exc)
