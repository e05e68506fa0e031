"""Performance tracking during ``model.fit`` and the record of what went wrong.

* :class:`ErrorRecorder` -- the error summary of a run: optional parts that failed
  (a file that could not be written, a failing hook) are recorded here with a
  warning, and training goes on -- except for a full disk, which ends the run
  (:attr:`ErrorRecorder.disk_full`): every later write would fail too. Defined in
  :mod:`nnlab.errors` (the model needs it too), re-exported here.
* :class:`CSVRowWriter` -- appends rows to a CSV and flushes each one as it is
  written (like Keras' ``CSVLogger``), degrading to a warning if the file
  cannot be written; a row that fails half-way is taken back, so the file
  always ends with a whole row. Text cells are neutralised against
  spreadsheet formulas.
* :class:`PerformanceTracker` -- a Keras callback writing one row per epoch
  (time, memory, losses, R², learning rate, loss weights, constraint statistics)
  and computing the run's summary.
* :class:`RowsCallbackWriter` -- writes the per-epoch rows another callback
  keeps (e.g. the adaptive loss history) as they appear.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import psutil

from nnlab._files import neutralise_csv_value, with_filename
from nnlab.constraints.step import STEP_LOG_KEY
from nnlab.errors import ErrorRecorder

__all__ = [
    "TRACKER_COLUMNS",
    "ErrorRecorder",
    "CSVRowWriter",
    "PerformanceTracker",
    "RowsCallbackWriter",
    "process_memory_mb",
]

TRACKER_COLUMNS = (
    "epoch",
    "timestamp",
    "epoch_time",
    "memory_mb",
    "train_loss",
    "train_mse",
    "train_mae",
    "val_loss",
    "val_mse",
    "val_mae",
    "val_rmse",
    "r2_score",
    "learning_rate",
    "mse_weight",
    "mae_weight",
)
CONSTRAINT_LOG_PREFIX = "constraint/"
_APPLIED = CONSTRAINT_LOG_PREFIX + "applied"
# Constraint keys with a value every epoch: whether the per-epoch constraints ran, the per-step schedule's bits.
_EVERY_EPOCH = (_APPLIED, STEP_LOG_KEY)


def process_memory_mb() -> float:
    """Resident set size of this process in MiB."""
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


class CSVRowWriter:
    """Append rows to a CSV file, flushing each one as it is written.

    The header is written with the first row (the columns are fixed then; keys
    outside them are ignored, missing ones left empty). When ``append`` is true
    and the file already has the same header, rows are added after the existing
    ones. Write failures are recorded in ``errors`` and further rows are still
    attempted, so a transient problem loses only the rows it hit; a row that
    could only be written in part (a full disk) is cut off again, so the rows
    before it still parse. Text cells are neutralised against spreadsheet
    formulas (:func:`nnlab._files.neutralise_csv_value`).

    Args:
        path: the CSV file.
        columns: column order; ``None`` takes the first row's keys.
        errors: where failures are recorded (a new recorder if None).
        component: the name failures are recorded under.
        append: continue an existing file instead of starting a new one.

    Example:
        >>> writer = CSVRowWriter("/tmp/example.csv", ["epoch", "loss"])
        >>> writer.write({"epoch": 1, "loss": 0.5})
    """

    def __init__(
        self,
        path: str | os.PathLike,
        columns: Sequence[str] | None = None,
        *,
        errors: ErrorRecorder | None = None,
        component: str | None = None,
        append: bool = False,
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns) if columns is not None else None
        self.errors = errors if errors is not None else ErrorRecorder()
        self.component = component or self.path.name
        self._header_written = append and self.path.exists() and self.path.stat().st_size > 0
        if self._header_written and self.columns is None:
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.columns = next(csv.reader(fh), None)
        if not append and self.path.exists():
            self.path.unlink()
        self.rows_written = 0

    def write(self, row: Mapping[str, Any]) -> bool:
        """Append one row; returns False (and records why) if it could not be written."""
        if self.columns is None:
            self.columns = list(row)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns, extrasaction="ignore")
        if not self._header_written:
            writer.writeheader()
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
        try:
            _append_whole(self.path, text.getvalue().encode("utf-8"))
        except OSError as exc:
            self.errors.record(self.component, with_filename(exc, self.path))
            return False
        self._header_written = True
        self.rows_written += 1
        return True


def _append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` unbuffered; if it fails part-way, cut the file back."""
    with open(path, "ab", buffering=0) as fh:
        start = fh.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[fh.write(view):]
        except OSError:
            with contextlib.suppress(OSError):
                fh.truncate(start)
            raise


def _csv_value(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return neutralise_csv_value(value)


def _float(logs: Mapping[str, Any], *keys: str) -> float:
    for key in keys:
        if key in logs and logs[key] is not None:
            return float(logs[key])
    return float("nan")


class PerformanceTracker(keras.callbacks.Callback):
    """Record per-epoch time, memory, metrics and constraint statistics.

    One row per epoch (columns :data:`TRACKER_COLUMNS`, then ``physics_loss``,
    ``val_physics_loss`` and ``physics_loss_weight`` when the physics term is on, then every
    ``constraint/...`` statistic found in the logs; on an epoch without a constraint
    application, ``constraint/applied`` is 0 and the statistics are empty cells)
    is kept in :attr:`rows` and,
    when ``csv_path`` is given, written and flushed immediately. Place it after
    the callbacks that add to the logs (constraints, adaptive loss) so their
    values are seen. A failure inside the tracker is recorded in ``errors``
    and never stops training.

    Args:
        csv_path: where to write the rows (``training_results.csv``); None keeps
            them in memory only.
        errors: the run's :class:`ErrorRecorder`.
        append: continue an existing CSV (resuming a run).
        initial_rows: rows of earlier epochs (resuming a run) so the summary
            covers the whole run.

    Example:
        >>> tracker = PerformanceTracker("training_results.csv")
        >>> # model.fit(..., callbacks=[constraint_cb, loss_cb, tracker])
        >>> # tracker.summary()["best_r2"]
    """

    def __init__(
        self,
        csv_path: str | os.PathLike | None = None,
        *,
        errors: ErrorRecorder | None = None,
        append: bool = False,
        initial_rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.errors = errors if errors is not None else ErrorRecorder()
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self._append = append
        self._writer: CSVRowWriter | None = None
        self.rows: list[dict[str, Any]] = [dict(r) for r in initial_rows]
        self.peak_memory_mb = max((float(r.get("memory_mb", 0) or 0) for r in self.rows), default=0.0)
        self._train_start = 0.0
        self._epoch_start = 0.0
        self._epoch_lr = float("nan")
        self.training_time = 0.0

    # -- Keras lifecycle ---------------------------------------------------
    def on_train_begin(self, logs=None):
        self._train_start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_lr = self._learning_rate()

    def on_epoch_end(self, epoch, logs=None):
        epoch_time = time.perf_counter() - self._epoch_start
        try:
            row = self._row(epoch, epoch_time, dict(logs or {}))
        except Exception as exc:  # a tracking bug must not cost the training run
            self.errors.record("performance_tracker", exc)
            return
        self.rows.append(row)
        if self.csv_path is not None:
            if self._writer is None:
                self._writer = CSVRowWriter(
                    self.csv_path, list(row), errors=self.errors, component=self.csv_path.name, append=self._append
                )
            self._writer.write(row)

    def on_train_end(self, logs=None):
        self.training_time += time.perf_counter() - self._train_start

    # -- rows and summary --------------------------------------------------
    def _learning_rate(self) -> float:
        optimizer = getattr(self.model, "optimizer", None) if self.model is not None else None
        if optimizer is None:
            return float("nan")
        try:
            return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        except (TypeError, ValueError, AttributeError):
            return float("nan")

    def _row(self, epoch: int, epoch_time: float, logs: dict[str, Any]) -> dict[str, Any]:
        memory = process_memory_mb()
        self.peak_memory_mb = max(self.peak_memory_mb, memory)
        val_mse = _float(logs, "val_mse", "val_mean_squared_error")
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "epoch_time": epoch_time,
            "memory_mb": memory,
            "train_loss": _float(logs, "loss"),
            "train_mse": _float(logs, "mse", "mean_squared_error"),
            "train_mae": _float(logs, "mae", "mean_absolute_error"),
            "val_loss": _float(logs, "val_loss"),
            "val_mse": val_mse,
            "val_mae": _float(logs, "val_mae", "val_mean_absolute_error"),
            "val_rmse": math.sqrt(val_mse) if val_mse >= 0 else float("nan"),
            "r2_score": _float(logs, "val_r2_score", "val_r2"),
            "learning_rate": self._epoch_lr,
            "mse_weight": _float(logs, "mse_weight"),
            "mae_weight": _float(logs, "mae_weight"),
        }
        if "physics_loss" in logs:  # physics_loss_weight > 0: the unweighted physics term
            row["physics_loss"] = _float(logs, "physics_loss")
            row["val_physics_loss"] = _float(logs, "val_physics_loss")
            row["physics_loss_weight"] = _float(logs, "physics_loss_weight")
        # A statistic of the per-epoch constraints on an epoch they did not run is an empty cell, not 0
        # ("ran and changed nothing"); the applied flag and the per-step schedule's value are kept.
        ran = float(logs.get(_APPLIED, 1.0)) > 0
        for key in sorted(k for k in logs if k.startswith(CONSTRAINT_LOG_PREFIX)):
            row[key] = float(logs[key]) if ran or key in _EVERY_EPOCH else None
        return row

    def summary(self) -> dict[str, Any]:
        """The run's training summary (see the README for every field)."""
        try:
            current_memory = process_memory_mb()
        except Exception as exc:  # the summary must survive a broken probe, like the rows do
            self.errors.record("performance_tracker", exc)
            current_memory = None
        r2 = np.array([float(r.get("r2_score", "nan")) for r in self.rows], dtype=float)
        times = np.array([float(r.get("epoch_time", "nan")) for r in self.rows], dtype=float)
        out: dict[str, Any] = {
            "total_epochs": len(self.rows),
            "current_r2": float(r2[-1]) if len(r2) and np.isfinite(r2[-1]) else None,
            "best_r2": None,
            "best_epoch": None,
            "greatest_r2_improvement": None,
            "greatest_r2_improvement_epoch": None,
            "avg_epoch_time": float(np.nanmean(times)) if np.isfinite(times).any() else None,
            "total_training_time": float(np.nansum(times)) if len(times) else 0.0,
            "current_memory_mb": current_memory,
            "peak_memory_mb": max(self.peak_memory_mb, current_memory or 0.0),
            "constraint_applications": int(
                sum(float(r.get(CONSTRAINT_LOG_PREFIX + "applied", 0) or 0) > 0 for r in self.rows)
            ),
            "error_count": len(self.errors),
        }
        if np.isfinite(r2).any():
            best = int(np.nanargmax(r2))
            out["best_r2"], out["best_epoch"] = float(r2[best]), int(self.rows[best]["epoch"])
        if len(r2) > 1 and np.isfinite(np.diff(r2)).any():
            gains = np.diff(r2)
            i = int(np.nanargmax(gains))
            out["greatest_r2_improvement"] = float(gains[i])
            out["greatest_r2_improvement_epoch"] = int(self.rows[i + 1]["epoch"])
        return out


class RowsCallbackWriter(keras.callbacks.Callback):
    """Write the rows another callback appends to a list, one epoch at a time.

    Args:
        path: the CSV file (e.g. ``loss_history.csv``).
        rows: a function returning the other callback's current row list.
        columns: the CSV columns.
        errors: the run's :class:`ErrorRecorder`.
        append: continue an existing file (resuming a run).

    Example:
        >>> # RowsCallbackWriter("loss_history.csv", lambda: loss_cb.history, HISTORY_COLUMNS)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        rows: Callable[[], Sequence[Mapping[str, Any]]],
        columns: Sequence[str],
        *,
        errors: ErrorRecorder | None = None,
        append: bool = False,
    ) -> None:
        super().__init__()
        self._rows = rows
        self._done = len(rows()) if append else 0
        self._writer = CSVRowWriter(path, columns, errors=errors, append=append)

    def skip_existing(self) -> None:
        """Treat the rows the source holds now as written (after restoring a checkpoint)."""
        self._done = len(self._rows())

    def on_epoch_end(self, epoch, logs=None):
        rows = self._rows()
        for row in rows[self._done :]:
            self._writer.write(row)
        self._done = len(rows)
