"""Where a study lives: the storage's specification, its checks, and opening it and the study.

Optuna (and SQLAlchemy) are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnlab._files import special_file_kind
from nnlab.errors import ConfigError

__all__ = [
    "HEARTBEAT_GRACE_S",
    "HEARTBEAT_INTERVAL_S",
    "JOURNAL_FILE",
    "SETTINGS_ATTR",
    "StorageSpec",
    "check_storage",
    "has_heartbeats",
    "open_storage",
    "open_study",
    "resolve_storage",
    "retry_callback",
    "storage_spec",
]

JOURNAL_FILE = "hpo_journal.log"
# RDB storages record a heartbeat per running trial; a trial whose heartbeat is
# older than the grace period (its process or machine died) is failed.
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120
RDB_DIALECTS = ("sqlite", "postgresql", "mysql")
# Opening a new database from several processes at once: tries after losing the race to create the tables.
SCHEMA_RACE_RETRIES = 3
SETTINGS_ATTR = "nnlab_settings"
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# The first line of a journal is the study's creation, well under this size.
JOURNAL_HEAD_BYTES = 1 << 16


@dataclass(frozen=True)
class StorageSpec:
    """Where a study lives: ``kind`` is ``journal`` (a file) or ``rdb`` (a database URL)."""

    kind: str
    location: str
    # Set for a per-process database (see per_process): which process's study it is.
    instance: str = ""
    # RDB storages: a running trial records a heartbeat every heartbeat_interval seconds; one whose
    # heartbeat is older than grace_period (its process or machine died) is failed by the other
    # workers and, up to `retries` times, run again with the same parameters.
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S
    grace_period: int = HEARTBEAT_GRACE_S
    retries: int = 0

    @property
    def label(self) -> str:
        """For messages and files: the path, or the URL without its password."""
        from nnlab._redact import redact_url_password

        label = redact_url_password(self.location)
        return f"{label} [{self.instance}]" if self.instance else label

    @property
    def sqlite_path(self) -> str | None:
        """The database file of a ``sqlite:///FILE`` URL; None for other storages and in-memory SQLite."""
        if self.kind != "rdb" or not self.location.split("://", 1)[0].lower().startswith("sqlite"):
            return None
        path, _, query = self.location.split("://", 1)[1].partition("?")
        path = path[1:]  # sqlite:///x.db -> x.db, sqlite:////abs/x.db -> /abs/x.db
        return None if path in ("", ":memory:") or "mode=memory" in query else path

    @property
    def per_process(self) -> bool:
        """An in-memory database (``sqlite://``, ``sqlite:///:memory:``): each process opens its own, empty."""
        return (self.kind == "rdb" and self.location.split("://", 1)[0].lower().startswith("sqlite")
                and self.sqlite_path is None)


def storage_spec(storage: str | None, output_dir: str | os.PathLike, *,
                 default: str | os.PathLike | None = None) -> StorageSpec:
    """Parse ``--storage``: None (the journal file ``default``), a file, or a URL.

    Args:
        storage: the option's value.
        output_dir: the search's output directory; without ``default`` the
            journal is ``<output_dir>/analysis/hpo_journal.log``.
        default: the journal file used when ``storage`` is None.

    Raises:
        ConfigError: for a URL whose database is not sqlite, postgresql or mysql.

    Example:
        >>> storage_spec(None, "out").location
        'out/analysis/hpo_journal.log'
        >>> storage_spec("postgresql://me:secret@db/hpo", "out").label
        'postgresql://me:***@db/hpo'
    """
    if storage is None:
        return StorageSpec("journal", str(default if default is not None
                                          else Path(output_dir) / "analysis" / JOURNAL_FILE))
    if "://" in storage:
        dialect = storage.split("://", 1)[0].split("+", 1)[0].lower()
        if dialect not in RDB_DIALECTS:
            raise ConfigError(f"--storage: unsupported database '{dialect}' in '{storage}'; use a journal FILE "
                              "or a URL starting sqlite:///, postgresql:// or mysql://")
        return StorageSpec("rdb", storage)
    return StorageSpec("journal", storage)


def check_storage(spec: StorageSpec) -> None:
    """Refuse a storage file that exists but is not an Optuna storage, before it is opened.

    Optuna would append journal lines to any file (a particle CSV, a SQLite
    database) or fail with a traceback on it. A journal's lines are JSON objects;
    a SQLite database starts with ``SQLite format 3``; an empty or absent file
    is a new storage.

    Raises:
        ConfigError: naming the file and what it is instead.
    """

    path = spec.location if spec.kind == "journal" else spec.sqlite_path
    if path is None:
        return
    what = "an Optuna journal file" if spec.kind == "journal" else "a SQLite database"
    try:
        info = os.stat(path)
        kind = special_file_kind(info.st_mode)
        head = b""
        if kind is None and info.st_size > 0:
            # O_NONBLOCK: a pipe swapped in after the stat must not block the read.
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
                head = fh.readline(JOURNAL_HEAD_BYTES)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"--storage: cannot use '{path}': {exc.strerror or exc}") from None
    if kind is not None:
        raise ConfigError(f"--storage: '{path}' is {kind}, not {what}")
    if not head:
        return  # empty: a new storage
    if spec.kind == "rdb":
        if not head.startswith(SQLITE_MAGIC):
            raise ConfigError(f"--storage: '{path}' is not a SQLite database (it does not start with "
                              "'SQLite format 3'); choose another --storage or move the file")
        return
    if head.startswith(SQLITE_MAGIC):
        raise ConfigError(f"--storage: '{path}' is a SQLite database, not an Optuna journal file; "
                          f"pass --storage sqlite:///{path}")
    try:
        first = json.loads(head)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        first = None
    if not (isinstance(first, dict) and "op_code" in first):
        raise ConfigError(f"--storage: '{path}' is not an Optuna journal file (a journal's lines are Optuna's "
                          "JSON records; its first line is not one); choose another --storage or move the file")


def resolve_storage(spec: StorageSpec, *, workers: int) -> StorageSpec:
    """``spec`` checked (see :func:`check_storage`), a journal's path made absolute, for ``workers`` processes.

    Every worker process opens the storage itself, from any working directory.

    Raises:
        ConfigError: a file that is not an Optuna storage, or an in-memory
            database (each process opens its own, empty) for several workers.
    """
    check_storage(spec)  # before resolving, so that the message names the file as given
    if spec.kind == "journal":
        spec = StorageSpec("journal", str(Path(spec.location).resolve()))
    if spec.per_process and workers > 1:
        raise ConfigError(f"--storage: '{spec.location}' is an in-memory database that each process opens "
                          f"empty, so --workers {workers} could not share it; use a journal FILE or sqlite:///FILE")
    return spec


def open_storage(spec: StorageSpec) -> Any:
    """The Optuna storage for ``spec`` (creating the journal file's or sqlite file's directory).

    Raises:
        ConfigError: the storage cannot be opened (missing database driver,
            unreachable server, unwritable file), with the reason.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if spec.kind == "journal":
        path = Path(spec.location)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise ConfigError(f"--storage: cannot use journal file '{path}': {exc.strerror or exc}") from None
    import sqlalchemy.exc

    url = spec.location
    if url.startswith("sqlite:///") and url[len("sqlite:///"):] not in ("", ":memory:"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():
                # Heartbeats are experimental in Optuna; they are what detects a dead machine.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if spec.per_process:  # one process's in-memory database: nobody else to tell that it lives
                    return optuna.storages.RDBStorage(url)
                return optuna.storages.RDBStorage(url, heartbeat_interval=spec.heartbeat_interval,
                                                  grace_period=spec.grace_period, **_retry_option(spec.retries))
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError) as exc:
            # Workers started together on a new database all create Optuna's tables; all but one
            # lose that race ("already exists") and find the tables there when they try again.
            if "already exists" not in str(exc) or attempt == SCHEMA_RACE_RETRIES:
                raise ConfigError(f"--storage: cannot open '{spec.label}': {_first_line(exc)}") from None
            time.sleep(0.5 * (attempt + 1))
        except (ImportError, sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
            raise ConfigError(f"--storage: cannot open '{spec.label}': {_first_line(exc)}") from None
    raise AssertionError("unreachable")


def _retry_option(retries: int) -> dict[str, Any]:
    """RDBStorage's keyword for re-running trials failed by their heartbeat (renamed in Optuna 4.9)."""
    import optuna

    if retries <= 0:
        return {}
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=retries)}


def retry_callback(storage: Any) -> Any:
    """The storage's callback that re-runs a trial failed by its heartbeat; None when there is none."""
    if not has_heartbeats(storage):
        return None
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None) or storage.get_failed_trial_callback
    return getter()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def open_study(storage: Any, study_name: str, settings: Mapping[str, Any], *, label: str,
               sampler: Any = None, pruner: Any = None) -> Any:
    """Create the study, or load it if it exists and was created with the same settings.

    ``settings`` are the choices that make trials comparable (presets, space,
    epochs, batch size, data, seed, overrides); they are stored in the study
    and a rerun must match them, so a study never mixes incomparable trials.

    Raises:
        ConfigError: the study exists with other settings (the message lists them).
    """
    import optuna

    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                load_if_exists=True, sampler=sampler, pruner=pruner)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study '{study_name}' in {label} minimizes; nnlab studies maximize validation R². "
                          "Pass another --study-name")
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, dict(settings))
    elif stored != dict(settings):
        differ = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        was = ", ".join(f"{k}={_short(stored.get(k))}" for k in differ)
        now = ", ".join(f"{k}={_short(settings.get(k))}" for k in differ)
        raise ConfigError(f"study '{study_name}' in {label} was created with {was}; this command has {now}. "
                          "Rerun with the original settings to continue it, or start a new study with "
                          "another --output-dir (or --study-name and --output)")
    return study


def _short(value: Any) -> str:
    from nnlab.config import shorten

    return shorten(str(value))


def has_heartbeats(storage: Any) -> bool:
    """Whether running trials record heartbeats in ``storage`` (an RDB storage, as opened by open_storage).

    A study's storage is Optuna's cache around the RDB storage, not the
    ``RDBStorage`` itself: Optuna's own test, not an isinstance check.
    """
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)
