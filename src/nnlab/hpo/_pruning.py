"""The Keras callback that reports validation R² to an Optuna trial and stops pruned trials."""

from __future__ import annotations

import math
from typing import Any

import keras

from nnlab.runs import RunStatus

__all__ = ["TrialPruningCallback"]


class TrialPruningCallback(keras.callbacks.Callback):
    """Report a metric to an Optuna trial every epoch; stop training when the pruner says so.

    The step of each intermediate value is the epoch number, 1 to ``epochs``,
    as in ``training_results.csv``, TensorBoard and MLflow (Optuna's pruners
    read it as the resource used: epochs trained). Training is stopped with
    ``model.stop_training`` (the epoch's artifacts are written first) and
    ``run_status`` becomes ``RunStatus.PRUNED``, which
    :func:`~nnlab.runs.execute` records as the run's status; ``pruned_epoch`` is
    the epoch number it stopped after. Non-finite values are not reported.

    Args:
        trial: the ``optuna.Trial`` being trained.
        monitor: the Keras log key to report (validation R² by default).

    Example:
        >>> # callback = TrialPruningCallback(trial)
        >>> # result = execute(RunSpec(cfg, data, callbacks=[callback]))
        >>> # if result.status == RunStatus.PRUNED: ...
    """

    def __init__(self, trial: Any, monitor: str = "val_r2_score") -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.run_status: RunStatus | None = None
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), step=epoch + 1)  # Keras counts epochs from 0, every tool shown from 1
        if self.trial.should_prune():
            self.model.stop_training = True
            self.run_status = RunStatus.PRUNED
            self.pruned_epoch = epoch + 1
