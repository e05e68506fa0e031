"""Optional sinks of a run's per-epoch rows: TensorBoard and MLflow.

Both are fed by the same rows :class:`~nnlab.tracking.PerformanceTracker`
writes to ``training_results.csv`` (the column names are the metric names),
and both are optional components: a sink that fails records one warning in the
run's error summary and stops; training goes on.

* :class:`~nnlab.integrations.tensorboard.TensorBoardSink` -- config key
  ``tensorboard`` (default true): scalars every epoch, weight and
  significant-bit histograms at each constraint application, test metrics at
  the end, in ``runs/<run_id>/tensorboard/train`` and ``.../validation``
  (Keras' layout: the same ``epoch_*`` tags in both, so the curves overlay).
* :class:`~nnlab.integrations.mlflow.MlflowSink` -- config key
  ``mlflow_tracking_uri`` (``--mlflow``; a bare ``--mlflow`` is
  ``MLFLOW_TRACKING_URI`` when set): params, per-epoch metrics, test, physics
  and format metrics, tags (``nnlab.preset`` on every run), the data set as a
  dataset input and the run's files, in one MLflow run per nnlab run.
* :func:`log_exported_model` -- an ``nnlab export`` of a run logged as an
  MLflow model of that run's MLflow run (imports MLflow when called).

This module imports neither TensorFlow nor MLflow. The configuration checks the
tracking URI's form itself (:func:`nnlab.config.check_tracking_uri`, re-exported
here).
"""

from __future__ import annotations

from nnlab._lazy import lazy_attributes
from nnlab.integrations._databases import DatabaseContents, database_contents, database_kind, describe_kind
from nnlab.integrations._uri import (
    MLFLOW_OPTION_HELP,
    artifact_location,
    check_tracking_uri,
    default_tracking_uri,
    experiment_name,
    mlflow_option,
)

__all__ = ["MLFLOW_OPTION_HELP", "DatabaseContents", "artifact_location", "check_tracking_uri", "database_contents",
           "database_kind", "default_tracking_uri", "describe_kind", "experiment_name", "log_exported_model",
           "mlflow_option", "require_mlflow_run"]

# MLflow's helpers import Keras: loaded on first use, so that this package stays light.
__getattr__, __dir__ = lazy_attributes(__name__, {"log_exported_model": "nnlab.integrations.mlflow",
                                                         "require_mlflow_run": "nnlab.integrations.mlflow"}, globals(),
                                       __all__)
