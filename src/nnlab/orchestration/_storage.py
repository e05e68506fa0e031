"""Where a study lives: the storage's specification, its checks, and opening it and the study.

Optuna (and SQLAlchemy) are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
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
    "KIND_ATTR",
    "SETTINGS_ATTR",
    "STUDY_SPEC_ATTR",
    "StorageSpec",
    "check_storage",
    "claim_study",
    "study_kind",
    "has_heartbeats",
    "name_objective",
    "open_storage",
    "open_study",
    "repair_journal",
    "resolve_storage",
    "retry_callback",
    "storage_spec",
]

JOURNAL_FILE = "hpo_journal.log"
# The name of a search's objective in the storage (optuna-dashboard's axis): a trial's best validation R².
SEARCH_OBJECTIVE = "val_r2"
# RDB storages record a heartbeat per running trial; a trial whose heartbeat is
# older than the grace period (its process or machine died) is failed.
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120
RDB_DIALECTS = ("sqlite", "postgresql", "mysql")
# Opening a new database from several processes at once: tries after losing the race to create the tables.
SCHEMA_RACE_RETRIES = 3
SETTINGS_ATTR = "nnlab_settings"
# What created an Optuna study: "hpo" (a search) or "study-<kind>" (nnlab study), set at its creation.
KIND_ATTR = "nnlab_kind"
# The spec record nnlab study keeps in its Optuna study (study/_record.py SPEC_ATTR): a study's mark before KIND_ATTR.
STUDY_SPEC_ATTR = "nnlab_study_spec"
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
        _check_database(spec)
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
        _check_database(spec)
        return
    if head.startswith(SQLITE_MAGIC):
        raise ConfigError(f"--storage: '{path}' is a SQLite database, not an Optuna journal file; "
                          f"pass --storage sqlite:///{path}")
    if not head.endswith(b"\n") and head.startswith(b'{"op_code"'):
        return  # a torn first record (the disk filled at the first write): open_storage drops it
    try:
        first = json.loads(head)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        first = None
    if not (isinstance(first, dict) and "op_code" in first):
        raise ConfigError(f"--storage: '{path}' is not an Optuna journal file (a journal's lines are Optuna's "
                          "JSON records; its first line is not one); choose another --storage or move the file")


def _check_database(spec: StorageSpec) -> None:
    """An existing database must be empty or an Optuna storage of this Optuna's schema; it is not changed.

    Optuna would add its tables to any database (an MLflow store, another
    application's) before finding that the schema is not its own.
    """
    from nnlab.integrations import database_contents, database_kind, describe_kind

    if spec.kind != "rdb":
        return
    contents = database_contents(spec.location, option="--storage")
    kind = None if contents is None else database_kind(contents)
    if kind in (None, "empty"):
        return  # a new database, or one that cannot be reached (opening it says why)
    if kind != "optuna":
        raise ConfigError(f"--storage: '{spec.label}' is {describe_kind(contents)}, not an Optuna storage; "
                          "Optuna would add its tables to it. Give a new or empty database, or an Optuna storage")
    _check_optuna_schema(spec, contents.alembic_version, contents.optuna_library)


def _optuna_schemas() -> tuple[list[str], str | None]:
    """The schema revisions this Optuna knows, and its current one (the revision nothing follows)."""
    import re

    from optuna.storages import _rdb

    revisions: dict[str, str | None] = {}
    for script in (Path(_rdb.__file__).parent / "alembic" / "versions").glob("*.py"):
        text = script.read_text(encoding="utf-8")
        rev = re.search(r'^revision\s*=\s*"([^"]+)"', text, re.M)
        down = re.search(r'^down_revision\s*=\s*"([^"]+)"', text, re.M)
        if rev:
            revisions[rev.group(1)] = down.group(1) if down else None
    heads = set(revisions) - {d for d in revisions.values() if d}
    return sorted(revisions), (heads.pop() if len(heads) == 1 else None)


def _check_optuna_schema(spec: StorageSpec, revision: str | None, library: str | None) -> None:
    """Refuse an Optuna storage whose schema this Optuna cannot use, saying which way it differs."""
    import optuna

    known, head = _optuna_schemas()
    if revision is None or head is None or revision == head:
        return
    made_by = f" (created by Optuna {library})" if library else ""
    if revision not in known:
        raise ConfigError(f"--storage: '{spec.label}' is an Optuna storage of a newer schema ({revision}){made_by} "
                          f"than this Optuna {optuna.__version__} reads ({head}); upgrade optuna "
                          "(pip install -U optuna) or give another --storage")
    raise ConfigError(f"--storage: '{spec.label}' is an Optuna storage of an older schema ({revision}){made_by}; "
                      f"this Optuna {optuna.__version__} needs {head}: upgrade it with "
                      f"`optuna storage upgrade --storage URL` or give another --storage")


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
            repair_journal(path)
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


def repair_journal(path: str | os.PathLike) -> Path | None:
    """Drop a torn last line of a journal (a write cut by a full disk or a kill), keeping a copy of the original.

    Optuna skips a last line without its newline, but its next record would be
    appended to that line, and every later read would fail. Works under
    Optuna's lock of the journal, so no write in progress is taken for a torn one.
    Prints one warning naming the journal and the copy.

    Returns:
        The copy of the original (``<journal>.torn-<time>``), or None when nothing was torn.

    Raises:
        ConfigError: a line before the last is not a journal record (corrupt in the middle: not
            repaired), or the copy cannot be written.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        keep = _journal_intact_size(data, path)
        if keep == len(data):
            return None
        copy = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            shutil.copy2(path, copy)
            os.truncate(path, keep)
        except OSError as exc:
            raise ConfigError(f"--storage: journal '{path}' ends in a torn line, which cannot be dropped: "
                              f"{exc.strerror or exc}; free space and rerun") from None
    finally:
        lock.release()
    print(f"warning: journal '{path}' ended in a torn line ({len(data) - keep} bytes of an interrupted write: "
          f"a full disk or a killed process); dropped it, the original is kept in '{copy}'", file=sys.stderr)
    return copy


def _journal_intact_size(data: bytes, path: Path) -> int:
    """The size of ``data`` without a torn last line; a bad line before it is refused."""
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: b"" when the journal is whole
    if tail == b"" and lines and not _is_record(lines[-1]):
        tail = lines.pop() + b"\n"  # a last line that ends but is not a record: torn too
    for number, line in enumerate(lines, start=1):
        if not _is_record(line):
            raise ConfigError(f"--storage: journal '{path}' is corrupt: its line {number} is not "
                              "an Optuna record, and only a torn last line can be dropped; restore the journal "
                              "from a copy or give another --storage")
    return len(data) - len(tail)


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


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


def name_objective(study: Any, name: str) -> None:
    """Store the name of the study's objective (``study.metric_names``), once.

    optuna-dashboard shows it on its charts instead of "Objective 0". A study
    created before nnlab named it gets the name when it is next opened.
    """
    import optuna

    with warnings.catch_warnings():  # only Optuna's notice that the metric-names API is experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names != [name]:
            study.set_metric_names([name])


def open_study(storage: Any, study_name: str, settings: Mapping[str, Any], *, label: str,
               sampler: Any = None, pruner: Any = None) -> Any:
    """Create the study, or load it if it exists and was created with the same settings.

    ``settings`` are the choices that make trials comparable (presets, space,
    epochs, batch size, data, seed, overrides); they are stored in the study
    and a rerun must match them, so a study never mixes incomparable trials.
    Its objective is named ``val_r2`` (the best validation R² of a trial).

    Raises:
        ConfigError: the study exists with other settings (the message lists them).
    """
    import optuna

    claim_study(storage, study_name, "hpo", label=label)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                load_if_exists=True, sampler=sampler, pruner=pruner)
    if KIND_ATTR not in study.user_attrs:
        study.set_user_attr(KIND_ATTR, "hpo")
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study '{study_name}' in {label} minimizes; nnlab studies maximize validation R². "
                          "Pass another --study-name")
    name_objective(study, SEARCH_OBJECTIVE)
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


def study_kind(attrs: Mapping[str, Any]) -> str | None:
    """What created an Optuna study, from its user attributes: ``hpo``, ``study-<kind>``, or None (not nnlab).

    Studies created before :data:`KIND_ATTR` existed are recognised by the
    attributes each command stores: a search's settings, a study's spec record.
    """
    kind = attrs.get(KIND_ATTR)
    if isinstance(kind, str):
        return kind
    if SETTINGS_ATTR in attrs:
        return "hpo"
    record = attrs.get(STUDY_SPEC_ATTR)
    if isinstance(record, Mapping):
        return f"study-{record.get('kind', 'precision')}"
    return None


def claim_study(storage: Any, study_name: str, kind: str, *, label: str) -> bool:
    """Refuse to open study ``study_name`` of ``storage`` if another command created it; nothing is written.

    ``kind`` is ``hpo`` (a search) or ``study-<kind>`` (``nnlab study``). A
    study that exists must be of the same kind; one with trials but no nnlab
    attributes is another program's. Returns whether the study exists.

    Raises:
        ConfigError: naming the study, what created it, and --study-name/--storage.
    """
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    attrs = storage.get_study_user_attrs(study_id)
    found = study_kind(attrs)
    if found is None and not attrs and not storage.get_all_trials(study_id, deepcopy=False):
        return True  # created and left empty (e.g. interrupted before its first record): nothing to mix with
    if found == kind or (found is not None and found.startswith("study-") and kind.startswith("study-")):
        return True  # a study's kind (precision/compare) is compared with its spec record
    creator = {"hpo": "a search (nnlab hpo)"}.get(found or "", f"a study (nnlab study {(found or '')[6:]})"
                                                  if (found or "").startswith("study-") else
                                                  "another program (it has no nnlab attributes)")
    this = "nnlab hpo" if kind == "hpo" else "nnlab study"
    raise ConfigError(f"--study-name: study '{study_name}' in {label} was created by {creator}; {this} does not "
                      "open it, so that neither mixes its trials into the other. Choose another --study-name "
                      "or --storage")


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
