"""``train_with_tracking`` and ``resume_training``: one run, start to artifacts."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np

from nnlab._files import atomic_write_json, atomic_write_text, read_csv_rows, upsert_csv_row, write_csv_rows
from nnlab.config import Config, read_json_object, resolve_config
from nnlab.errors import ConfigError, NnlabError
from nnlab.losses import HISTORY_COLUMNS
from nnlab.model import AdvancedNeuralNetwork, regression_metrics
from nnlab.tracking import ErrorRecorder, PerformanceTracker, RowsCallbackWriter
from nnlab.training._runs import (
    CONFIG_LOG_COLUMNS,
    CONFIG_LOG_NAME,
    DEFAULT_OUTPUT_DIR,
    config_log_row,
    create_run_dir,
    find_run_dir,
    library_versions,
)
from nnlab.training._state import (
    CallbackAttributes,
    InterruptRequest,
    ModelState,
    TrainingCheckpoint,
    TrainingState,
    load_latest_checkpoint,
    restore,
)
from nnlab.training._summary import format_summary
from nnlab.training._weights import WeightCheckpoint

_LOGGED_KEYS = ("hidden_layers", "activation", "optimizer", "learning_rate", "dropout_rate", "use_batch_norm",
                "l2_regularization", "constraint_interval", "epochs", "batch_size", "seed")


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


@dataclass
class _Run:
    """Where a run writes and what it continues from."""

    run_id: str
    run_dir: Path
    output_dir: Path
    row: dict[str, Any]
    resume: TrainingState | None = None


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
            training_config.json so the run's data can be rebuilt (and resumed).

    Returns:
        ``training`` (history, final results, adaptive-loss history, constraints
        used, errors), ``test`` (metrics; None when interrupted),
        ``performance_summary``, ``error_summary``, plus ``run_id``, ``run_dir``
        and ``status`` (``completed``, ``diverged``, ``interrupted`` or a
        callback's ``run_status``).

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
    run_id, run_dir = create_run_dir(output_dir)
    row: dict[str, Any] = dict.fromkeys(CONFIG_LOG_COLUMNS, "")
    row.update({
        "run_id": run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "preset": preset or "",
        "loss_weighting_strategy": cfg.model.loss_weighting_strategy,
        "constraints": "+".join(model.constraints_used()) or "none",
        **{k: cfg.get(k) for k in _LOGGED_KEYS},
        "run_dir": str(run_dir),
    })
    run = _Run(run_id, run_dir, Path(output_dir), row)
    errors = model.errors
    _safe(errors, CONFIG_LOG_NAME, upsert_csv_row, run.output_dir / CONFIG_LOG_NAME, row, key="run_id")
    _safe(errors, "training_config.json", atomic_write_json, run_dir / "training_config.json", {
        "run_id": run_id, "preset": preset, "config": cfg.to_flat(), "seed": cfg.model.seed,
        "versions": library_versions(), "command": sys.argv,
        "data": {"n_rows": int(len(X_train) + len(X_val) + len(X_test)), **(data_source or {})},
    })
    if data is not None and hasattr(data, "save_scalers"):
        _safe(errors, "scalers.json", data.save_scalers, run_dir)
    return _train(model, (X_train, X_val, X_test, y_train, y_val, y_test), cfg, run, data=data,
                  verbose=verbose, callbacks=callbacks)


def resume_training(
    run_id: str = "latest",
    *,
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """Continue an interrupted run from its last good checkpoint.

    The configuration and data source come from the run's training_config.json;
    model weights, optimizer state, constraint state, adaptive-loss schedule,
    learning-rate plateau state and the epoch counter from the checkpoint. The
    run's CSVs are cut back to the checkpoint's epoch and continued, so they end
    with exactly one row per epoch; its configuration_log.csv row is updated.

    Args:
        run_id: a run id, or ``"latest"``.
        output_dir: the training output root.
        verbose: Keras progress output.

    Returns:
        The same dictionary as :func:`train_with_tracking`.

    Raises:
        NnlabError: no such run, a run already completed, or no usable checkpoint.
    """
    from nnlab.data import complete_data_pipeline, prepare_csv

    run_dir = find_run_dir(output_dir, run_id)
    saved = read_json_object(run_dir / "training_config.json")
    cfg = Config.from_flat(saved.get("config", {}), source=f"{run_dir / 'training_config.json'}")
    state = load_latest_checkpoint(run_dir)
    if state.epoch >= cfg.training.epochs:
        raise NnlabError(f"run '{run_dir.name}' already trained {state.epoch} of {cfg.training.epochs} epochs; "
                         "nothing to resume")
    source = saved.get("data") or {}
    csv_path = source.get("csv_path")
    if csv_path is not None and not Path(csv_path).is_file():
        raise NnlabError(f"run '{run_dir.name}' was trained on '{csv_path}', which no longer exists")
    split = dict(test_size=source.get("test_size", cfg.training.test_size),
                 val_size=source.get("val_size", cfg.training.val_size),
                 random_state=source.get("random_state", 42))
    if csv_path is not None:
        data = prepare_csv(csv_path, **split)
    else:
        data = complete_data_pipeline(
            None, num_particles=source.get("num_particles") or cfg.generation.num_particles_default,
            config=cfg.generation, seed=source.get("seed", cfg.generation.random_seed), **split,
        )
    model = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], cfg)
    row = config_log_row(output_dir, run_dir.name) or {"run_id": run_dir.name, "run_dir": str(run_dir)}
    row = {**dict.fromkeys(CONFIG_LOG_COLUMNS, ""), **row, "status": "running"}
    run = _Run(run_dir.name, run_dir, Path(output_dir), row, resume=state)
    print(f"resuming run {run.run_id} from {state.path.name} (epoch {state.epoch} of {cfg.training.epochs})",
          file=sys.stderr, flush=True)
    return _train(model, tuple(data), cfg, run, data=data, verbose=verbose, callbacks=())


def _cut_csv(path: Path, keep) -> list[dict[str, str]]:
    """Keep the rows of a CSV for which ``keep(row)`` holds; returns them."""
    rows = read_csv_rows(path)
    if not rows:
        return []
    kept = [r for r in rows if keep(r)]
    write_csv_rows(path, kept, list(rows[0].keys()))
    return kept


def _train(model: AdvancedNeuralNetwork, arrays: tuple, cfg: Config, run: _Run, *, data: Any,
           verbose: int | str, callbacks: Sequence[keras.callbacks.Callback]) -> dict[str, Any]:
    X_train, X_val, X_test, y_train, y_val, y_test = arrays
    errors, t, run_dir = model.errors, cfg.training, run.run_dir
    log_path = run.output_dir / CONFIG_LOG_NAME
    started = time.perf_counter()
    start_epoch = run.resume.epoch if run.resume is not None else 0

    initial_rows: list[dict[str, str]] = []
    if run.resume is not None:
        # Epochs after the checkpoint are redone: drop their rows.
        initial_rows = _cut_csv(run_dir / "training_results.csv", lambda r: int(r["epoch"]) <= start_epoch)
        _cut_csv(run_dir / "loss_history.csv", lambda r: int(r["epoch"]) < start_epoch)
    resuming = run.resume is not None
    tracker = PerformanceTracker(run_dir / "training_results.csv", errors=errors, append=resuming,
                                 initial_rows=initial_rows)
    loss_writer = RowsCallbackWriter(run_dir / "loss_history.csv", lambda: model.loss_callback.history,
                                     HISTORY_COLUMNS, errors=errors, append=resuming)
    weights = WeightCheckpoint(run_dir / "weights", every=t.checkpoint_every, errors=errors)
    interrupt = InterruptRequest()
    components: dict[str, Any] = {"model": ModelState(model.model), "loss": model.loss_callback,
                                  "best_weights": weights}
    if model.constraint_callback is not None:
        components["constraints"] = model.constraint_callback
    for name, callback in model.standard_callback_states().items():
        components[name] = callback
    state_checkpoint = TrainingCheckpoint(run_dir, components, every=t.checkpoint_every, interrupt=interrupt,
                                          errors=errors)
    run_callbacks = [tracker, loss_writer, weights, *callbacks]
    try:
        model.compile_model()
        if run.resume is not None:
            restore(run.resume, components)
            loss_writer.skip_existing()
            if cfg.model.seed is not None:
                # Fresh shuffles and dropout masks for the remaining epochs.
                keras.utils.set_random_seed(cfg.model.seed + start_epoch)
        with interrupt:
            training = model.train_with_custom_constraints(
                X_train, y_train, X_val, y_val, epochs=t.epochs, batch_size=t.batch_size,
                callbacks=run_callbacks, verbose=verbose, initial_epoch=start_epoch,
                final_callbacks=[state_checkpoint],
            )
    except Exception:
        run.row.update(status="failed", total_time_s=round(time.perf_counter() - started, 3),
                       error_count=len(errors) + 1)
        _safe(errors, CONFIG_LOG_NAME, upsert_csv_row, log_path, run.row, key="run_id")
        raise
    requested = [getattr(cb, "run_status", None) for cb in (*callbacks, state_checkpoint)]
    status = "diverged" if training["diverged"] else next((r for r in requested if r), "completed")
    if status != "interrupted" and not np.isfinite(model.predict(X_test)).all():
        # A loss that grew huge but stayed finite: the network predicts inf/NaN.
        training["diverged"] = True
        status = "diverged"

    summary = tracker.summary()
    summary.update(
        run_id=run.run_id, run_dir=str(run_dir), status=status,
        total_time_s=time.perf_counter() - started,
        weight_modifications=model.constraints_used(),
        loss_weighting_strategy=cfg.model.loss_weighting_strategy,
        weight_files=_file_sizes(run_dir / "weights"),
        error_count=len(errors), resumed_from_epoch=start_epoch if run.resume is not None else None,
    )
    test_report: dict[str, Any] | None = None
    if status not in ("interrupted", "diverged"):
        test = model.evaluate_model(X_test, y_test)
        target_names = list(getattr(data, "target_names", [])) or [f"target_{i}" for i in range(model.output_dim)]
        test_report = {
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
        summary.update(inference_time_s=test["inference_time"], samples_per_second=test["samples_per_second"],
                       test_mse=test["mse"], test_mae=test["mae"], test_rmse=test["rmse"], test_r2=test["r2"])
    results = {
        "run_id": run.run_id,
        "run_dir": str(run_dir),
        "status": status,
        "training": training,
        "test": test_report,
        "performance_summary": summary,
        "error_summary": errors.summary(),
    }
    results["training"]["errors"] = errors.summary()
    _safe(errors, "training_log.txt", atomic_write_text, run_dir / "training_log.txt", format_summary(results))
    run.row.update(
        status=status, epochs_run=summary["total_epochs"],
        final_val_r2=summary["current_r2"], best_val_r2=summary["best_r2"], best_epoch=summary["best_epoch"],
        test_r2=summary.get("test_r2", ""), test_mse=summary.get("test_mse", ""),
        test_mae=summary.get("test_mae", ""),
        total_time_s=round(summary["total_time_s"], 3), peak_memory_mb=round(summary["peak_memory_mb"], 1),
        error_count=len(errors),
    )
    _safe(errors, CONFIG_LOG_NAME, upsert_csv_row, log_path, run.row, key="run_id")
    results["error_summary"] = errors.summary()
    return results
