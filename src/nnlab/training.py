"""Training runs: run directories, checkpoints, artifacts and ``train_with_tracking``.

Every run gets its own directory ``<output_dir>/runs/<run_id>/`` (never reused)
and one row in ``<output_dir>/configuration_log.csv``::

    training_config.json   resolved configuration, seed, library versions
    training_results.csv   one row per epoch (PerformanceTracker), flushed each epoch
    loss_history.csv       adaptive-loss weights per epoch, flushed each epoch
    weights/               epoch_NNNN / best / final ``.weights.h5``
    scalers.json           feature/target scalers (when the data carries them)
    test_metrics.json      test-set metrics, per target, in scaled and physical units
    training_log.txt       human-readable summary
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np

from nnlab._files import atomic_write_json, atomic_write_text, upsert_csv_row
from nnlab.config import Config, resolve_config
from nnlab.errors import ConfigError
from nnlab.losses import HISTORY_COLUMNS
from nnlab.model import AdvancedNeuralNetwork, regression_metrics
from nnlab.tracking import ErrorRecorder, PerformanceTracker, RowsCallbackWriter

__all__ = [
    "DEFAULT_OUTPUT_DIR",
    "CONFIG_LOG_COLUMNS",
    "create_run_dir",
    "WeightCheckpoint",
    "train_with_tracking",
    "format_summary",
]

DEFAULT_OUTPUT_DIR = "training_output"
CONFIG_LOG_COLUMNS = (
    "run_id", "timestamp", "status", "preset", "loss_weighting_strategy", "constraints",
    "hidden_layers", "activation", "optimizer", "learning_rate", "dropout_rate", "use_batch_norm",
    "l2_regularization", "constraint_interval", "epochs", "batch_size", "seed", "epochs_run",
    "final_val_r2", "best_val_r2", "best_epoch", "test_r2", "test_mse", "test_mae",
    "total_time_s", "peak_memory_mb", "error_count", "run_dir",
)


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` (and ``runs/``) and prove it is writable, before any training.

    Raises:
        ConfigError: naming the directory and why it cannot be used.
    """
    root = Path(output_dir)
    try:
        (root / "runs").mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory '{root}' cannot be written: {exc.strerror or exc}") from None
    return root


def create_run_dir(output_dir: str | os.PathLike) -> tuple[str, Path]:
    """A new, unique run directory under ``<output_dir>/runs``.

    The run id is the UTC time to the microsecond plus the process id
    (``20261126-113512-123456-p4242``), so ids sort by start time; creating the
    directory with ``exist_ok=False`` makes a clash impossible even between
    processes (a suffix is added and the creation retried).
    """
    runs = check_output_dir(output_dir) / "runs"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    base = f"{stamp}-p{os.getpid()}"
    for attempt in range(1000):
        run_id = base if attempt == 0 else f"{base}-{attempt}"
        try:
            (runs / run_id).mkdir()
        except FileExistsError:
            continue
        return run_id, runs / run_id
    raise ConfigError(f"could not create a unique run directory under '{runs}'")  # pragma: no cover


class WeightCheckpoint(keras.callbacks.Callback):
    """Save weights every ``every`` epochs, the best epoch's weights, and the final ones.

    Files (in ``directory``): ``epoch_NNNN.weights.h5``, ``best.weights.h5``,
    ``final.weights.h5``; each written to a temporary name and renamed, so a
    crash never leaves a truncated file. The best epoch (highest ``monitor``)
    is snapshotted in memory when it happens and written at the next periodic
    checkpoint and at the end -- a file per improvement would cost more than
    the epoch itself on small models. A failed save is recorded in ``errors``
    (with a warning) and training goes on.

    Args:
        directory: where the weight files go (created if needed).
        every: periodic checkpoint interval in epochs.
        errors: the run's :class:`~nnlab.tracking.ErrorRecorder`.
        monitor: the log key whose maximum marks the best epoch.

    Example:
        >>> # model.fit(..., callbacks=[WeightCheckpoint("run/weights", every=10)])
    """

    def __init__(self, directory: str | os.PathLike, *, every: int = 10, errors: ErrorRecorder | None = None,
                 monitor: str = "val_r2_score") -> None:
        super().__init__()
        self.directory = Path(directory)
        self.every = int(every)
        self.errors = errors if errors is not None else ErrorRecorder()
        self.monitor = monitor
        self.best = -np.inf
        self.best_epoch: int | None = None
        self._best_weights: list[np.ndarray] | None = None
        self._best_written = True
        self.saved: list[Path] = []

    def _save(self, name: str) -> Path | None:
        target = self.directory / name
        tmp = self.directory / f".tmp-{os.getpid()}-{name}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self.errors.record("checkpoint", exc)
            return None
        self.saved.append(target)
        return target

    def _write_best(self) -> None:
        if self._best_written or self._best_weights is None:
            return
        # Between epochs nothing else touches the weights: swap the best ones in,
        # save, swap back.
        current = self.model.get_weights()
        self.model.set_weights(self._best_weights)
        try:
            self._best_written = self._save("best.weights.h5") is not None
        finally:
            self.model.set_weights(current)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is not None and np.isfinite(value) and value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            self._best_weights = self.model.get_weights()
            self._best_written = False
        if (epoch + 1) % self.every == 0:
            self._save(f"epoch_{epoch + 1:04d}.weights.h5")
            self._write_best()

    def on_train_end(self, logs=None):
        self._write_best()
        self._save("final.weights.h5")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's results depend on."""
    import pandas
    import sklearn
    import tensorflow as tf

    import nnlab

    return {
        "python": platform.python_version(),
        "nnlab": nnlab.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _per_target(metrics: Mapping[str, Any], names: list[str]) -> dict[str, dict[str, float]]:
    return {
        name: {k: float(metrics[f"{k}_per_target"][i]) for k in ("mse", "mae", "rmse", "r2")}
        for i, name in enumerate(names)
    }


def _safe(errors: ErrorRecorder, component: str, action, *args, **kwargs) -> Any:
    """Run an optional artifact writer; a failure is recorded, not raised."""
    try:
        return action(*args, **kwargs)
    except (OSError, TypeError, ValueError) as exc:
        errors.record(component, exc)
        return None


def _file_sizes(directory: Path) -> dict[str, int]:
    if not directory.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in sorted(directory.glob("*.weights.h5"))}


def train_with_tracking(
    model: AdvancedNeuralNetwork,
    X_train: Any,
    X_val: Any,
    X_test: Any,
    y_train: Any,
    y_val: Any,
    y_test: Any,
    config: Config | Mapping[str, Any] | None = None,
    *,
    data: Any = None,
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    preset: str | None = None,
    verbose: int | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    data_source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compile, train with tracking, evaluate on the test set and write every artifact.

    Args:
        model: the :class:`~nnlab.model.AdvancedNeuralNetwork` to train.
        X_train, X_val, X_test, y_train, y_val, y_test: the scaled splits.
        config: the configuration (epochs, batch size, checkpoints...); None uses
            the model's.
        data: the :class:`~nnlab.data.PreparedData` the arrays came from; with it
            the scalers are saved and test metrics are also given per target in
            physical units.
        output_dir: the training output root (``training_output``).
        preset: preset name, recorded in the configuration log.
        verbose: Keras progress output.
        callbacks: extra callbacks, run after the tracker (they see every
            statistic in the logs). One that stops training early may set a
            ``run_status`` attribute (e.g. ``"pruned"``); it becomes the run's
            status instead of ``completed``.
        data_source: how the data was made (``num_particles``, ``seed``,
            ``csv_path``, ``random_state``, ...), recorded as ``data`` in
            training_config.json so the run's data can be rebuilt.

    Returns:
        ``training`` (history, final results, adaptive-loss history, constraints
        used, errors), ``test`` (metrics), ``performance_summary``,
        ``error_summary``, plus ``run_id``, ``run_dir`` and ``status``
        (``completed``, ``diverged``, or a callback's ``run_status``).

    Raises:
        ConfigError, DataValidationError: bad configuration or data (the run's
            row is recorded with status ``failed`` when the run had started).

    Example:
        >>> from nnlab import complete_data_pipeline, AdvancedNeuralNetwork, train_with_tracking
        >>> X_train, X_val, X_test, y_train, y_val, y_test = complete_data_pipeline(num_particles=300)
        >>> config = {"epochs": 2, "batch_size": 32, "hidden_layers": [16]}
        >>> model = AdvancedNeuralNetwork((X_train.shape[1],), y_train.shape[1], config)
        >>> results = train_with_tracking(model, X_train, X_val, X_test, y_train, y_val, y_test, config)
    """
    cfg = resolve_config(config) if config is not None else model.config
    if config is not None and cfg.model != model.config.model:
        # The network was built from its own config; training keys come from `config`.
        cfg = Config(model=model.config.model, training=cfg.training, generation=cfg.generation)
    errors = model.errors
    run_id, run_dir = create_run_dir(output_dir)
    root = Path(output_dir)
    log_path = root / "configuration_log.csv"
    t = cfg.training
    started = time.perf_counter()
    row: dict[str, Any] = dict.fromkeys(CONFIG_LOG_COLUMNS, "")
    row.update({
        "run_id": run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "preset": preset or "",
        "loss_weighting_strategy": cfg.model.loss_weighting_strategy,
        "constraints": "+".join(model.constraints_used()) or "none",
        **{k: cfg.get(k) for k in ("hidden_layers", "activation", "optimizer", "learning_rate", "dropout_rate",
                                   "use_batch_norm", "l2_regularization", "constraint_interval", "epochs",
                                   "batch_size", "seed")},
        "run_dir": str(run_dir),
    })
    _safe(errors, "configuration_log.csv", upsert_csv_row, log_path, row, key="run_id")
    _safe(errors, "training_config.json", atomic_write_json, run_dir / "training_config.json", {
        "run_id": run_id, "preset": preset, "config": cfg.to_flat(), "seed": cfg.model.seed,
        "versions": library_versions(), "command": sys.argv,
        "data": {"n_rows": int(len(X_train) + len(X_val) + len(X_test)), **(data_source or {})},
    })
    if data is not None and hasattr(data, "save_scalers"):
        _safe(errors, "scalers.json", data.save_scalers, run_dir)

    tracker = PerformanceTracker(run_dir / "training_results.csv", errors=errors)
    loss_writer = RowsCallbackWriter(run_dir / "loss_history.csv", lambda: model.loss_callback.history,
                                     HISTORY_COLUMNS, errors=errors)
    checkpoints = WeightCheckpoint(run_dir / "weights", every=t.checkpoint_every, errors=errors)
    try:
        model.compile_model()
        training = model.train_with_custom_constraints(
            X_train, y_train, X_val, y_val, epochs=t.epochs, batch_size=t.batch_size,
            callbacks=[tracker, loss_writer, checkpoints, *callbacks], verbose=verbose,
        )
    except Exception as exc:
        row.update(status="failed", total_time_s=round(time.perf_counter() - started, 3),
                   error_count=len(errors) + 1)
        _safe(errors, "configuration_log.csv", upsert_csv_row, log_path, row, key="run_id")
        raise
    requested = [getattr(cb, "run_status", None) for cb in callbacks]
    status = "diverged" if training["diverged"] else next((r for r in requested if r), "completed")

    test = model.evaluate_model(X_test, y_test)
    target_names = list(getattr(data, "target_names", [])) or [f"target_{i}" for i in range(model.output_dim)]
    test_report: dict[str, Any] = {
        "scaled": {k: test[k] for k in ("mse", "mae", "rmse", "r2")},
        "per_target_scaled": _per_target(test, target_names),
        "inference_time_s": test["inference_time"],
        "samples_per_second": test["samples_per_second"],
        "n_samples": test["n_samples"],
    }
    if data is not None and hasattr(data, "inverse_transform_targets"):
        physical = regression_metrics(data.inverse_transform_targets(np.asarray(y_test)),
                                      data.inverse_transform_targets(model.predict(X_test)))
        test_report["per_target_physical"] = _per_target(physical, target_names)
    _safe(errors, "test_metrics.json", atomic_write_json, run_dir / "test_metrics.json", test_report)

    summary = tracker.summary()
    summary.update(
        run_id=run_id, run_dir=str(run_dir), status=status,
        total_time_s=time.perf_counter() - started,
        weight_modifications=model.constraints_used(),
        loss_weighting_strategy=cfg.model.loss_weighting_strategy,
        weight_files=_file_sizes(run_dir / "weights"),
        inference_time_s=test["inference_time"], samples_per_second=test["samples_per_second"],
        test_mse=test["mse"], test_mae=test["mae"], test_rmse=test["rmse"], test_r2=test["r2"],
        error_count=len(errors),
    )
    results = {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "status": status,
        "training": training,
        "test": test_report,
        "performance_summary": summary,
        "error_summary": errors.summary(),
    }
    results["training"]["errors"] = errors.summary()
    _safe(errors, "training_log.txt", atomic_write_text, run_dir / "training_log.txt", format_summary(results))
    row.update(
        status=status, epochs_run=training["epochs_run"],
        final_val_r2=summary["current_r2"], best_val_r2=summary["best_r2"], best_epoch=summary["best_epoch"],
        test_r2=test["r2"], test_mse=test["mse"], test_mae=test["mae"],
        total_time_s=round(summary["total_time_s"], 3), peak_memory_mb=round(summary["peak_memory_mb"], 1),
        error_count=len(errors),
    )
    _safe(errors, "configuration_log.csv", upsert_csv_row, log_path, row, key="run_id")
    results["error_summary"] = errors.summary()
    return results


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def format_summary(results: Mapping[str, Any]) -> str:
    """The end-of-run summary printed by ``python main.py`` and kept in training_log.txt."""
    s = results["performance_summary"]
    lines = [
        f"run {s['run_id']}: {s['status']}",
        f"  epochs run           {s['total_epochs']}",
        f"  final val R²         {_fmt(s['current_r2'])}",
        f"  best val R²          {_fmt(s['best_r2'])} (epoch {_fmt(s['best_epoch'], 'd')})",
        f"  largest R² gain      {_fmt(s['greatest_r2_improvement'])} "
        f"(epoch {_fmt(s['greatest_r2_improvement_epoch'], 'd')})",
        f"  avg epoch time       {_fmt(s['avg_epoch_time'], '.3f')} s "
        f"(training {_fmt(s['total_training_time'], '.1f')} s, run {_fmt(s['total_time_s'], '.1f')} s)",
        f"  memory               {_fmt(s['current_memory_mb'], '.0f')} MiB now, "
        f"peak {_fmt(s['peak_memory_mb'], '.0f')} MiB",
        f"  test MSE / MAE / R²  {_fmt(s['test_mse'])} / {_fmt(s['test_mae'])} / {_fmt(s['test_r2'])} (scaled)",
        f"  inference            {_fmt(s['inference_time_s'] * 1e3, '.1f')} ms for the test set "
        f"({_fmt(s['samples_per_second'], ',.0f')} samples/s)",
        f"  constraints          {', '.join(s['weight_modifications']) or 'none'} "
        f"(applied {s['constraint_applications']}x)",
        f"  loss strategy        {s['loss_weighting_strategy']}",
        f"  errors               {s['error_count']}",
    ]
    per_target = results.get("test", {}).get("per_target_physical")
    if per_target:
        lines.append("  test per target (physical units): R² / RMSE")
        lines += [f"    {name:<20} {_fmt(m['r2'])} / {_fmt(m['rmse'], '.4g')}" for name, m in per_target.items()]
    for entry in results.get("error_summary", {}).get("errors", []):
        lines.append(f"  ! {entry['component']}: {entry['message']}")
    lines.append(f"  artifacts            {s['run_dir']}")
    return "\n".join(lines) + "\n"
