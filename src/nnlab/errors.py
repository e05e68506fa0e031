"""Exceptions raised by nnlab.

Every error a user can cause (a bad configuration value, a malformed CSV, a
missing artifact) is one of these, with a message that names the
file/key/column, the bad value and what is allowed. The command line prints
the message without a traceback and exits with status 2.

The failures of optional components (a file that could not be written, a
failing hook) are not raised: :class:`ErrorRecorder` keeps them for the run's
error summary.
"""

from __future__ import annotations

import errno
import traceback
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

#: The errno values of a full disk or user quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class NnlabError(Exception):
    """Base class of the errors nnlab raises for bad user input."""


class ConfigError(NnlabError, ValueError):
    """A configuration file, preset or override is invalid."""


class ArtifactError(NnlabError):
    """A run, run directory or artifact the analysis was asked for does not exist or is unusable."""


class DataValidationError(NnlabError, ValueError):
    """Particle data is missing, unreadable or fails validation.

    Args:
        message: the whole report, one problem per line.
        problems: the individual problems, each a short sentence.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


def is_disk_full(error: BaseException) -> bool:
    """True for an ``OSError`` saying the disk (or the user's quota) is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


class ErrorRecorder:
    """Collects the failures of optional components of one run.

    Each :meth:`record` issues a ``RuntimeWarning`` (so the user sees it) and
    keeps an entry for the run's error summary. A full disk (``ENOSPC`` or
    ``EDQUOT``, from any writer) is not a degradation: the first one is kept in
    :attr:`disk_full` and every function in :attr:`on_disk_full` is called with
    its entry (the training pipeline stops training there); later ones are
    recorded without another warning.

    Example:
        >>> errors = ErrorRecorder()
        >>> errors.record("checkpoint", OSError("disk full"), warn=False)
        >>> errors.summary()["error_count"]
        1
    """

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.disk_full: dict[str, Any] | None = None
        self.on_disk_full: list[Callable[[dict[str, Any]], None]] = []

    def record(self, component: str, error: BaseException | str, *, warn: bool = True) -> None:
        """Record that ``component`` failed with ``error`` (and warn about it)."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "component": component,
            "message": message,
        }
        if isinstance(error, BaseException) and error.__traceback__ is not None:
            entry["where"] = traceback.format_tb(error.__traceback__)[-1].strip()
        self.entries.append(entry)
        if isinstance(error, BaseException) and is_disk_full(error):
            entry.update(disk_full=True, path=error.filename, reason=error.strerror)
            if self.disk_full is not None:
                return  # one warning for a full disk, not one per writer
            self.disk_full = entry
            if warn:
                warnings.warn(f"{component}: {message} (disk full: training stops)", RuntimeWarning, stacklevel=2)
            for listener in list(self.on_disk_full):
                listener(entry)
            return
        if warn:
            warnings.warn(f"{component}: {message} (training continues)", RuntimeWarning, stacklevel=2)

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self) -> dict[str, Any]:
        """``error_count``, counts ``by_component``, the ``errors`` themselves and
        ``disk_full`` (the first disk-full entry, or None)."""
        by_component: dict[str, int] = {}
        for entry in self.entries:
            by_component[entry["component"]] = by_component.get(entry["component"], 0) + 1
        return {"error_count": len(self.entries), "by_component": by_component, "errors": list(self.entries),
                "disk_full": self.disk_full}
