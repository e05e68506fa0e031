"""The worker's loop, written once for the search and the study: claim a unit, train it, report it.

A client supplies what differs -- how a unit is claimed, how one is trained
(through :func:`nnlab.runs.execute`) and recorded, what is written and said
after it -- and :func:`run_claim_loop` does the rest: the heartbeat while a
unit trains, an interruption recorded on its trial, and a database that
stops answering (retried with back-off, this process's trial given back, or
:class:`~nnlab.orchestration.StorageLostError`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from nnlab._signals import interrupts_latched, raise_if_interrupted
from nnlab.orchestration._claims import POLL_S, running_elsewhere, trial_id, worker_identity
from nnlab.orchestration._lost import is_connection_error, reconnect, release_own_trials
from nnlab.orchestration._pool import limit_threads, quiet_retracing
from nnlab.orchestration._storage import HEARTBEAT_INTERVAL_S, StorageSpec, has_heartbeats, open_storage

__all__ = ["heartbeat", "open_worker_study", "run_claim_loop", "train_claimed"]

T = TypeVar("T")


def open_worker_study(spec: StorageSpec, study_name: str, *, workers: int, storage: Any = None,
                      **study_options: Any) -> Any:
    """The study as one of ``workers`` worker processes sees it: threads shared, the storage opened.

    Args:
        spec: where the study lives.
        study_name: its name.
        workers: worker processes on this machine (more than one: each takes its share of the cores).
        storage: the storage already opened by this process (an in-memory
            database exists only there); a spawned worker opens its own.
        study_options: for ``optuna.load_study`` (``sampler``, ``pruner``).
    """
    import optuna

    if workers > 1:
        limit_threads(workers)
    if storage is None:
        storage = open_storage(spec)
    return optuna.load_study(study_name=study_name, storage=storage, **study_options)


@contextlib.contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat while it runs (RDB storages; a no-op for journals)."""

    storage = study._storage
    if not has_heartbeats(storage):
        yield
        return
    tid = trial_id(study, trial.number)
    stop = threading.Event()

    interval = storage.get_heartbeat_interval() or HEARTBEAT_INTERVAL_S

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(tid)
            except Exception as exc:  # noqa: BLE001 - the worker's own storage calls report the loss
                if not is_connection_error(exc):
                    raise
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"nnlab-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def train_claimed(study: Any, trial: Any, train: Callable[[], T], *, interrupted: str) -> tuple[T, float]:
    """``train()`` under the trial's heartbeat; returns its result and the seconds it took.

    Ctrl-C or SIGTERM (training stops after the current epoch and raises
    ``KeyboardInterrupt``) fails the trial without an outcome -- it is not
    counted, and its unit is run again -- prints ``interrupted`` and goes on.
    """
    from optuna.trial import TrialState

    started = time.perf_counter()
    try:
        with heartbeat(study, trial):
            result = train()
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)")
        trial.set_user_attr("duration_s", round(time.perf_counter() - started, 3))
        study.tell(trial, state=TrialState.FAIL)
        print(interrupted, file=sys.stderr, flush=True)
        raise
    return result, round(time.perf_counter() - started, 3)


def run_claim_loop(study: Any, *, claim: Callable[[Mapping[str, Any]], Any | None], run_one: Callable[[Any], T],
                   on_done: Callable[[T], Any], label: str, say: Callable[[str], Any] | None = None,
                   wait_for_retries: bool = False) -> int:
    """Claim, train and report units until none is left; returns how many this worker ran.

    Args:
        study: the Optuna study, as this worker opened it.
        claim: ``claim(owner)``, the next unit's trial (owned by ``owner``,
            this process) or None when none is left.
        run_one: trains the unit of a claimed trial and records it on the trial.
        on_done: what follows a unit: the results files, the progress line.
        label: the storage in messages (no password).
        say: where the lost-connection warning goes (None: nowhere).
        wait_for_retries: with nothing left to claim, keep looking while a
            trial runs elsewhere: if its worker dies, the trial is failed (its
            heartbeat, or its process gone) and its retry is run here.

    Raises:
        StorageLostError: the database stopped answering and did not come back.
    """
    owner = worker_identity()
    ran = 0
    with quiet_retracing(), interrupts_latched():
        while True:
            try:
                raise_if_interrupted()  # a Ctrl-C dropped between units (see nnlab._signals) ends the loop here
                trial = claim(owner)
                if trial is None:
                    if wait_for_retries and running_elsewhere(study):
                        time.sleep(POLL_S)
                        continue
                    return ran
                done = run_one(trial)
                ran += 1
                on_done(done)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                # Back: this worker's trial (if any) is failed and retried. StorageLostError if it stays away.
                reconnect(lambda: release_own_trials(study, owner), label, exc, say)
