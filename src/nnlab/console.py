"""Training progress on the console: a live bar on a terminal, short lines otherwise.

TensorFlow's start-up lines are handled by :mod:`nnlab._tflog` (it imports
nothing heavy, so entry points can call it before TensorFlow loads).
"""

from __future__ import annotations

import atexit
import math
import sys
import time
from typing import Any, TextIO

import keras

__all__ = ["ConsoleProgress"]

MAX_LINE = 160
_CONSTRAINT_APPLIED = "constraint/applied"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _number(value: float | None, spec: str) -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if math.isfinite(value) else str(value)  # nan, inf: the run diverged


class ConsoleProgress(keras.callbacks.Callback):
    """Show training progress: one live display on a terminal, a short line every ~10 % of the epochs otherwise.

    Each update gives the epoch (k/N), the estimated time left, the training
    loss, the validation R², the learning rate and whether the weight
    constraints were applied (``constraint/applied`` in the epoch logs, written
    by :class:`~nnlab.constraints.WeightConstraintCallback` placed before this
    callback). On a terminal the display is a ``rich`` progress bar, updated
    in place; anywhere else (a log file, CI, ``| tee``) it prints one line when
    another tenth of the epochs is done, and one for the last epoch, each at
    most 160 characters. Train with ``verbose=0`` so Keras' own progress bar
    does not print as well. The per-epoch metrics themselves belong in a CSV
    (:class:`~nnlab.tracking.PerformanceTracker`), not here.

    Args:
        console: a ``rich.console.Console`` to draw on. Default: standard
            output, live only when it is a terminal. A console given here is
            live when it is interactive (e.g. ``force_terminal=True``).
        lines: how many progress lines, spread evenly over the epochs, when the
            output is not a terminal (plus the last epoch's).

    Example:

    ```python
    progress = ConsoleProgress()
    model.fit(X_train, y_train, validation_data=(X_val, y_val), epochs=50,
              callbacks=[constraint_callback, progress], verbose=0)
    ```
    """

    def __init__(self, console: Any = None, *, lines: int = 10) -> None:
        super().__init__()
        if int(lines) < 1:
            raise ValueError(f"lines must be >= 1, got {lines}")
        self.console = console
        self.lines = int(lines)
        self._progress: Any = None
        self._task: Any = None
        self._out: TextIO | None = None
        self._fixed_width = 0
        self._reset()

    def _reset(self) -> None:
        self.epochs = 0
        self._first_epoch: int | None = None
        self._last_epoch: int | None = None
        self._last_printed: int | None = None
        self._started = 0.0
        self._applied = 0  # constraint applications in the whole run
        self._applied_since_line = 0
        self._last_applied_epoch: int | None = None
        self._text = ""

    # -- lifecycle -----------------------------------------------------------
    def on_train_begin(self, logs=None) -> None:
        self._reset()
        self.epochs = int(self.params.get("epochs") or 0)
        self._started = time.perf_counter()
        console = self.console
        if console is None:
            from rich.console import Console

            live = sys.stdout.isatty()
            console = Console() if live else None
        else:
            live = bool(console.is_interactive)
        if live:
            self._start_live(console)
        else:
            self._out = console.file if console is not None else None

    def on_epoch_begin(self, epoch, logs=None) -> None:
        if self._first_epoch is None:
            self._first_epoch = int(epoch)  # > 0 when resuming
            self._started = time.perf_counter()
            if self._progress is not None:  # the ETA counts from here, not from epoch 0
                self._progress.reset(self._task, completed=epoch)

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        epoch = int(epoch)
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._last_epoch = epoch
        applied = float(logs.get(_CONSTRAINT_APPLIED, 0.0) or 0.0) >= 0.5
        if applied:
            self._applied += 1
            self._applied_since_line += 1
            self._last_applied_epoch = epoch + 1
        loss = _float(logs.get("loss"))
        r2 = _float(logs.get("val_r2_score", logs.get("val_r2")))
        lr = _float(logs.get("learning_rate")) if "learning_rate" in logs else self._learning_rate()
        metrics = f"loss {_number(loss, '.4g')}  val R² {_number(r2, '.4f')}  lr {_number(lr, '.2e')}"
        if self._progress is not None:
            mark = ""
            if applied:
                mark = f"  ◆ constraints applied ({self._applied}x)"
            elif self._applied:
                mark = f"  constraints {self._applied}x (epoch {self._last_applied_epoch})"
            text = metrics + mark
            room = max(10, self._progress.console.width - self._fixed_width)
            if len(text) > room:  # a narrow terminal: shorten the metrics, keep the bar on one line
                text = text[: room - 1] + "…"
            self._progress.update(self._task, completed=epoch + 1, metrics=text)
            return
        self._text = metrics
        if self._due(epoch + 1):
            self._print_line(epoch)

    def on_train_end(self, logs=None) -> None:
        if self._progress is not None:
            self._stop_live()
            return
        if self._last_epoch is not None and self._last_printed != self._last_epoch:
            self._print_line(self._last_epoch, final=True)  # stopped early: the last epoch still gets its line

    # -- terminal ------------------------------------------------------------
    def _start_live(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        width = len(str(self.epochs))
        bar = 20 if console.width >= 120 else 10
        self._fixed_width = (7 + 2 * width) + bar + len("eta") + len("00:00") + 4  # + the 4 column gaps
        self._progress = Progress(
            TextColumn(f"epoch {{task.completed:>{width}.0f}}/{{task.total:.0f}}"),
            BarColumn(bar_width=bar),
            TextColumn("eta"),
            TimeRemainingColumn(compact=True),
            TextColumn("{task.fields[metrics]}", markup=False, table_column=Column(no_wrap=True)),
            console=console,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task("training", total=max(self.epochs, 1), metrics="")
        self._progress.start()
        atexit.register(self._stop_live)  # an exception skips on_train_end: still restore the terminal

    def _stop_live(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        atexit.unregister(self._stop_live)

    # -- lines ---------------------------------------------------------------
    def _due(self, done: int) -> bool:
        """True when epoch ``done`` (1-based) crosses into another tenth (``lines``-th) of the run."""
        total = max(self.epochs, 1)
        return done >= total or done * self.lines // total > (done - 1) * self.lines // total

    def _print_line(self, epoch: int, *, final: bool = False) -> None:
        done = epoch + 1
        total = max(self.epochs, done)
        parts = [f"epoch {done:>{len(str(total))}}/{total}", self._text]
        if self._applied_since_line:
            parts.append(f"constraints applied {self._applied_since_line}x (last epoch {self._last_applied_epoch})")
        ran = done - (self._first_epoch or 0)
        if final or done >= total:
            parts.append(f"took {_duration(time.perf_counter() - self._started)}")
        elif ran > 0:
            per_epoch = (time.perf_counter() - self._started) / ran
            parts.append(f"eta {_duration(per_epoch * (total - done))}")
        line = "  ".join(parts)
        if len(line) > MAX_LINE:
            line = line[: MAX_LINE - 1] + "…"
        print(line, file=self._out or sys.stdout, flush=True)
        self._last_printed = epoch
        self._applied_since_line = 0

    def _learning_rate(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None) if self.model is not None else None
        if optimizer is None:
            return None
        try:
            return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        except (TypeError, ValueError, AttributeError):
            return None


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
