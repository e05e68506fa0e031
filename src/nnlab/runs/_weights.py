"""Weight-file checkpoints of a run: periodic, best and final ``.weights.h5``."""

from __future__ import annotations

import inspect
import io
import os
from pathlib import Path

import keras
import numpy as np

from nnlab._files import atomic_write, with_filename, writer_tag
from nnlab.errors import ErrorRecorder


def weights_file_bytes(model: keras.Model) -> bytes:
    """The ``.weights.h5`` file of ``model`` (what ``model.save_weights`` writes), built in memory.

    HDF5 then never writes to the disk itself: on a full disk it would print its
    error stack, leak open file ids and can crash the interpreter at exit. The
    bytes are written by :func:`nnlab._files.atomic_write`, which fails cleanly.
    """
    from keras.src.saving.saving_lib import H5IOStore, _save_state

    buffer = io.BytesIO()
    store = H5IOStore(buffer, mode="w")
    try:
        _save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    finally:
        store.close()
    return buffer.getvalue()


def _in_memory_supported() -> bool:
    try:
        from keras.src.saving.saving_lib import H5IOStore, _save_state  # noqa: F401
    except ImportError:  # a Keras whose private saving API moved: save through the public one
        return False
    return "path_or_io" in inspect.signature(H5IOStore).parameters


_IN_MEMORY = _in_memory_supported()


class WeightCheckpoint(keras.callbacks.Callback):
    """Save weights every ``every`` epochs, the best epoch's weights, and the final ones.

    Files (in ``directory``): ``epoch_NNNN.weights.h5``, ``best.weights.h5``,
    ``final.weights.h5``; each written to a temporary name and renamed, so a
    crash never leaves a truncated file. The best epoch (highest ``monitor``)
    is snapshotted in memory when it happens and written at the next periodic
    checkpoint and at the end -- a file per improvement would cost more than
    the epoch itself on small models. A failed save is recorded in ``errors``
    (with a warning) and training goes on -- unless the disk is full, which the
    recorder turns into the end of the run. The file is built in memory
    (:func:`weights_file_bytes`) and written by :func:`nnlab._files.atomic_write`,
    whose temporary name carries the writer's host and pid, so the next run can
    tell an orphan of a killed process from a write in progress
    (:func:`nnlab._files.clean_orphan_temp_files`).

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
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if _IN_MEMORY:
                payload = weights_file_bytes(self.model)
                atomic_write(target, lambda fh: fh.write(payload), binary=True)
            else:
                tmp = self.directory / f".tmp-{writer_tag()}-{name}"
                try:
                    self.model.save_weights(tmp)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
        except OSError as exc:
            self.errors.record("checkpoint", with_filename(exc, target))
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

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The best epoch so far (and its weights if not yet on disk), for a training checkpoint."""
        arrays = {}
        if not self._best_written and self._best_weights is not None:
            arrays = {f"b{i:04d}": w for i, w in enumerate(self._best_weights)}
        best = self.best if np.isfinite(self.best) else None
        return {"best": best, "best_epoch": self.best_epoch}, arrays

    def set_state(self, meta, arrays) -> None:
        """Restore :meth:`get_state`'s output."""
        self.best = float(meta["best"]) if meta.get("best") is not None else -np.inf
        self.best_epoch = meta.get("best_epoch")
        if arrays:
            self._best_weights = [arrays[k] for k in sorted(arrays)]
            self._best_written = False

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

