"""TensorFlow start-up without its C++ log lines.

TensorFlow writes ``WARNING: All log messages before absl::InitializeLog()``,
``oneDNN custom operations are on``, ``Could not find cuda drivers`` and, at the
first device use, ``failed call to cuInit`` straight to file descriptor 2 from
C++, before its logging is configured: no environment variable silences them
(``TF_CPP_MIN_LOG_LEVEL`` only acts on what comes after). So the first
``import tensorflow`` and the first device listing run with descriptor 2 pointed
at a temporary file. Afterwards descriptor 2 is restored, and whatever else was
written in that window (a Python warning, an unknown C++ error) is replayed to
stderr; only the known start-up lines are dropped. If the import fails, the
captured text is attached to the exception.

This module imports nothing heavy: :func:`quiet_tensorflow_import` can run before
anything else, and TensorFlow is imported only by whoever first needs it.

``NNLAB_TF_LOG=1``, or ``TF_CPP_MIN_LOG_LEVEL`` set to 0 or 1 (asking for more
than nnlab's default of 2), leaves TensorFlow's output alone.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["import_tensorflow_quietly", "quiet_c_logs", "quiet_tensorflow_import", "tensorflow_log_wanted"]

# nnlab's default: TensorFlow's C++ INFO and WARNING lines are off, errors stay.
DEFAULT_TF_LOG_LEVEL = "2"

_START_UP_LINES = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl INFO/WARNING lines
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*(cuInit|Unable to register|already been registered"
    r"|oneDNN supports DT_INT8 only on platforms with AVX-512)"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.)"
)


def tensorflow_log_wanted() -> bool:
    """True when the user asked for TensorFlow's own start-up output.

    ``NNLAB_TF_LOG=1``, or ``TF_CPP_MIN_LOG_LEVEL`` 0 or 1 in the environment.
    """
    if os.environ.get("NNLAB_TF_LOG", "").strip() not in ("", "0"):
        return True
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL).strip() in ("0", "1")


@contextlib.contextmanager
def _descriptor_2_captured() -> Iterator[list[str]]:
    """Point fd 2 at a temporary file; on exit restore it and yield-list the captured text."""
    captured: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                sink.seek(0)
                captured.append(sink.read().decode("utf-8", "replace"))
    finally:
        os.close(saved)


def _replay(text: str) -> None:
    """Write what the silenced window caught to stderr, minus TensorFlow's start-up lines."""
    kept = [line for line in text.splitlines(keepends=True) if not _START_UP_LINES.match(line)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


@contextlib.contextmanager
def quiet_c_logs() -> Iterator[None]:
    """Run a block that makes TensorFlow print a known C++ notice (oneDNN's int8 fallback, printed as an
    error at the first int8 matmul) with fd 2 captured; everything else it wrote is replayed to stderr."""
    if tensorflow_log_wanted():
        yield
        return
    captured: list[str] = []
    try:
        with _descriptor_2_captured() as captured:
            yield
    finally:  # fd 2 is restored by now, also when the block raised
        _replay("".join(captured))


def _run_silenced(load: Any) -> Any:
    """Run ``load()`` (which imports TensorFlow) with fd 2 captured, then list devices."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL)
    with _descriptor_2_captured() as captured:
        try:
            result = load()
            # cuInit runs (and complains on machines without a GPU driver) at the first device use.
            sys.modules["tensorflow"].config.list_physical_devices()
        except BaseException as exc:
            error = exc
        else:
            error = None
    text = "".join(captured)
    if error is not None:
        if text.strip():
            if hasattr(error, "add_note"):  # Python 3.11+: shown with the traceback
                error.add_note(f"TensorFlow's output while importing:\n{text.rstrip()}")
            else:
                sys.stderr.write(text)
        raise error
    _replay(text)
    return result


def import_tensorflow_quietly() -> Any:
    """Import TensorFlow now, without its C++ start-up lines; returns the module.

    Call it before anything imports TensorFlow (the notebook's first cell, a
    worker process). Once TensorFlow is imported, or when the user asked for its
    output (:func:`tensorflow_log_wanted`), this is a plain ``import tensorflow``.

    Example:
        >>> from nnlab._tflog import import_tensorflow_quietly
        >>> tf = import_tensorflow_quietly()
    """
    _uninstall()
    if "tensorflow" in sys.modules or tensorflow_log_wanted():
        import tensorflow

        return tensorflow
    return _run_silenced(lambda: importlib.import_module("tensorflow"))


class _QuietLoader(importlib.abc.Loader):
    """Loads TensorFlow's own package spec inside the silenced window."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Hand the spec back to the real loader first: reloads and resources see it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _run_silenced(lambda: self._loader.exec_module(module))


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Routes the first ``import tensorflow`` (direct, or through keras) to :class:`_QuietLoader`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        _uninstall()  # one shot; the lookup below must not come back here
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or tensorflow_log_wanted() or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


def _uninstall() -> None:
    for finder in [f for f in sys.meta_path if isinstance(f, _QuietFinder)]:
        sys.meta_path.remove(finder)


def quiet_tensorflow_import() -> None:
    """Make this process's first ``import tensorflow``, whenever it comes, quiet.

    Cheap (TensorFlow is not imported here): entry points call it first, so a
    command that never needs TensorFlow never pays for it, and one that does gets
    no C++ start-up lines. No effect once TensorFlow is imported.

    Example:
        >>> from nnlab._tflog import quiet_tensorflow_import
        >>> quiet_tensorflow_import()
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL)
    _uninstall()
    sys.meta_path.insert(0, _QuietFinder())
