"""``RunStatus``: how a run stands or ended, as recorded in run_status.json and the configuration log."""

from __future__ import annotations

import enum


class RunStatus(str, enum.Enum):
    """A run's status. A ``str`` subclass: it compares equal to, and is written as, its value.

    Example:
        >>> RunStatus("failed: disk full").failed
        True
        >>> RunStatus.COMPLETED == "completed"
        True
    """

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"
    PRUNED = "pruned"
    FAILED = "failed"
    DISK_FULL = "failed: disk full"

    def __str__(self) -> str:
        return self.value

    @property
    def failed(self) -> bool:
        """``failed`` or ``failed: disk full``."""
        return self in (RunStatus.FAILED, RunStatus.DISK_FULL)

    @property
    def resumable(self) -> bool:
        """A resume may continue it: interrupted, or stopped by a full disk."""
        return self in (RunStatus.INTERRUPTED, RunStatus.DISK_FULL)

    @property
    def finished(self) -> bool:
        """Trained to its end: completed or diverged (a study counts both as done)."""
        return self in (RunStatus.COMPLETED, RunStatus.DIVERGED)

    @classmethod
    def parse(cls, value: object) -> RunStatus | None:
        """The status named by ``value`` (a recorded string); None for anything else."""
        try:
            return cls(str(value))
        except ValueError:
            return None
