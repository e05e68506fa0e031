"""Full training-state checkpoints: resume a run where it stopped.

A checkpoint holds everything a run needs to continue as if it had not stopped:
model weights, optimizer state (step counter, learning rate, moments), the
weight-constraint state (previous weights, oscillation history, random-draw
counters), the adaptive-loss schedule (weights, history, random generator),
the learning-rate plateau and best-weights bookkeeping, and the epoch counter.

On disk, in ``<run_dir>/checkpoints/``, each checkpoint is two files written
atomically (temporary name, fsync, rename)::

    ckpt_0010.npz    every array
    ckpt_0010.json   manifest: epoch, SHA-256 and size of the .npz, JSON state

The manifest is written after the arrays, so a checkpoint without a manifest
never counts. :func:`load_latest_checkpoint` verifies the digest and the
contents (plain numeric arrays only, never pickled objects; shapes against the
model through its ``check``) and falls back to the previous good checkpoint,
with a warning naming what was wrong. The digest alone proves nothing against a
crafted checkpoint: whoever writes the ``.npz`` can rewrite its manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from nnlab._files import atomic_write, atomic_write_json
from nnlab._signals import raise_if_interrupted
from nnlab.errors import ErrorRecorder
from nnlab.runs._runs import CHECKPOINT_DIR, CheckpointError, list_checkpoints
from nnlab.runs._status import RunStatus

__all__ = [
    "CheckpointError",
    "Stateful",
    "ModelState",
    "CallbackAttributes",
    "TrainingState",
    "TrainingCheckpoint",
    "InterruptRequest",
    "save_checkpoint",
    "load_latest_checkpoint",
    "list_checkpoints",
    "restore",
]

FORMAT_VERSION = 1


class Stateful(Protocol):
    """What a component needs to be checkpointed: JSON-able state and arrays."""

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    def set_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None: ...


@dataclass
class TrainingState:
    """A loaded checkpoint: the epoch count reached and each component's state."""

    epoch: int
    path: Path
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


# --- model and optimizer --------------------------------------------------------


class ModelState:
    """Weights of a Keras model and the state of its optimizer."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {f"w{i:04d}": np.asarray(w) for i, w in enumerate(self.model.get_weights())}
        optimizer = self.model.optimizer
        if optimizer is not None and optimizer.built:
            arrays.update({f"o{i:04d}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
        return {"n_weights": len(self.model.weights)}, arrays

    def check_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`CheckpointError` unless every array fits this model and optimizer, by number and shape.

        Changes no weight (it builds the optimizer's variables if need be).
        """
        unknown = sorted(k for k in arrays if k[:1] not in ("w", "o"))
        if unknown:
            raise CheckpointError(f"unknown model arrays {', '.join(unknown[:5])}")
        self._check_shapes("weight", [arrays[k] for k in sorted(arrays) if k.startswith("w")], self.model.weights)
        slots = [arrays[k] for k in sorted(arrays) if k.startswith("o")]
        if slots:
            optimizer = self.model.optimizer
            if optimizer is None:
                raise CheckpointError("checkpoint holds optimizer state, but the model is not compiled")
            optimizer.build(self.model.trainable_variables)
            self._check_shapes("optimizer variable", slots, optimizer.variables)

    @staticmethod
    def _check_shapes(what: str, values: Sequence[np.ndarray], variables: Sequence[Any]) -> None:
        if len(values) != len(variables):
            raise CheckpointError(f"checkpoint holds {len(values)} {what}s, the model built from the run's "
                                  f"configuration has {len(variables)}")
        for i, (value, variable) in enumerate(zip(values, variables)):
            expected = tuple(int(d) for d in variable.shape)
            if tuple(value.shape) != expected:
                name = getattr(variable, "path", None) or getattr(variable, "name", "?")
                raise CheckpointError(f"{what} {i} ({name}) has shape {tuple(value.shape)} in the checkpoint, "
                                      f"the model built from the run's configuration expects {expected}")

    def set_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.check_state(meta, arrays)
        try:
            self.model.set_weights([arrays[k] for k in sorted(arrays) if k.startswith("w")])
        except ValueError as exc:
            raise CheckpointError(f"checkpoint weights do not fit the model: {exc}") from None
        slots = [arrays[k] for k in sorted(arrays) if k.startswith("o")]
        for variable, value in zip(self.model.optimizer.variables if slots else (), slots):
            variable.assign(value)


class CallbackAttributes:
    """Selected plain attributes of a Keras callback (ReduceLROnPlateau: wait, best...)."""

    def __init__(self, callback: keras.callbacks.Callback, names: Sequence[str]) -> None:
        self.callback = callback
        self.names = tuple(names)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {n: _jsonable(getattr(self.callback, n, None)) for n in self.names}, {}

    def set_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        # Keras callbacks reset these in on_train_begin: keep them until then
        # (TrainingCheckpoint.on_train_begin, which runs last, applies them).
        self._pending = {n: meta[n] for n in self.names if meta.get(n) is not None}

    def apply_pending(self) -> None:
        for name, value in getattr(self, "_pending", {}).items():
            setattr(self.callback, name, float(value) if isinstance(value, str) else value)
        self._pending = {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # "inf"/"-inf": JSON has no infinities; float("inf") reads it back
    return value


# --- saving and loading -----------------------------------------------------------


def _checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def save_checkpoint(run_dir: str | os.PathLike, epoch: int, components: Mapping[str, Stateful], *,
                    keep: int = 3) -> Path:
    """Write the state of ``components`` after ``epoch`` completed epochs; keep the newest ``keep``."""
    directory = _checkpoint_dir(Path(run_dir))
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, component in components.items():
        component_meta, component_arrays = component.get_state()
        meta[name] = component_meta
        arrays.update({f"{name}/{key}": value for key, value in component_arrays.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    stem = f"ckpt_{epoch:04d}"
    atomic_write(directory / f"{stem}.npz", lambda fh: fh.write(payload), binary=True)
    atomic_write_json(directory / f"{stem}.json", {
        "format_version": FORMAT_VERSION, "epoch": int(epoch), "arrays": f"{stem}.npz",
        "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload), "state": meta,
    })
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".npz").unlink(missing_ok=True)
    return directory / f"{stem}.json"


def _read_checkpoint(manifest_path: Path) -> TrainingState:
    """Read and verify one checkpoint; raises CheckpointError saying what is wrong."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        epoch = int(manifest["epoch"])
        arrays_name = str(manifest["arrays"])
        expected, size = str(manifest["sha256"]), int(manifest["size"])
        meta = manifest.get("state", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{manifest_path.name}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    if Path(arrays_name).name != arrays_name or not arrays_name.endswith(".npz"):
        raise CheckpointError(f"{manifest_path.name}: names '{arrays_name}', not an .npz file beside it")
    if epoch < 1:
        raise CheckpointError(f"{manifest_path.name}: epoch {epoch} is not a completed epoch")
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise CheckpointError(f"{manifest_path.name}: 'state' is not an object of component states")
    arrays_path = manifest_path.with_name(arrays_name)
    try:
        payload = arrays_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{arrays_path.name}: cannot be read ({exc.strerror or exc})") from None
    if len(payload) != size:
        raise CheckpointError(f"{arrays_path.name}: truncated ({len(payload)} of {size} bytes)")
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CheckpointError(f"{arrays_path.name}: contents do not match the recorded SHA-256 (corrupt)")
    # The digest proves the file is the one the manifest describes, not that a
    # trainer wrote it: whoever can write the .npz can rewrite the manifest too.
    # So the contents are checked as well (here, and against the model by the caller).
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            flat = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{arrays_path.name}: not a checkpoint archive ({type(exc).__name__}: {exc})") from None
    state = TrainingState(epoch=epoch, path=manifest_path, meta=dict(meta))
    for key, value in flat.items():
        component, _, name = key.partition("/")
        if not component or not name:
            raise CheckpointError(f"{arrays_path.name}: array '{key}' is not named component/array")
        if value.dtype.kind not in "biuf":
            raise CheckpointError(f"{arrays_path.name}: array '{key}' has dtype {value.dtype}, not numbers")
        state.arrays.setdefault(component, {})[name] = value
    return state


def load_latest_checkpoint(run_dir: str | os.PathLike, *,
                           check: Callable[[TrainingState], None] | None = None) -> TrainingState:
    """The newest checkpoint of a run that verifies; older ones are tried in turn.

    Each checkpoint skipped gives a ``RuntimeWarning`` naming it and why.

    Args:
        run_dir: the run directory.
        check: called with each loaded checkpoint; it raises :class:`CheckpointError`
            if the checkpoint does not fit (e.g. shapes against the model to restore
            into), and that checkpoint is then skipped like a corrupt one.

    Raises:
        CheckpointError: if the run has no checkpoint, or none verifies.
    """
    manifests = list_checkpoints(run_dir)
    if not manifests:
        raise CheckpointError(f"run directory '{run_dir}' has no checkpoint to resume from")
    problems = []
    for manifest in reversed(manifests):
        try:
            state = _read_checkpoint(manifest)
            if check is not None:
                check(state)
        except CheckpointError as exc:
            problems.append(str(exc))
            warnings.warn(f"checkpoint {manifest.stem} is unusable: {exc}; trying the previous one",
                          RuntimeWarning, stacklevel=2)
            continue
        return state
    raise CheckpointError(f"no usable checkpoint in '{_checkpoint_dir(Path(run_dir))}': " + "; ".join(problems))


def restore(state: TrainingState, components: Mapping[str, Stateful]) -> None:
    """Give each component its part of a loaded checkpoint."""
    for name, component in components.items():
        if name in state.meta or name in state.arrays:
            component.set_state(state.meta.get(name, {}), state.arrays.get(name, {}))


# --- interruption -------------------------------------------------------------------


class InterruptRequest:
    """SIGINT/SIGTERM while training: finish the current epoch, checkpoint, stop.

    Used as a context manager around ``model.fit``. The first signal sets
    :attr:`requested` (and says what happens); a second Ctrl-C aborts at once
    with ``KeyboardInterrupt``. Outside the main thread it does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: finishing this epoch and writing a checkpoint "
              "(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> InterruptRequest:
        raise_if_interrupted()  # a Ctrl-C dropped before training (see nnlab._signals) stops the run here
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class TrainingCheckpoint(keras.callbacks.Callback):
    """Write a full-state checkpoint every ``every`` epochs, on interruption and at the end.

    Args:
        run_dir: the run directory (checkpoints go to ``<run_dir>/checkpoints``).
        components: name -> :class:`Stateful` (model, callbacks...), captured together.
        every: checkpoint interval in epochs (config ``checkpoint_every``).
        interrupt: the :class:`InterruptRequest` to honour, if any.
        errors: the run's :class:`~nnlab.tracking.ErrorRecorder`; a failed save is
            recorded and training goes on.

    Example:
        >>> # TrainingCheckpoint(run_dir, {"model": ModelState(model)}, every=10)
    """

    def __init__(self, run_dir: str | os.PathLike, components: Mapping[str, Stateful], *, every: int = 10,
                 interrupt: InterruptRequest | None = None, errors: ErrorRecorder | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.components = dict(components)
        self.every = int(every)
        self.interrupt = interrupt
        self.errors = errors if errors is not None else ErrorRecorder()
        self.last_saved: int | None = None
        self.run_status: str | None = None
        self._epochs_done: int | None = None
        self._finite = False

    def _save(self, epochs_done: int) -> None:
        try:
            save_checkpoint(self.run_dir, epochs_done, self.components)
            self.last_saved = epochs_done
        except OSError as exc:
            self.errors.record("training checkpoint", exc)

    def on_train_begin(self, logs=None):
        for component in self.components.values():
            if hasattr(component, "apply_pending"):
                component.apply_pending()

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        self._epochs_done = done
        self._finite = bool(np.isfinite((logs or {}).get("loss", 0.0)))
        interrupted = self.interrupt is not None and self.interrupt.requested is not None
        if (done % self.every == 0 or interrupted) and self._finite:
            self._save(done)
        if interrupted:
            self.model.stop_training = True
            self.run_status = RunStatus.INTERRUPTED

    def on_train_end(self, logs=None):
        # The final state, unless just saved or diverged (a NaN model is no place to resume from).
        done = self._epochs_done
        if done and done != self.last_saved and self._finite:
            self._save(done)
