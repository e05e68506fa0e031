"""Safe file writes shared by the data, tracking and training modules.

Everything a run produces is written to a temporary file in the destination
directory and renamed over the target, so a crash never leaves a half-written
artifact; appends to shared logs take an exclusive lock so that concurrent
processes keep every row intact. No TensorFlow here.

* A symlinked destination (a shared ``configuration_log.csv``) stays a link:
  the temporary file is made next to the link's final target and renamed over
  the target.
* Temporary files carry the writer's host and pid (``.<name>.<host>-p<pid>.XXXX.tmp``);
  :func:`clean_orphan_temp_files` removes those whose writer is dead.
* A full disk (``ENOSPC``/``EDQUOT``) is reported as an ``OSError`` naming the
  destination (:func:`is_disk_full` recognises it).
* Strings written to CSV cannot start a spreadsheet formula
  (:func:`neutralise_csv_value`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

# A full disk is recognised where the run's error record needs it; re-exported here for the writers.
from nnlab.errors import DISK_FULL_ERRNOS, is_disk_full  # noqa: F401


def with_filename(error: OSError, path: str | os.PathLike) -> OSError:
    """``error`` with ``path`` as its file name; a disk-full error is reduced to the plain
    ``[Errno 28] No space left on device: 'path'`` (HDF5's own message runs to lines)."""
    if is_disk_full(error):
        plain = OSError(error.errno, os.strerror(error.errno), os.fspath(path))
        plain.__traceback__ = error.__traceback__
        return plain
    if error.filename is None:
        error.filename = os.fspath(path)
    return error


def _host_tag() -> str:
    # Hostnames may hold '-' and '.', the separators of temporary names.
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def writer_tag() -> str:
    """``<host>-p<pid>``: who writes a temporary file (see :func:`clean_orphan_temp_files`)."""
    return f"{_host_tag()}-p{os.getpid()}"


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False) -> Path:
    """Write through a temporary file next to the target, then rename over it.

    When ``path`` is a symlink the write goes to its final target
    (``os.path.realpath``): the link stays a link and the file it points to is
    replaced. The temporary file is named ``.<name>.<host>-p<pid>.XXXX.tmp``.

    Args:
        path: the destination file (its directory must exist).
        write: called with the open temporary file.
        binary: open the temporary file in binary mode.

    Returns:
        The destination path (as given).

    Raises:
        OSError: the write failed; its ``filename`` is ``path``, and nothing
            was changed (the temporary file is removed).
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{writer_tag()}.", suffix=".tmp")
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; artifacts are meant to be shared like any other file.
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise with_filename(exc, path) from None
        raise
    return path


# Temporary names: atomic_write's ".<name>.<host>-p<pid>.XXXX.tmp", WeightCheckpoint's
# ".tmp-<host>-p<pid>-<name>"; the older ".tmp-<pid>-<name>" and ".<name>.XXXX.tmp" had
# no host (the first) or no owner at all (the second).
_TEMP_PATTERNS = (
    re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-p(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$"),
    re.compile(r"^\.tmp-(?P<host>[A-Za-z0-9_]+)-p(?P<pid>\d+)-.+$"),
    re.compile(r"^\.tmp-(?P<pid>\d+)-.+$"),
    re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$"),
)
STALE_TEMP_AGE_S = 24 * 3600


def _writer_alive(pid: int, written: float) -> bool:
    import psutil

    if pid == os.getpid():
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # A process started after the file was last written cannot be its writer: the pid was reused.
        return process.create_time() <= written + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # e.g. AccessDenied: someone's live process
        return True


def clean_orphan_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of killed writes from ``directory`` (not recursive).

    A temporary file of this host is removed when the process named in it is
    dead; one of another host (a shared directory) or without an owner (an
    older nnlab) only when it is older than a day, since its writer may still
    be at work. Files that cannot be removed are left; nothing is raised.

    Returns:
        The files removed.

    Example:
        >>> clean_orphan_temp_files("training_output")
        []
    """
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    host, now = _host_tag(), time.time()
    for entry in entries:
        match = next((m for m in (p.match(entry.name) for p in _TEMP_PATTERNS) if m), None)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            written = entry.stat(follow_symlinks=False).st_mtime
            groups = match.groupdict()
            own_host = groups.get("pid") is not None and groups.get("host", host) == host
            orphan = (not _writer_alive(int(groups["pid"]), written)) if own_host else now - written > STALE_TEMP_AGE_S
            if orphan:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def probe_writable(directory: str | os.PathLike) -> Path:
    """Raise ``OSError`` unless ``directory`` could be created and written; writes nothing.

    The nearest existing directory on the path is probed with a temporary file
    that is removed at once (permission bits do not stop root; read-only mounts
    and ``/proc`` only refuse at creation time). The ``OSError`` names that
    directory as its ``filename``.

    Returns:
        The existing directory that was probed.
    """
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(existing))
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(existing)) from None
    return existing


def special_file_kind(mode: int) -> str | None:
    """What an ``st_mode`` describes when it is not a regular file (``"a named pipe"``), else None.

    Opening a named pipe blocks and ``/dev/zero`` never ends: inputs are checked
    with this before they are opened.
    """
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with ``text``."""
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically replace ``path`` with ``data`` as indented JSON.

    The data is serialised first, so unserialisable data leaves nothing behind.
    """
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays, Paths: the usual non-JSON values in run summaries.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (same machine, any process).

    A symlinked ``path`` is locked at its final target, so every link to one
    shared log takes the same lock.
    """
    lock_path = Path(os.path.realpath(path) + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# OWASP "CSV injection": a cell starting with one of these is a formula to a spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$", re.IGNORECASE)


def neutralise_csv_value(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula.

    Text starting with ``= + - @``, a tab or a carriage return gets a leading
    single quote (as OWASP recommends); numbers -- also numbers as text, such
    as ``"-0.5"`` read back from a CSV -- are left alone, and so is text that
    already starts with the quote, so rewriting a file never adds a second one.

    Example:
        >>> neutralise_csv_value("=HYPERLINK(\"http://x\")"), neutralise_csv_value("-0.5"), neutralise_csv_value(-2)
        ('\'=HYPERLINK("http://x")', '-0.5', -2)
    """
    if not isinstance(value, str) and (value is None or isinstance(value, (bool, int, float))
                                       or hasattr(value, "dtype")):
        return value  # numbers (NumPy's too) are never formulas
    text = value if isinstance(value, str) else str(value)
    if text.startswith(FORMULA_PREFIXES) and not _NUMBER.match(text):
        return "'" + text
    return value


def restore_csv_value(text: str) -> str:
    """The value :func:`neutralise_csv_value` neutralised (``"'=x"`` -> ``"=x"``)."""
    if text.startswith("'") and text[1:].startswith(FORMULA_PREFIXES) and not _NUMBER.match(text[1:]):
        return text[1:]
    return text


def neutralised_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with every cell passed through :func:`neutralise_csv_value`."""
    return {key: neutralise_csv_value(value) for key, value in row.items()}


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All rows of a CSV file as dicts ([] if it does not exist).

    Cells neutralised against formulas on writing are read back as written by
    the program (``"'=x"`` -> ``"=x"``), so a read-modify-write keeps them as they were.
    """
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (restore_csv_value(v) if isinstance(v, str) else v) for k, v in row.items()}
                for row in csv.DictReader(fh)]


def write_csv_rows(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Atomically replace ``path`` with a CSV of ``rows`` (missing values left empty).

    Text cells are neutralised against spreadsheet formulas (:func:`neutralise_csv_value`).
    """

    def write(fh: IO) -> None:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(neutralised_row(row) for row in rows)

    return atomic_write(path, write)


def upsert_csv_row(path: str | os.PathLike, row: Mapping[str, Any], *, key: str) -> Path:
    """Insert ``row`` into a shared CSV, or replace the row with the same ``key``.

    The whole read-modify-rename happens under :func:`locked`, so concurrent
    processes never lose each other's rows; new columns are appended to the header.
    """
    path = Path(path)
    with locked(path):
        rows = read_csv_rows(path)
        columns = list(rows[0].keys()) if rows else []
        columns += [c for c in row if c not in columns]
        replaced = False
        for i, existing in enumerate(rows):
            if existing.get(key) == str(row[key]):
                rows[i] = dict(row)
                replaced = True
        if not replaced:
            rows.append(dict(row))
        return write_csv_rows(path, rows, columns)
