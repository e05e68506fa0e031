"""Claiming trials under a budget, and failing the trials whose worker is gone.

Optuna is imported inside the functions, so importing this module is cheap.

Budget: a trial counts towards it when it is running or finished by nnlab
(complete, pruned, or failed with a recorded outcome). Before asking for a
new trial, a worker takes a file lock, fails the *interrupted* trials (see
:func:`fail_interrupted_trials`), counts, and asks only if the count is below
the budget -- so workers on one machine never overshoot it. Workers on
several machines sharing a database take only their machine's lock; of the
trials claimed at the same moment, the ones beyond the budget in the
database's order are given back (see :func:`claim_trial`).
"""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from nnlab._files import locked
from nnlab.orchestration._storage import has_heartbeats, retry_callback

__all__ = [
    "OUTCOME_ATTR",
    "POLL_S",
    "budget_lock_path",
    "claim_trial",
    "counts_towards_budget",
    "fail_interrupted_trials",
    "give_back",
    "running_elsewhere",
    "this_host",
    "trial_id",
    "wait_for_running_trials",
    "worker_identity",
]

OUTCOME_ATTR = "outcome"  # set by nnlab on every trial it finishes itself
# How often a worker whose budget is claimed looks again at trials running in other processes.
POLL_S = 2.0
# A running trial without an owner record is one whose process died between
# asking for it and recording itself (microseconds apart); after this long it
# is treated as interrupted.
UNOWNED_GRACE_S = 300


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


def trial_id(study: Any, number: int) -> int:
    """The storage's id of the study's trial ``number``."""
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
        tid = trial_id(study, trial.number)
        try:
            storage.set_trial_user_attr(tid, "error", reason)
            if storage.set_trial_state_values(tid, TrialState.FAIL):
                failed.append((trial.number, reason))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        retry = retry_callback(storage)
        if retry is not None:  # as the heartbeat's failures are: run again, up to the retry count
            retry(study, storage.get_trial(tid))
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


def budget_lock_path(directory: str | os.PathLike, study_name: str, *, prefix: str = "hpo") -> Path:
    """The lock file of a study's claims on this machine: ``<directory>/.<prefix>-<study name>``.

    Example:
        >>> budget_lock_path("out/analysis", "my study").name
        '.hpo-my_study'
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
    return Path(directory) / f".{prefix}-{safe}"


def claim_trial(study: Any, *, budget: int, lock_path: Path, owner: Mapping[str, Any],
                fixed_params: Mapping[str, Any] | None = None,
                choose: Callable[[list[Any]], Mapping[str, Any] | None] | None = None) -> Any | None:
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
        give_back(study, trial, "over budget: other workers claimed the last trials at the same moment")
        return None
    return trial


def give_back(study: Any, trial: Any, reason: str) -> None:
    """Fail a claimed trial that will not run (no outcome: not counted, not listed)."""
    import optuna
    from optuna.trial import TrialState

    tid = trial_id(study, trial.number)
    try:
        study._storage.set_trial_user_attr(tid, "error", reason)
        study._storage.set_trial_state_values(tid, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # failed meanwhile as interrupted: the same end


def running_elsewhere(study: Any) -> list[Any]:
    """The running trials whose end this process can see: all on an RDB storage (heartbeats), else this host's."""
    from optuna.trial import TrialState

    host = this_host()
    heartbeats = has_heartbeats(study._storage)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if heartbeats or (t.user_attrs.get("worker") or {}).get("host", host) == host]


def wait_for_running_trials(study: Any, lock_path: Path, say: Callable[[str], Any] | None = None, *,
                            poll_s: float = POLL_S) -> int:
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
