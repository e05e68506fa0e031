"""The Keras callback that logs one nnlab run to MLflow (:class:`MlflowSink`).

Apart from :mod:`nnlab.integrations.mlflow` because it subclasses a Keras
callback, so it loads TensorFlow: looking a run up, opening parent runs and
logging an export do not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import keras

from nnlab._files import atomic_write_json
from nnlab._redact import redact, redact_url_password
from nnlab.errors import ErrorRecorder
from nnlab.integrations._uri import ARTIFACTS_DIR, experiment_name
from nnlab.integrations.mlflow import (RUN_RECORD, _text, client_for, experiment_id, log_dataset, log_files,
                                       mlflow_status, preset_tag, row_metrics, run_files, run_record, saved_run,
                                       test_metrics)

__all__ = ["MlflowSink"]


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
        self.experiment = experiment_name(experiment)  # the default gives way to MLFLOW_EXPERIMENT_NAME
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
            saved = saved_run(self.run_dir)
            # <output>/runs/<run id>: a database server's artifacts go to <output>/mlartifacts, not ./mlruns
            exp_id = experiment_id(client, self.experiment, self.tracking_uri,
                                   artifacts=self.run_dir.resolve().parent.parent / ARTIFACTS_DIR)
            tags = {"nnlab.preset": preset_tag(saved), **self.tags}
            run = client.create_run(exp_id, tags=tags, run_name=self.tags.get("nnlab.run_id"))
            self.run_id = run.info.run_id
            atomic_write_json(self.run_dir / RUN_RECORD, {"tracking_uri": shown_uri,
                                                          "experiment_id": exp_id, "run_id": self.run_id})
            client.log_batch(self.run_id, params=[Param(k, _text(v)[:6000]) for k, v in self.config_params.items()])
            self._log_dataset(client, saved.get("data"))
        self.client = client

    def _log_dataset(self, client: Any, data: Any) -> None:
        try:
            log_dataset(client, self.run_id, data)
        except Exception as exc:  # the run is logged without its dataset input: one warning
            self.errors.record("mlflow (dataset input)", redact_url_password(f"{type(exc).__name__}: {exc}"))

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
