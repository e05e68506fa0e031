"""Safe file writes shared by the data, tracking and training modules.

Everything a run produces is written to a temporary file in the destination
directory and renamed over the target, so a crash never leaves a half-written
artifact; appends to shared logs take an exclusive lock so that concurrent
processes keep every row intact. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False) -> Path:
    """Write through a temporary file in the same directory, then rename over ``path``.

    Args:
        path: the destination file (its directory must exist).
        write: called with the open temporary file.
        binary: open the temporary file in binary mode.

    Returns:
        The destination path.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; artifacts are meant to be shared like any other file.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def probe_writable(directory: str | os.PathLike) -> None:
    """Raise ``OSError`` unless ``directory`` could be created and written; writes nothing.

    The nearest existing directory on the path is probed with a temporary file
    that is removed at once.
    """
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(existing))
    with tempfile.TemporaryFile(dir=existing):
        pass


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
    """Hold an exclusive advisory lock on ``<path>.lock`` (same machine, any process)."""
    lock_path = Path(str(path) + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All rows of a CSV file as dicts ([] if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv_rows(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Atomically replace ``path`` with a CSV of ``rows`` (missing values left empty)."""

    def write(fh: IO) -> None:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

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
