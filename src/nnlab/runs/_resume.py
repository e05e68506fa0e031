"""``resume_training``: continue an interrupted run, after proving nothing about it changed.

Every check comes before anything is written, so a refused resume changes no
file: the run's status and lock, training_config.json against its recorded
digest, the rebuilt data against its digests, and each checkpoint restored into
a scratch model.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnlab._files import probe_writable, read_csv_rows, write_csv_rows
from nnlab.config import Config, read_json_object
from nnlab.errors import ConfigError, NnlabError
from nnlab.runs._lock import lock_for_resume
from nnlab.runs._runs import (
    CONFIG_LOG_COLUMNS,
    DEFAULT_OUTPUT_DIR,
    RESUMABLE_STATUSES,
    CheckpointError,
    arrays_digest,
    check_config_log,
    config_log_row,
    file_digest,
    find_resumable_run,
    list_checkpoints,
    read_run_status,
    resume_refusal,
    settings_digest,
)
from nnlab.runs._source import DataSource
from nnlab.runs._status import RunStatus

if TYPE_CHECKING:
    from nnlab.runs._state import TrainingState

# The network (nnlab.model, nnlab.runs._pipeline, _state, _weights: TensorFlow) is imported inside the
# functions, after the checks that need none: a refused resume answers without loading TensorFlow.


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

    Only a run whose status (run_status.json) is ``interrupted``, or ``running``
    with its process gone, is resumed; ``"latest"`` is the newest such run. Every
    check comes before anything is written, so a refused resume changes nothing:
    the status, the lock (one process per run), training_config.json against the
    digest recorded when the run started, the data against its recorded digests,
    and each checkpoint against a model built from the configuration (a checkpoint
    that does not fit is skipped like a corrupt one, with a ``RuntimeWarning``).

    Args:
        run_id: a run id, or ``"latest"``.
        output_dir: the training output root.
        verbose: Keras progress output.

    Returns:
        The same dictionary as :func:`train_with_tracking`.

    Raises:
        NnlabError: no such run; a run that cannot be resumed (completed, failed,
            diverged, pruned, being trained by another process); an edited
            training_config.json; data that changed; no usable checkpoint.
    """
    run_dir, saved, cfg, checkpoints = _checked_run(run_id, output_dir)
    data = _rebuild_data(run_dir, saved, cfg)
    n_features, n_targets = data.X_train.shape[1], data.y_train.shape[1]
    from nnlab.model import AdvancedNeuralNetwork  # TensorFlow loads here: every check from now on needs a network
    from nnlab.runs._pipeline import _record_status, _Run, _train_recorded, run_tags
    from nnlab.runs._state import load_latest_checkpoint

    state = load_latest_checkpoint(run_dir, check=lambda s: _check_restorable(s, cfg, data))
    if state.epoch >= cfg.training.epochs:
        raise NnlabError(f"run '{run_dir.name}' already trained {state.epoch} of {cfg.training.epochs} epochs; "
                         "nothing to resume")
    model = AdvancedNeuralNetwork((n_features,), n_targets, cfg, scalers=data)
    try:
        row = config_log_row(output_dir, run_dir.name)
    except (OSError, UnicodeDecodeError, csv.Error):
        row = None  # the shared log is secondary; the run's row is written anew at the end
    row = {**dict.fromkeys(CONFIG_LOG_COLUMNS, ""), **(row or {"run_id": run_dir.name, "run_dir": str(run_dir)}),
           "status": RunStatus.RUNNING}
    lock = lock_for_resume(run_dir, model.errors)
    try:
        # Another process may have resumed the run while it was being checked.
        record = read_run_status(run_dir, output_dir)
        if record.get("status") not in (None, RunStatus.RUNNING, *RESUMABLE_STATUSES):
            raise NnlabError(resume_refusal(run_dir, record) or f"run {run_dir.name} cannot be resumed")
        if list_checkpoints(run_dir) != checkpoints:
            raise NnlabError(f"run {run_dir.name} was trained by another process while this one checked it; "
                             "resume again")
        if lock is not None:
            lock.label()
        # Epochs after the checkpoint are redone: drop their rows (each file replaced atomically).
        initial_rows = _cut_csv(run_dir / "training_results.csv", 1, state.epoch)
        _cut_csv(run_dir / "loss_history.csv", 0, state.epoch)
    except OSError as exc:
        if lock is not None:
            lock.release()
        raise ConfigError(f"run directory '{run_dir}' cannot be written: {exc.strerror or exc}") from None
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run = _Run(run_dir.name, run_dir, Path(output_dir), row, resume=state, lock=lock, initial_rows=initial_rows,
               tags=run_tags(run_dir.name, saved.get("data") or {}))
    _record_status(run, model.errors, RunStatus.RUNNING, epochs=cfg.training.epochs, resumed_from_epoch=state.epoch)
    print(f"resuming run {run.run_id} from {state.path.name} (epoch {state.epoch} of {cfg.training.epochs})",
          file=sys.stderr, flush=True)
    return _train_recorded(model, tuple(data), cfg, run, data=data, verbose=verbose, callbacks=())


def _checked_run(run_id: str, output_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], Config, list[Path]]:
    """The run to resume, its training_config.json, configuration and checkpoints, after every check that
    needs no network: an unknown, finished or locked run, an edited configuration or scalers, no checkpoint,
    a directory that cannot be written."""
    run_dir = find_resumable_run(output_dir, run_id)
    check_config_log(output_dir)  # the run's row is written there
    config_path = run_dir / "training_config.json"
    saved = read_json_object(config_path)
    recorded = saved.get("settings_sha256")
    if recorded is not None and recorded != settings_digest(saved):
        raise NnlabError(
            f"{config_path}: its configuration or data source was edited after run {run_dir.name} started "
            "(it no longer matches the SHA-256 recorded then); a resume continues a run exactly as it was "
            "started: undo the edit, or start a new run with the changed settings")
    _check_scalers(run_dir, saved.get("scalers_sha256"))
    cfg = Config.from_flat(saved.get("config", {}), source=str(config_path))
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(f"run directory '{run_dir}' has no checkpoint to resume from")
    try:
        probe_writable(run_dir)
    except OSError as exc:
        raise ConfigError(f"run directory '{run_dir}' cannot be written: {exc.strerror or exc}") from None
    return run_dir, saved, cfg, checkpoints


def _check_scalers(run_dir: Path, recorded: Any) -> None:
    """Refuse a resume whose scalers.json is not the one written when the run started (older runs
    recorded no digest and are not checked)."""
    if recorded is None:
        return
    path = run_dir / "scalers.json"
    try:
        now = file_digest(path)
    except OSError as exc:
        raise NnlabError(f"{path}: cannot be read ({exc.strerror or exc}); run {run_dir.name} recorded its "
                         "SHA-256 when it started, and a resume continues a run exactly as it was started: "
                         "restore the file, or start a new run") from None
    if now != recorded:
        raise NnlabError(
            f"{path}: the scalers were edited after run {run_dir.name} started (it no longer matches the "
            "SHA-256 recorded then in training_config.json); a resume continues a run exactly as it was "
            "started: undo the edit, or start a new run")


def _rebuild_data(run_dir: Path, saved: Mapping[str, Any], cfg: Config) -> Any:
    """The run's data, rebuilt from its recorded source and proven equal to what it was trained on."""
    record = saved.get("data") or {}
    if isinstance(record, Mapping) and not record.get("csv_path") and not record.get("num_particles"):
        # A run that recorded its split but not its particle count simulated the configured default.
        record = {**record, "num_particles": cfg.generation.num_particles_default}
    if isinstance(record, Mapping) and "seed" not in record:
        record = {**record, "seed": cfg.generation.random_seed}
    source = DataSource.from_record(record, cfg, where=f"{run_dir / 'training_config.json'}: data")
    source.check_unchanged(run_dir.name)
    data = source.prepare()
    recorded = record.get("arrays_sha256")
    if recorded is not None:
        now = arrays_digest(tuple(data))
        if now != recorded:
            described = (f"'{source.csv_path}'" if source.kind == "csv"
                         else f"{source.num_particles} particles simulated with seed {source.seed}")
            unseeded = (" (the data was generated without a seed, so it cannot be rebuilt)"
                        if source.kind == "simulated" and source.seed is None else "")
            raise NnlabError(
                f"the data rebuilt for run {run_dir.name} ({described}, split with random_state "
                f"{source.random_state}) is not the data it was trained on (SHA-256 of the prepared arrays "
                f"{str(recorded)[:12]}... recorded, {now[:12]}... now){unseeded}; resuming would continue on "
                "different data: start a new run")
    return data


def _check_restorable(state: TrainingState, cfg: Config, data: Any) -> None:
    """Raise :class:`CheckpointError` unless ``state`` restores cleanly into a model built from ``cfg``.

    The state is restored into a scratch model (never the one that trains), so a
    checkpoint that does not fit is found before any file of the run is touched.
    """
    from nnlab.model import AdvancedNeuralNetwork
    from nnlab.runs._pipeline import _checkpointed_components
    from nnlab.runs._state import restore
    from nnlab.runs._weights import WeightCheckpoint

    scratch = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], cfg, scalers=data)
    scratch.compile_model()
    weights = WeightCheckpoint(os.devnull, errors=scratch.errors)  # never saves: no callback runs
    components = _checkpointed_components(scratch, weights)
    unknown = sorted((set(state.meta) | set(state.arrays)) - set(components))
    if unknown:
        raise CheckpointError(f"{state.path.stem} holds state for {', '.join(unknown)}, which the run's "
                              "configuration does not use")
    if not any(k.startswith("w") for k in state.arrays.get("model", {})):
        raise CheckpointError(f"{state.path.stem} holds no model weights")
    shapes = [tuple(int(d) for d in w.shape) for w in scratch.model.weights]
    best = state.arrays.get("best_weights", {})
    if best and [tuple(best[k].shape) for k in sorted(best)] != shapes:
        raise CheckpointError(f"{state.path.stem}: its best weights do not fit the model built from the run's "
                              "configuration")
    try:
        restore(state, components)
        for component in components.values():
            if hasattr(component, "apply_pending"):
                component.apply_pending()
        if scratch.constraint_callback is not None:
            # The constraint state is assigned when training begins: do that here.
            scratch.constraint_callback.set_model(scratch.model)
            scratch.constraint_callback.on_train_begin()
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{state.path.stem} does not fit the model built from the run's configuration "
                              f"({type(exc).__name__}: {exc})") from None


def _cut_csv(path: Path, first: int, count: int) -> list[dict[str, str]]:
    """Cut a per-epoch CSV back to the epochs ``first .. first + count - 1``, one row each, in order.

    Rows of later epochs (redone after the resume), a row half-written when the
    process was killed, and any repeated epoch are dropped. Returns the rows kept.
    """
    rows = read_csv_rows(path)
    if not rows:
        return []
    by_epoch: dict[int, dict[str, str]] = {}
    for row in rows:
        if None in row.values() or None in row:  # cut short by a kill, or a stray field
            continue
        try:
            epoch = int(row["epoch"])
        except (KeyError, TypeError, ValueError):
            continue
        if first <= epoch < first + count:
            by_epoch[epoch] = row
    kept = [by_epoch[e] for e in sorted(by_epoch)]
    write_csv_rows(path, kept, list(rows[0].keys()))
    return kept
