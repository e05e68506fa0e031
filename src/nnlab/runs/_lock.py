"""One training process per run directory: an exclusive lock on ``<run_dir>/.lock``.

The lock is ``fcntl.flock`` on the file, held by the process that trains the run
(a fresh run or a resume) for the whole of training. The kernel releases it when
that process ends, however it ends, so a lock left by a killed process is simply
taken over. The file also names its owner (pid, host, since when), but only for
the message a refused process prints: whether a run is locked is decided by
``flock`` alone, never by the file's content. The file stays after training.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnlab.errors import ConfigError, ErrorRecorder, NnlabError

LOCK_NAME = ".lock"


class RunLockedError(NnlabError):
    """Another process holds the run directory's lock (it is training that run)."""


def _owner_text(path: Path, name: str) -> str:
    try:
        owner = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        owner = {}
    if not isinstance(owner, dict) or "pid" not in owner:
        # Taken a moment ago and not yet labelled, or labelled by hand.
        return f"run {name} is being trained by another process (lock {path})"
    return (f"run {name} is being trained by process {owner.get('pid')} on host {owner.get('hostname', '?')} "
            f"(lock {path})")


def locked_by(run_dir: str | os.PathLike) -> str | None:
    """Why ``run_dir`` cannot be trained now (a message naming the owner), or None if it is free.

    Writes nothing: a run without a lock file is free.
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            # A shared lock is enough to test: it conflicts only with the owner's exclusive one.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _owner_text(path, Path(run_dir).name)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock on a run directory, held while the run trains.

    Args:
        run_dir: the run directory; the lock file is ``<run_dir>/.lock``.

    Raises (from :meth:`acquire`):
        RunLockedError: another process holds it; the message names the pid, the
            host and the lock file.
        OSError: the file system cannot lock (some network file systems).

    Example:
        >>> # with RunLock(run_dir):  # refused while another process trains run_dir
        >>> #     ...train...
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, attempts: int = 10, wait_s: float = 0.05) -> RunLock:
        """Take the lock without waiting for its owner (a short retry covers a concurrent :func:`locked_by`)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for attempt in range(attempts):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == attempts - 1:
                        raise RunLockedError(_owner_text(self.path, self.run_dir.name)) from None
                    time.sleep(wait_s)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def label(self, **extra: Any) -> None:
        """Write the owner (this process) into the lock file, for other processes' messages."""
        if self._fd is None:
            return
        text = json.dumps({"pid": os.getpid(), "hostname": socket.gethostname(),
                           "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}) + "\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode("utf-8"), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        if self._fd is None:
            self.acquire()
            self.label()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def cannot_lock(exc: OSError) -> bool:
    """True when ``exc`` says the file system does not support locks (run unlocked, with a warning)."""
    return exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def lock_new_run(run_dir: str | os.PathLike, errors: ErrorRecorder) -> RunLock | None:
    """The lock of a fresh run directory (nobody else knows it yet); a file system that
    cannot lock costs the lock, not the run: a warning and an entry in ``errors``."""
    lock = RunLock(run_dir)
    try:
        lock.acquire()
        lock.label()
    except OSError as exc:
        lock.release()
        errors.record("run lock", exc)
        return None
    return lock


def lock_for_resume(run_dir: str | os.PathLike, errors: ErrorRecorder) -> RunLock | None:
    """The lock of a run to resume, not yet labelled (the caller labels it once it re-checked the run).

    Raises:
        RunLockedError: another process trains the run.
        ConfigError: the lock file cannot be created or locked.
    """
    lock = RunLock(run_dir)
    try:
        return lock.acquire()
    except OSError as exc:
        if not cannot_lock(exc):
            raise ConfigError(f"cannot lock run directory '{run_dir}': {exc.strerror or exc}") from None
        errors.record("run lock", exc)
        return None
