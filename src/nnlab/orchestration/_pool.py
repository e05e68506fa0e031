"""Worker processes: how many, their entry point, their threads, and what they keep quiet.

A search or a study runs its units in one process or in ``workers`` worker
processes sharing the storage (:func:`run_workers`), forked from a fork server that
imported TensorFlow once (spawned where the platform has none). Each worker
enters through :func:`worker_main`, which turns the errors a user can cause
into one line and an exit status.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from nnlab.errors import ConfigError, NnlabError
from nnlab.orchestration._lost import StorageLostError
from nnlab.orchestration._mlflow import MlflowTarget, abort_parent

__all__ = [
    "available_cpus",
    "cap_workers",
    "capped_workers",
    "check_positive",
    "eta_text",
    "limit_threads",
    "one_line",
    "progress_printer",
    "quiet_retracing",
    "report_failed_workers",
    "run_processes",
    "run_workers",
    "worker_main",
]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_positive(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1 (a setting of a search or a study: ``--workers``, ``--epochs``...).

    Raises:
        ConfigError: naming the setting and the value.

    Example:
        >>> check_positive("--workers", 2)
        2
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def cap_workers(requested: int, remaining: int, cpus: int | None = None) -> tuple[int, str]:
    """How many workers to start: at most one per CPU and one per trial left.

    More would only compete for the cores (each worker trains with TensorFlow)
    or sit idle, each having loaded TensorFlow and prepared the data first.

    Returns:
        The number, and why it is below ``requested`` ("" when it is not).

    Example:
        >>> cap_workers(8, 3, cpus=2)
        (2, 'this machine has 2 CPUs available')
        >>> cap_workers(4, 1, cpus=16)
        (1, 'only 1 trial is left to run')
    """
    cpus = available_cpus() if cpus is None else cpus
    workers, reasons = requested, []
    if workers > cpus:
        workers = cpus
        reasons.append(f"this machine has {cpus} CPU{'s' if cpus > 1 else ''} available")
    if workers > max(remaining, 1):
        workers = max(remaining, 1)
        reasons.append(f"only {workers} trial{' is' if workers == 1 else 's are'} left to run")
    return workers, "; ".join(reasons)


def capped_workers(requested: int, remaining: int, say: Callable[[str], Any]) -> int:
    """:func:`cap_workers` for ``remaining`` units (0 when none is left), saying why it capped.

    Example:
        >>> capped_workers(4, 0, print)
        0
    """
    if remaining <= 0:
        return 0
    workers, why = cap_workers(requested, remaining)
    if why:
        say(f"--workers {requested} capped to {workers}: {why}")
    return workers


def eta_text(done: int, total: int, elapsed_s: float, workers: int = 1) -> str:
    """The time left for a search's trials or a study's runs, for a progress line: ``eta ~M:SS`` (``~H:MM:SS``).

    The mean duration of the ``done`` finished units, times the units left, shared by the workers
    (never more workers than units left). ``eta n/a`` before any unit has finished, ``eta 0:00`` when
    none is left.

    Args:
        done: units finished (trials of the budget, runs of the study).
        total: units in all.
        elapsed_s: the seconds the finished units took together (the sum of their durations).
        workers: worker processes running the rest.

    Example:
        >>> eta_text(0, 10, 0.0, 2)
        'eta n/a'
        >>> eta_text(2, 10, 60.0, 2)  # 30 s a unit, 8 left on 2 workers
        'eta ~2:00'
        >>> eta_text(1, 100, 90.0)
        'eta ~2:28:30'
        >>> eta_text(3, 4, 30.0, 4)  # one left: one worker runs it
        'eta ~0:10'
        >>> eta_text(5, 5, 50.0)
        'eta 0:00'
    """
    left = total - done
    if left <= 0:
        return "eta 0:00"
    if done <= 0 or not math.isfinite(elapsed_s) or elapsed_s < 0:
        return "eta n/a"
    seconds = round(elapsed_s / done * left / max(1, min(workers, left)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"eta ~{hours}:{minutes:02d}:{seconds:02d}" if hours else f"eta ~{minutes}:{seconds:02d}"


def limit_threads(workers: int) -> None:
    """``workers`` processes on one machine: share the cores instead of each taking all of them."""
    import tensorflow as tf

    threads = max(1, (os.cpu_count() or 1) // workers)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message's lines joined.

    Example:
        >>> one_line(ValueError("bad\\n  value"))
        'ValueError: bad value'
    """
    from nnlab._redact import redact_text

    text = redact_text(" ".join(part.strip() for part in str(exc).splitlines() if part.strip()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def progress_printer(progress: bool | Callable[[str], Any]) -> Callable[[str], None]:
    """Where a search's or a study's progress lines go: a caller's callable, print (True) or nowhere (False).

    Example:
        >>> progress_printer(True)("3 of 4 runs finished")
        3 of 4 runs finished
        >>> progress_printer(False)("not shown")
    """
    if callable(progress):
        return progress

    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    return say


def _drop_retracing_warning(record: logging.LogRecord) -> bool:
    # Every unit builds a new network, hence new tf.functions; TensorFlow's
    # "N out of the last M calls ... triggered tf.function retracing" heuristic
    # counts them as retracing, which here is expected, not a performance bug.
    return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def quiet_retracing() -> Iterator[None]:
    """Drop TensorFlow's retracing warning while units run (each builds a new network)."""
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addFilter(_drop_retracing_warning)
    try:
        yield
    finally:
        tf_logger.removeFilter(_drop_retracing_warning)


# After its parent died, a worker gets SIGTERM (its running unit stops after the epoch and is recorded as
# interrupted); if it still runs this many seconds later, it exits at once (the next command reruns the unit).
PARENT_GONE_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_parent(*, poll_s: float = 0.5) -> None:
    """Stop this worker process when the command that started it dies, whatever killed it (SIGKILL included).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` signals it the moment its parent
    dies (the fork server, which ends with the command, or the command itself);
    everywhere, a daemon thread that sees the command gone (multiprocessing's
    parent sentinel) sends SIGTERM and, :data:`PARENT_GONE_GRACE_S` later, exits.
    Not a worker process: nothing to do.
    """
    import multiprocessing
    import signal
    import threading
    import time

    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the thread below still watches
            pass
    name = multiprocessing.current_process().name

    def watch() -> None:
        while parent.is_alive():  # its sentinel: the command's end, also through a fork server
            time.sleep(poll_s)
        print(f"error: {name}: the command that started it has gone; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(PARENT_GONE_GRACE_S)
        os._exit(1)

    if not parent.is_alive():  # gone before the watch began
        os._exit(1)
    threading.Thread(target=watch, name="nnlab-parent-watch", daemon=True).start()


def worker_main(run: Callable[..., Any], name: str, environ: dict[str, str] | None, *args: Any) -> None:
    """Entry point of a worker process: ``run(*args)``, errors as one line naming the worker.

    Exit status 2 for an error a user can cause, 1 for a storage that stopped
    answering, 130 for Ctrl-C.

    Args:
        run: the worker function (a module-level function: it is pickled).
        name: the worker in messages, e.g. ``worker 1``.
        environ: the command's environment when it started the worker (None: keep this
            process's). A fork server keeps the environment it started with; a command that
            changed its own since (a notebook setting ``PGPASSWORD``) still passes it on.
        args: its arguments.
    """
    from nnlab._redact import install, remember_secrets
    from nnlab._tflog import quiet_tensorflow_import

    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    install()  # what the worker prints is masked like the main process's output
    remember_secrets(repr(args))  # the storage and tracking URLs it was given
    stop_with_parent()  # a worker never trains on, unseen, after its command was killed
    quiet_tensorflow_import()  # a spawned process (no fork server): its first TensorFlow import is quiet too
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run(*args)
    except NnlabError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except StorageLostError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _worker_context() -> Any:
    """The fork server where the platform has one, else spawn; never a fork of this process
    (TensorFlow is not fork-safe once it runs). The server imports TensorFlow once
    (nnlab.orchestration._preload) and forks each worker from there, before TensorFlow has run."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["nnlab.orchestration._preload"])
    return context


def run_processes(run: Callable[..., Any], args: Sequence[tuple], *, name: str,
                  label: str = "worker") -> list[tuple[int, int]]:
    """Run ``run(*a)`` for each ``a`` in ``args`` in a worker process of its own
    (through :func:`worker_main`) and wait for all; returns (index, exit code)
    of the ones that failed.

    Ctrl-C reaches the workers too (same process group): they get 30 s to
    record their running unit as interrupted before they are stopped.

    Args:
        run: the worker function (module-level: it is pickled).
        args: one argument tuple per process.
        name: the processes' name prefix (``<name>-<index>``).
        label: the worker in messages (``<label> <index>``).
    """
    context = _worker_context()
    environ = dict(os.environ)
    processes = [context.Process(target=worker_main, args=(run, f"{label} {i}", environ, *a), name=f"{name}-{i}")
                 for i, a in enumerate(args)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    return [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode != 0]


def run_workers(workers: int, *, here: Callable[[], Any], run: Callable[..., Any], args: Sequence[tuple],
                name: str, label: str, parent: MlflowTarget | None = None,
                parent_metrics: Callable[[], Any] = dict,
                files: Sequence[tuple[Any, str | None]] = ()) -> list[tuple[int, int]]:
    """Run the units: ``here()`` in this process for one worker, else ``workers`` spawned processes.

    The MLflow parent run, if any, ends as the work did when it raises (KILLED
    on Ctrl-C, else FAILED); the exception goes on.

    Args:
        workers: processes (1: this one, its storage already open).
        here: runs one worker in this process.
        run, args, name, label: the spawned workers (see :func:`run_processes`);
            ``args`` has one tuple per worker.
        parent: the MLflow target with its parent run.
        parent_metrics: the parent run's metrics should the work fail.
        files: the parent run's files.

    Returns:
        (worker, exit status) of the spawned workers that failed.
    """
    try:
        if workers == 1:
            here()
            return []
        return run_processes(run, args, name=name, label=label)
    except BaseException as exc:
        abort_parent(parent, exc, metrics=parent_metrics, files=files)
        raise


def report_failed_workers(failed: Sequence[tuple[int, int]], label: str = "worker") -> None:
    """One line on stderr per failed worker process: ``error: <label> N exited with status S``."""
    for worker, status in failed:
        print(f"error: {label} {worker} exited with status {status}", file=sys.stderr)
