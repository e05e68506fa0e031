"""``train_with_tracking``: one run, start to artifacts (``resume_training`` continues one: _resume.py)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np

from nnlab._files import (
    atomic_write_json,
    atomic_write_text,
    clean_orphan_temp_files,
    is_disk_full,
    upsert_csv_row,
)
from nnlab._redact import redact, redact_argv, without_masked_password
from nnlab.config import Config, resolve_config
from nnlab.errors import NnlabError
from nnlab.formats import evaluate_formats, evaluate_quantizers
from nnlab.losses import HISTORY_COLUMNS
from nnlab.model import AdvancedNeuralNetwork, regression_metrics
from nnlab.physics import physics_not_applicable, physics_report
from nnlab.tracking import ErrorRecorder, PerformanceTracker, RowsCallbackWriter
from nnlab.runs._lock import RunLock, lock_new_run
from nnlab.runs._status import RunStatus
from nnlab.runs._runs import (
    CONFIG_LOG_COLUMNS,
    CONFIG_LOG_NAME,
    DEFAULT_OUTPUT_DIR,
    RUN_STATUS_NAME,
    arrays_digest,
    create_run_dir,
    file_digest,
    library_versions,
    settings_digest,
    write_run_status,
)
from nnlab.runs._state import (
    CallbackAttributes,
    InterruptRequest,
    ModelState,
    TrainingCheckpoint,
    TrainingState,
    list_checkpoints,
    restore,
)
from nnlab.runs._summary import format_summary
from nnlab.runs._weights import WeightCheckpoint

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


def _evaluate_formats_safe(errors: ErrorRecorder, model: AdvancedNeuralNetwork, X_test: Any, y_test: Any,
                           reference_r2: float) -> dict[str, dict[str, Any]] | None:
    """``test_metrics.json``'s "formats": the casts (:func:`~nnlab.formats.evaluate_formats`) and Keras'
    int8/int4 (:func:`~nnlab.formats.evaluate_quantizers`); None, recorded, when the casts fail; a
    quantizer Keras refuses is recorded and its entry says why."""
    try:
        formats = evaluate_formats(model.model, X_test, y_test, reference_r2=reference_r2)
        formats.update(evaluate_quantizers(
            model.model, X_test, y_test, reference_r2=reference_r2,
            on_error=lambda mode, exc: errors.record(f"test_metrics.json: formats {mode}", exc)))
        return formats
    except Exception as exc:  # an optional metric must not cost a finished run (a TF op error, a bug)
        errors.record("test_metrics.json: formats", exc)
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
    lock: RunLock | None = None
    initial_rows: list[dict[str, str]] = field(default_factory=list)  # training_results.csv kept on resume
    tags: dict[str, str] = field(default_factory=dict)  # of the run's MLflow run (when one is configured)
    sinks: list[Any] = field(default_factory=list)  # TensorBoard, MLflow: finished with the run's status


def data_source_text(source: Mapping[str, Any]) -> str:
    """One line saying where a run's data came from (an MLflow tag)."""
    if source.get("csv_path"):
        digest = str(source.get("csv_sha256") or "")[:12]
        kind = "table csv" if source.get("task") == "table" else "csv"
        return f"{kind} {source['csv_path']}" + (f" (sha256 {digest}...)" if digest else "")
    if source.get("num_particles"):
        return f"simulated: {source['num_particles']} particles, seed {source.get('seed')}"
    return f"arrays: {source.get('n_rows', '?')} rows (sha256 {str(source.get('arrays_sha256', ''))[:12]}...)"


def run_tags(run_id: str, source: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The tags of a run's MLflow run: its id, nnlab's version, the data source, the task (a table's
    targets), then ``extra``."""
    import nnlab

    task: dict[str, str] = {}
    if source.get("task") == "table":
        task = {"nnlab.task": "table", "nnlab.targets": ", ".join(map(str, source.get("targets") or []))[:5000]}
    elif source.get("csv_path") or source.get("num_particles"):
        task = {"nnlab.task": "particles"}  # arrays passed in: the task is not known
    return {"nnlab.run_id": run_id, "nnlab.version": nnlab.__version__,
            "nnlab.data_source": data_source_text(source)[:5000], **task,
            **{k: str(v) for k, v in (extra or {}).items()}}


def _build_sinks(model: AdvancedNeuralNetwork, cfg: Config, run: _Run, tracker: PerformanceTracker
                 ) -> list[keras.callbacks.Callback]:
    """The run's TensorBoard and MLflow sinks, as configured (config keys tensorboard, mlflow_tracking_uri)."""
    sinks: list[keras.callbacks.Callback] = []
    resume_from = run.resume.epoch if run.resume is not None else None
    if cfg.training.tensorboard:
        from nnlab.integrations.tensorboard import TENSORBOARD_DIR, TensorBoardSink

        sinks.append(TensorBoardSink(run.run_dir / TENSORBOARD_DIR, lambda: tracker.rows, errors=model.errors,
                                     histogram_every=cfg.model.constraint_interval
                                     * cfg.training.tensorboard_histogram_freq, resume_from=resume_from,
                                     jit_compile=cfg.training.jit_compile))
    if cfg.training.mlflow_tracking_uri:
        from nnlab.integrations.mlflow import MlflowSink

        # A resumed run's URI was read back masked: its password comes from the environment.
        uri = without_masked_password(cfg.training.mlflow_tracking_uri)
        sinks.append(MlflowSink(uri, cfg.training.mlflow_experiment, run_dir=run.run_dir,
                                rows=lambda: tracker.rows, params=redact(cfg.to_flat()),
                                tags=run.tags, errors=model.errors, flush_every=cfg.training.checkpoint_every,
                                resuming=resume_from is not None))
    return sinks


def _finish_sinks(run: _Run, status: str, test: Mapping[str, Any] | None) -> None:
    for sink in run.sinks:
        sink.finish(status, test)


def _record_status(run: _Run, errors: ErrorRecorder, status: str, **fields: Any) -> None:
    try:
        write_run_status(run.run_dir, status, run_id=run.run_id, **fields)
    except (OSError, TypeError, ValueError) as exc:
        errors.record(RUN_STATUS_NAME, exc)


def _train_recorded(model: AdvancedNeuralNetwork, arrays: tuple, cfg: Config, run: _Run, **kwargs: Any
                    ) -> dict[str, Any]:
    """:func:`_train`, then the run's final status in run_status.json; the run's lock is released at the end."""
    errors = model.errors
    fields: dict[str, Any] = {"epochs": cfg.training.epochs}
    if run.resume is not None:
        fields["resumed_from_epoch"] = run.resume.epoch
    try:
        try:
            results = _train(model, arrays, cfg, run, **kwargs)
        except KeyboardInterrupt:
            # Aborted at once (second Ctrl-C): the last checkpoint is there to resume from.
            _record_status(run, errors, RunStatus.INTERRUPTED, **fields)
            _finish_sinks(run, RunStatus.INTERRUPTED, None)
            raise
        except Exception as exc:
            # _train may have named the failure ("failed: disk full" can be resumed); else plain "failed".
            status = RunStatus.parse(run.row.get("status"))
            status = status if status is not None and status.failed else RunStatus.FAILED
            _record_status(run, errors, status, **fields, error=f"{type(exc).__name__}: {exc}"[:500])
            _finish_sinks(run, status, None)
            raise
        summary = results.get("performance_summary") or {}
        _record_status(run, errors, results["status"], **fields, epochs_run=summary.get("total_epochs"))
        _finish_sinks(run, results["status"], results.get("test"))
        return results
    finally:
        if run.lock is not None:
            run.lock.release()


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
    mlflow_tags: Mapping[str, Any] | None = None,
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
        mlflow_tags: extra tags of the run's MLflow run when
            ``mlflow_tracking_uri`` is set (``mlflow.parentRunId`` makes it a
            child run: searches and studies use it).

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
    errors = model.errors
    errors.disk_full = None  # a model trained again starts with room: each run finds out for itself
    # Locked and marked running before anything else is written in it.
    lock = lock_new_run(run_dir, errors)
    row: dict[str, Any] = dict.fromkeys(CONFIG_LOG_COLUMNS, "")
    row.update({
        "run_id": run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": RunStatus.RUNNING,
        "preset": preset or "",
        "loss_weighting_strategy": cfg.model.loss_weighting_strategy,
        "constraints": "+".join(model.constraints_used()) or "none",
        **{k: cfg.get(k) for k in _LOGGED_KEYS},
        "run_dir": str(run_dir),
    })
    run = _Run(run_id, run_dir, Path(output_dir), row, lock=lock)
    _record_status(run, errors, RunStatus.RUNNING, epochs=cfg.training.epochs)
    _safe(errors, CONFIG_LOG_NAME, upsert_csv_row, run.output_dir / CONFIG_LOG_NAME, row, key="run_id")
    # Digests of the data let a resume prove it continues on the same data.
    source: dict[str, Any] = {"n_rows": int(len(X_train) + len(X_val) + len(X_test)), **(data_source or {})}
    if source.get("csv_path") and not source.get("csv_sha256"):
        source["csv_sha256"] = _safe(errors, "training_config.json", file_digest, source["csv_path"])
    source["arrays_sha256"] = arrays_digest((X_train, X_val, X_test, y_train, y_val, y_test))
    saved = {"run_id": run_id, "preset": preset, "config": redact(cfg.to_flat()), "seed": cfg.model.seed,
             "versions": library_versions(), "command": redact_argv(sys.argv), "data": source}
    saved["settings_sha256"] = settings_digest(saved)
    if data is not None and hasattr(data, "save_scalers"):
        # Written first so that its SHA-256 is recorded: a resume refuses an edited scalers.json.
        if _safe(errors, "scalers.json", data.save_scalers, run_dir) is not None:
            saved["scalers_sha256"] = _safe(errors, "scalers.json", file_digest, run_dir / "scalers.json")
    run.tags = run_tags(run_id, source, mlflow_tags)
    _safe(errors, "training_config.json", atomic_write_json, run_dir / "training_config.json", saved)
    return _train_recorded(model, (X_train, X_val, X_test, y_train, y_val, y_test), cfg, run, data=data,
                           verbose=verbose, callbacks=callbacks)


def _checkpointed_components(model: AdvancedNeuralNetwork, weights: WeightCheckpoint) -> dict[str, Any]:
    """What a training checkpoint captures and restores, by name."""
    components: dict[str, Any] = {"model": ModelState(model.model), "loss": model.loss_callback,
                                  "best_weights": weights}
    if model.constraint_callback is not None:
        components["constraints"] = model.constraint_callback
    for name, (callback, attributes) in model.standard_callback_states().items():
        components[name] = CallbackAttributes(callback, attributes)
    return components


@dataclass
class _Fit:
    """What training produced, for the evaluation and the records that follow it."""

    training: dict[str, Any]
    status: RunStatus
    tracker: PerformanceTracker
    started: float
    failure: str | None = None


@dataclass
class _Callbacks:
    """A run's callbacks, in order (``all``), with the ones the fit refers to by name."""

    all: list[keras.callbacks.Callback]
    tracker: PerformanceTracker
    loss_writer: RowsCallbackWriter
    components: dict[str, Any]
    state_checkpoint: TrainingCheckpoint
    verbose: int | str


def _run_callbacks(model: AdvancedNeuralNetwork, cfg: Config, run: _Run, verbose: int | str,
                   callbacks: Sequence[keras.callbacks.Callback]) -> _Callbacks:
    """The run's callbacks: tracker, sinks, loss writer, weights, the caller's, progress; then the checkpoint."""
    errors, t, run_dir = model.errors, cfg.training, run.run_dir
    resuming = run.resume is not None  # the CSVs were cut back to the checkpoint by resume_training
    tracker = PerformanceTracker(run_dir / "training_results.csv", errors=errors, append=resuming,
                                 initial_rows=run.initial_rows)
    loss_writer = RowsCallbackWriter(run_dir / "loss_history.csv", lambda: model.loss_callback.history,
                                     HISTORY_COLUMNS, errors=errors, append=resuming)
    weights = WeightCheckpoint(run_dir / "weights", every=t.checkpoint_every, errors=errors)
    components = _checkpointed_components(model, weights)
    state_checkpoint = TrainingCheckpoint(run_dir, components, every=t.checkpoint_every,
                                          interrupt=InterruptRequest(), errors=errors)
    run.sinks = _build_sinks(model, cfg, run, tracker)
    run_callbacks = [tracker, *run.sinks, loss_writer, weights, *callbacks]
    if verbose == "progress":  # nnlab's own display (after the constraints: it shows their mark), not Keras'
        from nnlab.console import ConsoleProgress

        run_callbacks.append(ConsoleProgress())
        verbose = 0
    return _Callbacks(run_callbacks, tracker, loss_writer, components, state_checkpoint, verbose)


def _fit(model: AdvancedNeuralNetwork, arrays: tuple, cfg: Config, run: _Run, *, verbose: int | str,
         callbacks: Sequence[keras.callbacks.Callback]) -> _Fit:
    """Compile (restoring a resumed run's state), fit, and decide the run's status."""
    X_train, X_val, X_test, y_train, y_val, _ = arrays
    errors, t = model.errors, cfg.training
    started = time.perf_counter()
    start_epoch = run.resume.epoch if run.resume is not None else 0
    cbs = _run_callbacks(model, cfg, run, verbose, callbacks)
    disk_full_stop = _StopOnDiskFull(errors)
    try:
        _clean_temp_files(run)
        model.compile_model()
        if run.resume is not None:
            restore(run.resume, cbs.components)
            cbs.loss_writer.skip_existing()
            if cfg.model.seed is not None:
                # Fresh shuffles and dropout masks for the remaining epochs.
                keras.utils.set_random_seed((cfg.model.seed + start_epoch) % 2**32)
        with cbs.state_checkpoint.interrupt:
            training = model.train_with_custom_constraints(
                X_train, y_train, X_val, y_val, epochs=t.epochs, batch_size=t.batch_size,
                callbacks=[*cbs.all, disk_full_stop], verbose=cbs.verbose, initial_epoch=start_epoch,
                final_callbacks=[cbs.state_checkpoint],
            )
    except Exception as exc:
        _record_crash(exc, run, errors, cbs.tracker, t.epochs, started)
        raise
    finally:
        disk_full_stop.detach()
    fit = _Fit(training, _fit_status(model, training, X_test, (*callbacks, cbs.state_checkpoint)), cbs.tracker,
               started)
    if errors.disk_full is not None and fit.status != RunStatus.DIVERGED:
        # Whatever else happened, the run's files stop at the full disk.
        fit.status = RunStatus.DISK_FULL
        fit.failure = _disk_full_message(errors.disk_full, run, len(cbs.tracker.rows), t.epochs)
    return fit


def _record_crash(exc: Exception, run: _Run, errors: ErrorRecorder, tracker: PerformanceTracker, epochs: int,
                  started: float) -> None:
    """A fit that raised: the log row says so; a full disk becomes one message without a traceback."""
    full = is_disk_full(exc)
    run.row.update(status=RunStatus.DISK_FULL if full else RunStatus.FAILED,
                   total_time_s=round(time.perf_counter() - started, 3), error_count=len(errors) + 1)
    _safe(errors, CONFIG_LOG_NAME, upsert_csv_row, run.output_dir / CONFIG_LOG_NAME, run.row, key="run_id")
    if full:  # a writer that raised instead of recording: the same message, no traceback
        raise NnlabError(_disk_full_message({"path": exc.filename, "reason": exc.strerror}, run,
                                            len(tracker.rows), epochs)) from None


def _fit_status(model: AdvancedNeuralNetwork, training: dict[str, Any], X_test: Any,
                callbacks: Sequence[Any]) -> RunStatus:
    """Diverged, a callback's requested status (pruned, interrupted), else completed."""
    requested = [getattr(cb, "run_status", None) for cb in callbacks]
    status = RunStatus.DIVERGED if training["diverged"] else RunStatus(
        next((r for r in requested if r), RunStatus.COMPLETED))
    if status != RunStatus.INTERRUPTED and not np.isfinite(model.predict(X_test)).all():
        # A loss that grew huge but stayed finite: the network predicts inf/NaN.
        training["diverged"] = True
        status = RunStatus.DIVERGED
    return status


def _test_report(model: AdvancedNeuralNetwork, X_test: Any, y_test: Any, data: Any) -> dict[str, Any]:
    """test_metrics.json: scaled and per-target metrics, physical units and physics when the data allows."""
    errors = model.errors
    test = model.evaluate_model(X_test, y_test)
    target_names = list(getattr(data, "target_names", [])) or [f"target_{i}" for i in range(model.output_dim)]
    report: dict[str, Any] = {
        "scaled": {k: test[k] for k in ("mse", "mae", "rmse", "r2")},
        "per_target_scaled": _per_target(test, target_names),
        "inference_time_s": test["inference_time"],
        "samples_per_second": test["samples_per_second"],
        "n_samples": test["n_samples"],
    }
    if data is not None and hasattr(data, "inverse_transform_targets"):
        y_true, y_pred = (data.inverse_transform_targets(np.asarray(y)) for y in (y_test, model.predict(X_test)))
        report["per_target_physical"] = _per_target(regression_metrics(y_true, y_pred), target_names)
        if not getattr(data, "is_particle_task", True):
            report["physics"] = physics_not_applicable(target_names)
        elif hasattr(data, "x_scaler"):
            report["physics"] = _safe(
                errors, "physics metrics", physics_report, y_pred, y_true,
                data.x_scaler.inverse_transform(np.asarray(X_test, dtype=np.float64)),
                target_names=target_names, feature_names=list(data.feature_names))
    # After the final weights are saved and the test metrics computed; the weights
    # are restored afterwards, so nothing downstream sees cast ones.
    formats = _evaluate_formats_safe(errors, model, X_test, y_test, test["r2"])
    if formats is not None:
        report["formats"] = formats
    # Unavailable metrics (R² of fewer than two rows) are null: NaN is not JSON.
    return _finite_or_none(report)


def _performance_summary(model: AdvancedNeuralNetwork, cfg: Config, run: _Run, fit: _Fit) -> dict[str, Any]:
    summary = fit.tracker.summary()
    summary.update(
        run_id=run.run_id, run_dir=str(run.run_dir), status=fit.status,
        total_time_s=time.perf_counter() - fit.started,
        weight_modifications=model.constraints_used(),
        loss_weighting_strategy=cfg.model.loss_weighting_strategy,
        physics_loss=({"weight": cfg.model.physics_loss_weight, "terms": list(cfg.model.physics_loss_terms)}
                      if cfg.model.physics_loss_weight > 0 else None),
        weight_files=_file_sizes(run.run_dir / "weights"),
        error_count=len(model.errors), resumed_from_epoch=run.resume.epoch if run.resume is not None else None,
    )
    return summary


def _train(model: AdvancedNeuralNetwork, arrays: tuple, cfg: Config, run: _Run, *, data: Any,
           verbose: int | str, callbacks: Sequence[keras.callbacks.Callback]) -> dict[str, Any]:
    """Fit, evaluate on the test set, and write test_metrics.json, training_log.txt and the log row."""
    errors, X_test, y_test = model.errors, arrays[2], arrays[5]
    fit = _fit(model, arrays, cfg, run, verbose=verbose, callbacks=callbacks)
    summary = _performance_summary(model, cfg, run, fit)
    test_report: dict[str, Any] | None = None
    if fit.status not in (RunStatus.INTERRUPTED, RunStatus.DIVERGED, RunStatus.DISK_FULL):
        test_report = _test_report(model, X_test, y_test, data)
        _safe(errors, "test_metrics.json", atomic_write_json, run.run_dir / "test_metrics.json", test_report)
        scaled = test_report["scaled"]
        summary.update(inference_time_s=test_report["inference_time_s"],
                       samples_per_second=test_report["samples_per_second"],
                       test_mse=scaled["mse"], test_mae=scaled["mae"], test_rmse=scaled["rmse"],
                       test_r2=scaled["r2"], error_count=len(errors))
    results = {"run_id": run.run_id, "run_dir": str(run.run_dir), "status": fit.status,
               "training": fit.training, "test": test_report, "performance_summary": summary,
               "error_summary": errors.summary(), "precision_policy": cfg.get("precision_policy")}
    if fit.failure is not None:
        results["failure"] = fit.failure
    # Where the optional sinks write (a sink that failed says nothing here; its error is listed).
    results["tracking"] = {sink.component: where for sink in run.sinks if (where := sink.describe())}
    results["training"]["errors"] = errors.summary()
    _safe(errors, "training_log.txt", atomic_write_text, run.run_dir / "training_log.txt", format_summary(results))
    _record_row(run, errors, summary)
    results["error_summary"] = errors.summary()
    return results


def _record_row(run: _Run, errors: ErrorRecorder, summary: Mapping[str, Any]) -> None:
    """The run's final configuration_log.csv row."""
    run.row.update(
        status=summary["status"], epochs_run=summary["total_epochs"],
        final_val_r2=summary["current_r2"], best_val_r2=summary["best_r2"], best_epoch=summary["best_epoch"],
        test_r2=summary.get("test_r2", ""), test_mse=summary.get("test_mse", ""),
        test_mae=summary.get("test_mae", ""),
        total_time_s=round(summary["total_time_s"], 3), peak_memory_mb=round(summary["peak_memory_mb"], 1),
        error_count=len(errors),
    )
    # Best effort: on a full disk the log (often on the same disk) may not take the row either.
    _safe(errors, CONFIG_LOG_NAME, upsert_csv_row, run.output_dir / CONFIG_LOG_NAME, run.row, key="run_id")


# --- a full disk ends the run --------------------------------------------------------

DISK_FULL_STATUS = RunStatus.DISK_FULL


class _StopOnDiskFull(keras.callbacks.Callback):
    """Stop training at the first disk-full error of any writer: every later write would fail too.

    The run's :class:`~nnlab.tracking.ErrorRecorder` calls :meth:`stop` when a
    writer records ``ENOSPC``/``EDQUOT``; Keras ends the epoch and stops. A
    disk that filled before training began (the run's first files) stops it
    after the first batch.
    """

    def __init__(self, errors: ErrorRecorder) -> None:
        super().__init__()
        self.errors = errors

    def stop(self, entry: Mapping[str, Any] | None = None) -> None:
        if self.model is not None:
            self.model.stop_training = True

    def on_train_begin(self, logs=None):
        if self.stop not in self.errors.on_disk_full:
            self.errors.on_disk_full.append(self.stop)
        if self.errors.disk_full is not None:
            self.stop()

    def detach(self) -> None:
        if self.stop in self.errors.on_disk_full:
            self.errors.on_disk_full.remove(self.stop)


def _disk_full_message(entry: Mapping[str, Any], run: _Run, epochs_done: int, epochs: int) -> str:
    """The one paragraph that ends a run on a full disk: what, where, what is kept, what next."""
    path = Path(entry["path"]) if entry.get("path") else None
    if path is None:
        what, where = f"a file ({entry.get('component', 'unknown writer')})", run.run_dir
    elif path.is_relative_to(run.run_dir):
        what, where = path.relative_to(run.run_dir).as_posix(), run.run_dir
    else:
        what, where = path.name, path.parent
    if list_checkpoints(run.run_dir):
        import shlex  # a command that works from any directory

        next_step = (f"Free space and resume with `nnlab train --resume {run.run_id} "
                     f"--output-dir {shlex.quote(os.path.abspath(run.output_dir))}`.")
    else:
        next_step = "No checkpoint was written, so there is nothing to resume: free space and start the run again."
    return (f"disk full: could not write {what} in {where} ({entry.get('reason') or 'No space left on device'}). "
            f"Training stopped after epoch {epochs_done} of {epochs}; what was written before is intact. "
            f"{next_step}")


def _clean_temp_files(run: _Run) -> None:
    """Remove what killed writes left in the directories this run writes to (see clean_orphan_temp_files)."""
    log_dir = Path(os.path.realpath(run.output_dir / CONFIG_LOG_NAME)).parent
    for directory in dict.fromkeys((run.output_dir, log_dir, run.run_dir, run.run_dir / "weights",
                                    run.run_dir / "checkpoints")):
        clean_orphan_temp_files(directory)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
