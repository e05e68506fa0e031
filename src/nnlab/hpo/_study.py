"""Storage, study, samplers and pruners, and the shared trial budget.

Optuna is imported inside the functions, so importing this module is cheap.

Budget: a trial counts towards ``--max-trials`` when it is running or finished
by nnlab (complete, pruned, or failed with a recorded reason). Before asking
for a new trial, a worker takes a file lock, fails the *interrupted* trials
(see :func:`fail_interrupted_trials`), counts, and asks only if the count is
below the budget -- so workers on one machine never overshoot it. Workers on
several machines sharing a database take only their machine's lock; two of
them may then ask at the same moment, overshooting by at most one trial each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nnlab._files import locked, special_file_kind
from nnlab.errors import ConfigError, NnlabError

__all__ = [
    "JOURNAL_FILE",
    "StorageSpec",
    "storage_spec",
    "check_storage",
    "open_storage",
    "open_study",
    "make_sampler",
    "make_pruner",
    "fail_interrupted_trials",
    "counts_towards_budget",
    "claim_trial",
    "wait_for_running_trials",
    "running_elsewhere",
    "StorageLostError",
    "is_connection_error",
    "reconnect",
    "release_own_trials",
    "this_host",
    "heartbeat",
    "worker_identity",
    "budget_lock_path",
]

JOURNAL_FILE = "hpo_journal.log"
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120
# How often a worker whose budget is claimed looks again at trials running in other processes.
POLL_S = 2.0
RDB_DIALECTS = ("sqlite", "postgresql", "mysql")
# RDB storages record a heartbeat per running trial; a trial whose heartbeat is
# older than the grace period (its process or machine died) is failed.
# A running trial without an owner record is one whose process died between
# asking for it and recording itself (microseconds apart); after this long it
# is treated as interrupted.
UNOWNED_GRACE_S = 300
# Opening a new database from several processes at once: tries after losing the race to create the tables.
SCHEMA_RACE_RETRIES = 3
SETTINGS_ATTR = "nnlab_settings"
OUTCOME_ATTR = "outcome"  # set by nnlab on every trial it finishes itself
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


def storage_spec(storage: str | None, output_dir: str | os.PathLike) -> StorageSpec:
    """Parse ``--storage``: None (a journal file under ``<output_dir>/analysis/``), a file, or a URL.

    Raises:
        ConfigError: for a URL whose database is not sqlite, postgresql or mysql.
    """
    if storage is None:
        return StorageSpec("journal", str(Path(output_dir) / "analysis" / JOURNAL_FILE))
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


def make_sampler(kind: str, *, seed: int, startup_trials: int) -> Any:
    """``random`` or ``tpe`` (TPE samples its first ``startup_trials`` at random)."""
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(kind: str, *, startup_trials: int, epochs: int) -> Any:
    """``none``, ``median`` or ``hyperband``; epochs are the pruners' steps.

    The median pruner waits for ``startup_trials`` completed trials and, in each
    trial, for the first ``epochs // 5`` epochs (early R² is noisy).
    """
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=epochs // 5)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------
# Interrupted trials and the budget


class StorageLostError(Exception):
    """The storage's database stopped answering and did not come back (exit status 1, not a usage error)."""


# Seconds between tries to reach a storage that stopped answering; then the worker gives up.
RECONNECT_DELAYS_S = (1, 2, 4, 8)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a lost or refused database connection."""
    import sqlalchemy.exc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NnlabError):
            return False  # already a message for the user (e.g. a storage that cannot be opened)
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
                isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated):
            return True
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


def reconnect(probe: Any, label: str, error: BaseException, say: Any = None) -> None:
    """Call ``probe()`` (storage calls) with back-off until it succeeds; StorageLostError when it never does.

    Raises:
        StorageLostError: naming the storage (no password), the last error and what to do.
    """
    reason = " ".join(str(error).split())[:200]
    if say is not None:
        say(f"lost the connection to the storage {label} ({reason}); trying again for "
            f"{sum(RECONNECT_DELAYS_S)} s")
    for delay in RECONNECT_DELAYS_S:
        time.sleep(delay)
        try:
            probe()
            return
        except Exception as exc:  # noqa: BLE001 - only connection errors are retried
            if not is_connection_error(exc):
                raise
            reason = " ".join(str(exc).split())[:200]
    raise StorageLostError(
        f"lost the connection to the storage {label} and it did not answer for {sum(RECONNECT_DELAYS_S)} s "
        f"({reason}); this worker stops, its running trial is left for the other workers (failed by its "
        "heartbeat or its process, then retried). Rerun the same command when the database is back.")


def release_own_trials(study: Any, owner: Mapping[str, Any]) -> None:
    """Fail (and retry, as configured) this process's running trials: after a lost connection nobody else will."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != owner.get("host") or worker.get("pid") != owner.get("pid"):
            continue
        trial_id = _trial_id(study, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "error", "interrupted: the storage connection was lost")
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                retry = retry_callback(storage)
                if retry is not None:
                    retry(study, storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue


def has_heartbeats(storage: Any) -> bool:
    """Whether running trials record heartbeats in ``storage`` (an RDB storage, as opened by open_storage).

    A study's storage is Optuna's cache around the RDB storage, not the
    ``RDBStorage`` itself: Optuna's own test, not an isinstance check.
    """
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def this_host() -> str:
    """The host name a worker records on its trials: ``NNLAB_WORKER_HOST`` if set, else the machine's.

    Workers on one host check each other's processes; a trial of another host
    is failed only by its heartbeat (RDB storages). Set ``NNLAB_WORKER_HOST``
    where machines share a host name (containers).
    """
    return os.environ.get("NNLAB_WORKER_HOST") or socket.gethostname()


def worker_identity() -> dict[str, Any]:
    """This process, as recorded on the trials it runs: host, pid and start time."""
    import psutil

    return {"host": this_host(), "pid": os.getpid(),
            "started": psutil.Process().create_time()}


def _alive(owner: Mapping[str, Any]) -> bool:
    import psutil

    try:
        process = psutil.Process(int(owner["pid"]))
        # A reused pid belongs to a process started at another time.
        same = abs(process.create_time() - float(owner["started"])) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:
        return True  # someone else's live process: never fail what we cannot inspect
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


def _trial_id(study: Any, number: int) -> int:
    storage = study._storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def fail_interrupted_trials(study: Any) -> list[tuple[int, str]]:
    """Mark FAIL the running trials whose worker is gone; returns ``(number, reason)`` pairs.

    A trial is interrupted when its worker process, on this host, no longer
    exists (killed, crashed); on an RDB storage also when its heartbeat stopped
    (a worker on another machine). Interrupted trials carry no ``outcome``: they
    do not count towards the budget and are not listed in the results.
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    host = this_host()
    now = datetime.now()
    failed: list[tuple[int, str]] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker")
        if owner is None:
            started = trial.datetime_start
            if started is None or (now - started).total_seconds() < UNOWNED_GRACE_S:
                continue
            reason = "interrupted: its worker never recorded itself"
        elif owner.get("host") != host or _alive(owner):
            continue
        else:
            reason = f"interrupted: worker process {owner.get('pid')} on {host} ended during the trial"
        trial_id = _trial_id(study, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "error", reason)
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                failed.append((trial.number, reason))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        retry = retry_callback(storage)
        if retry is not None:  # as the heartbeat's failures are: run again, up to the retry count
            retry(study, storage.get_trial(trial_id))
    if has_heartbeats(storage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        failed += [(n, "interrupted: its heartbeat stopped") for n in sorted(before - after)]
    return failed


def counts_towards_budget(trial: Any) -> bool:
    """Running, or finished by nnlab itself (complete, pruned, failed with a reason)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.RUNNING:
        return True
    return trial.state.is_finished() and OUTCOME_ATTR in trial.user_attrs


def budget_lock_path(output_dir: str | os.PathLike, study_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
    return Path(output_dir) / "analysis" / f".hpo-{safe}"


def claim_trial(study: Any, *, budget: int, lock_path: Path, owner: Mapping[str, Any],
                fixed_params: Mapping[str, Any] | None = None,
                choose: Any = None) -> Any | None:
    """Ask for a new trial if the budget allows, else return None.

    Under the lock: fail interrupted trials, count, then ask; after the lock,
    the trial is checked against the budget in the storage itself (workers on
    other machines do not share the lock). ``choose``, if
    given, is called with the counted trials and returns the fixed parameters of
    the next trial, or None when nothing is left (benchmarking: the next preset).
    """
    from optuna.trial import TrialState

    with locked(lock_path):
        fail_interrupted_trials(study)
        counted = [t for t in study.get_trials(deepcopy=False) if counts_towards_budget(t)]
        if len(counted) >= budget:
            return None
        params = dict(fixed_params or {})
        if choose is not None:
            chosen = choose(counted)
            if chosen is None:
                return None
            params.update(chosen)
        # Enqueued with its owner, so the trial ask() starts carries it from its first write: a worker
        # killed between the two can no longer leave a running trial nobody owns (which a rerun would
        # have to leave alone for UNOWNED_GRACE_S). A trial already waiting (a retry of a failed one)
        # is taken as it is: ask() starts the oldest waiting trial, and one enqueued now would be left.
        own = not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if own:
            study.enqueue_trial(params, user_attrs={"worker": dict(owner), **params})
        with warnings.catch_warnings():
            # Optuna expects heartbeats only under Study.optimize; heartbeat() records them here.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        trial.set_user_attr("worker", dict(owner))  # a waiting trial left by another claim may be the one popped
        if own:  # a retry keeps the parameters (and their attributes) of the trial it repeats
            for key, value in params.items():  # visible to the next claim before the trial suggests
                trial.set_user_attr(key, value)
    # The budget is enforced in the storage, not by the lock (a file on this machine only): of
    # claims made at once on several machines, the trials with the lowest numbers -- in the order
    # the database created them -- are within the budget, and the others are given back.
    earlier = [t for t in study.get_trials(deepcopy=False)
               if t.number < trial.number and counts_towards_budget(t)]
    if len(earlier) >= budget:
        _give_back(study, trial, "over budget: other workers claimed the last trials at the same moment")
        return None
    return trial


def _give_back(study: Any, trial: Any, reason: str) -> None:
    """Fail a claimed trial that will not run (no outcome: not counted, not listed)."""
    import optuna
    from optuna.trial import TrialState

    trial_id = _trial_id(study, trial.number)
    try:
        study._storage.set_trial_user_attr(trial_id, "error", reason)
        study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # failed meanwhile as interrupted: the same end


def running_elsewhere(study: Any) -> list[Any]:
    """The running trials whose end this process can see: all on an RDB storage (heartbeats), else this host's."""
    from optuna.trial import TrialState

    host = this_host()
    heartbeats = has_heartbeats(study._storage)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if heartbeats or (t.user_attrs.get("worker") or {}).get("host", host) == host]


def wait_for_running_trials(study: Any, lock_path: Path, say: Any = None, *, poll_s: float = POLL_S) -> int:
    """Wait until no trial of the study runs (in other processes, on other machines); returns how many ran.

    A search ends when its budget is claimed; the last trials may still be
    training elsewhere. Waiting for them lets every worker write the same,
    final results files. Trials whose worker died are failed meanwhile: on this
    host by their process, on an RDB storage by their heartbeat. A journal's
    trial running on another host cannot be checked, so it is not waited for.
    """

    waited_for = 0
    while True:
        with locked(lock_path):
            fail_interrupted_trials(study)
        checkable = running_elsewhere(study)
        if not checkable:
            return waited_for
        if not waited_for and say is not None:
            numbers = ", ".join(str(t.number) for t in checkable)
            say(f"waiting for trial{'s' if len(checkable) > 1 else ''} {numbers}, running in other "
                "processes, to finish (the results files are written after them)")
        waited_for = max(waited_for, len(checkable))
        time.sleep(poll_s)


@contextlib.contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat while it runs (RDB storages; a no-op for journals)."""

    storage = study._storage
    if not has_heartbeats(storage):
        yield
        return
    trial_id = _trial_id(study, trial.number)
    stop = threading.Event()

    interval = storage.get_heartbeat_interval() or HEARTBEAT_INTERVAL_S

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - the worker's own storage calls report the loss
                if not is_connection_error(exc):
                    raise
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"hpo-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

