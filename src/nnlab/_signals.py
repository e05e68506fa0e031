"""Ctrl-C that is never lost between two runs.

Python turns SIGINT into ``KeyboardInterrupt`` at the next bytecode the main
thread runs. When that bytecode is in a garbage-collector callback, a weakref
callback or a ``__del__`` -- a full collection between two runs of a search
runs many of them -- the exception is printed as "Exception ignored in ..." and
dropped, and the search would go on as if no key had been pressed.

While :func:`interrupts_latched` is active, SIGINT is recorded, and raised at
once unless a garbage collection is running (its callbacks would drop it and
print a traceback); :func:`raise_if_interrupted`, called where a run starts,
after a collection and between runs, raises a recorded one that was deferred
or dropped.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["interrupts_latched", "raise_if_interrupted"]

_state = {"sigint": False, "collecting": False}


def _track_collection(phase: str, info: Any) -> None:
    _state["collecting"] = phase == "start"


def _latch(signum: int, frame: Any) -> None:
    _state["sigint"] = True
    if not _state["collecting"]:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_latched() -> Iterator[None]:
    """Record every Ctrl-C while the block runs (main thread, Python's own SIGINT handler only).

    A handler someone else installed is left alone, as is any thread but the
    main one; nested blocks share the outer one's record.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _state.update(sigint=False, collecting=False)
    gc.callbacks.append(_track_collection)
    signal.signal(signal.SIGINT, _latch)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        gc.callbacks.remove(_track_collection)
        _state.update(sigint=False, collecting=False)


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` for a Ctrl-C recorded since the last one raised here (main thread only:
    the signal is the main thread's, as Python's own ``KeyboardInterrupt`` is)."""
    if _state["sigint"] and threading.current_thread() is threading.main_thread():
        _state["sigint"] = False
        raise KeyboardInterrupt
