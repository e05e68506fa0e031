"""A database storage that stops answering: retried with back-off, this process's trial given back, or one clear error.

A worker that loses its connection mid-trial tries again for
``sum(RECONNECT_DELAYS_S)`` seconds. When the database is back, its own
running trial is failed (and retried, as configured) and the worker claims
on; when it is not, :class:`StorageLostError` ends the worker with exit
status 1 and one message (no traceback), and a rerun of the same command
continues the study.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from nnlab.errors import NnlabError
from nnlab.orchestration._claims import trial_id
from nnlab.orchestration._storage import retry_callback

__all__ = [
    "RECONNECT_DELAYS_S",
    "StorageLostError",
    "exit_on_lost_storage",
    "is_connection_error",
    "reconnect",
    "release_own_trials",
]


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


def reconnect(probe: Callable[[], Any], label: str, error: BaseException,
              say: Callable[[str], Any] | None = None) -> None:
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
        tid = trial_id(study, trial.number)
        try:
            storage.set_trial_user_attr(tid, "error", "interrupted: the storage connection was lost")
            if storage.set_trial_state_values(tid, TrialState.FAIL):
                retry = retry_callback(storage)
                if retry is not None:
                    retry(study, storage.get_trial(tid))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue


def exit_on_lost_storage(command: Callable[[], int]) -> int:
    """``command()``'s exit status; 1 with one message on stderr when its storage stopped answering.

    A worker's lost connection is :class:`StorageLostError` (it tried again
    already); one outside a worker's units (opening the study, the final
    results) has nothing to retry for.

    Example:
        >>> exit_on_lost_storage(lambda: 0)
        0
    """
    try:
        return command()
    except StorageLostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        print(f"error: the storage stopped answering: {' '.join(str(exc).split())[:300]}; rerun the same "
              "command when the database is back", file=sys.stderr)
        return 1
