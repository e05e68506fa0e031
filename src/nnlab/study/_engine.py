"""``run_study``: validate, prepare the data once, open the Optuna study, run the units, write the outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnlab.errors import ConfigError
from nnlab.orchestration import (
    KIND_ATTR,
    capped_workers,
    fail_interrupted_trials,
    finish_parent,
    name_objective,
    open_parent,
    open_storage,
    progress_printer,
    report_failed_workers,
    run_workers,
)
from nnlab.runs import RunStatus
from nnlab.study._cells import StudySpec
from nnlab.study._flags import flag_lines
from nnlab.study._plan import default_output_dir, make_plan
from nnlab.study._record import (
    RECORD_FILE,
    SPEC_ATTR,
    check_data,
    check_directory_owner,
    check_spec,
    prepare_data,
    stored_spec,
    write_record,
)
from nnlab.study._results import (
    DONE_STATUSES,
    RUN_COLUMNS,
    StudyResult,
    done_units,
    runs_frame,
    write_runs,
)
from nnlab.study._worker import DataChangedError, changed_data_message, data_change

__all__ = ["RUN_COLUMNS", "StudyResult", "default_output_dir", "run_study"]


def run_study(spec: StudySpec, *, output_dir: str | Path | None = None, workers: int = 1,
              storage: str | None = None, study_name: str | None = None, data: str | Path | None = None,
              progress: bool | Callable[[str], None] = True, mlflow: str | None = None) -> StudyResult:
    """Run (or continue) a study: every (cell, seed) once, through the normal training pipeline.

    Each unit trains through :func:`~nnlab.runs.execute` into
    its own ``<output_dir>/runs/<run_id>/`` with a row in
    ``<output_dir>/configuration_log.csv`` (``nnlab analyze --output-dir
    <output_dir> --run RUN_ID`` analyses it). Units of one
    seed share the data split and the initial weights. The particle data is
    generated once into ``<output_dir>/particles.csv`` (or ``data`` is used as
    found); its SHA-256 is part of the study's record.

    The units are claimed from an Optuna study (a journal file in the study
    directory, or ``storage``): a study killed mid-way and run again finishes
    the missing units only; ``workers`` processes, or machines sharing a
    database, never run a unit twice. A rerun with other settings is refused;
    more ``seeds`` than before extend the study.

    Args:
        spec: the :class:`StudySpec` (cells, seeds, base configuration).
        output_dir: the study directory (default ``training_output/studies/<kind>``).
        workers: processes on this machine (capped at its CPUs and the units left).
        storage: a journal FILE or a database URL (``sqlite:///``,
            ``postgresql://``, ``mysql://``); default ``<output_dir>/study_journal.log``.
        study_name: default ``nnlab-study-<kind>``.
        data: a particle CSV to train on (validated, never modified).
        progress: print a start line, a line per finished run and the outputs (True), stay
            silent (False), or hand each of those lines to a callable. Spawned worker
            processes print their own lines when it is not False.
        mlflow: log to MLflow (``--mlflow``): a tracking URI, or ``""`` for
            ``sqlite:///<output_dir>/mlflow.db``; a parent run for the study (its
            outputs as artifacts) and a child run per (cell, seed). None: only if
            the base configuration sets ``mlflow_tracking_uri``. Not part of the
            study's record: a rerun with or without it continues the same study.

    Returns:
        A :class:`StudyResult`: the runs table (a DataFrame with the run
        directories), the summary and the output paths.

    Raises:
        ConfigError, DataValidationError: a bad option, key or data file, or a
            study that exists with other settings -- before anything is written.

    Example:
        >>> from nnlab.study import StudySpec, run_study
        >>> spec = StudySpec.compare({"plain": {}, "js": {"enable_james_stein": True}}, seeds=6,
        ...                          base={"epochs": 20})
        >>> result = run_study(spec, output_dir="js_study", data="particles.csv", workers=2)  # doctest: +SKIP
        >>> result.runs[["variant", "seed", "test_r2", "run_dir"]]                             # doctest: +SKIP
    """
    import optuna

    plan = make_plan(spec, output_dir=output_dir, workers=workers, storage=storage, study_name=study_name,
                     data=data, progress=bool(progress), mlflow=mlflow)
    say = progress_printer(progress)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with contextlib.ExitStack() as held:  # the study directory, this command's alone until it ends
        plan, store, study = _open(plan, held)
        paths = {"runs": plan.runs_path, "data": plan.data_path, "record": write_record(plan)}
        plan, left = _begin_study(plan, study, workers, say)
        failed_workers = _run_units(plan, store, left, paths, say if progress else None)
        return _end_study(plan, study, paths, failed_workers, say)


def _open(plan: Any, held: contextlib.ExitStack) -> tuple[Any, Any, Any]:
    """Check the directory, the data and the stored spec, hold the directory, prepare the data, open the study.

    Every refusal comes before anything is written: the directory, the data, then the stored spec.
    The directory is held (:func:`_hold_directory`) until ``held`` closes.

    Returns:
        The plan (with its data's SHA-256), the storage and the Optuna study.
    """
    import optuna

    check_directory_owner(plan, None)
    check_data(plan)
    store = stored = None
    journal = Path(plan.storage.location) if plan.storage.kind == "journal" else None
    if journal is None or (journal.is_file() and journal.stat().st_size > 0):  # opening creates a journal
        store = open_storage(plan.storage)
        stored = stored_spec(store, plan)
    check_directory_owner(plan, stored is not None)
    if stored is not None:
        check_spec(stored, plan, data=False)
    _hold_directory(plan, held)
    check_directory_owner(plan, None)  # again: a command that held the directory until now may have written it
    plan = _prepared(plan, stored)
    if store is None:
        store = open_storage(plan.storage)
    study = optuna.create_study(storage=store, study_name=plan.study_name, direction="maximize",
                                load_if_exists=True)
    name_objective(study, "test_r2")  # a unit's value: its run's test R² (optuna-dashboard's axis)
    if stored is None or list(stored.get("seeds") or []) != list(plan.seeds):
        study.set_user_attr(SPEC_ATTR, plan.record)
    if KIND_ATTR not in study.user_attrs:  # what created it: a search never opens it
        study.set_user_attr(KIND_ATTR, f"study-{plan.kind}")
    return plan, store, study


def _hold_directory(plan: Any, held: contextlib.ExitStack) -> None:
    """An exclusive lock on the study directory itself (no file of its own) until ``held`` closes.

    One command per study directory at a time: a second one -- the same study or
    another -- is refused (exit 2); more processes for one study are ``--workers``,
    other machines their own ``--output-dir``. The lock goes with the process,
    however it ends.
    """
    import fcntl
    import json
    import os

    plan.study_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(plan.study_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    held.callback(os.close, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            record = json.loads((plan.study_dir / RECORD_FILE).read_text(encoding="utf-8"))
            running = f"study '{record['study_name']}'"
        except (OSError, ValueError, TypeError, KeyError):
            running = "a study"
        same = running == f"study '{plan.study_name}'"
        raise ConfigError(f"--output-dir: '{plan.shown_dir}' is in use: another nnlab study command is running "
                          f"{running} there; "
                          + ("wait for it to end and rerun to finish what is left (more processes: --workers)"
                             if same else "wait for it to end, or choose another --output-dir")) from None
    held.callback(fcntl.flock, fd, fcntl.LOCK_UN)


def _prepared(plan: Any, stored: dict[str, Any] | None) -> Any:
    """The study directory and its data ready; the plan with the data's SHA-256, checked against the record."""
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    created, digest = prepare_data(plan)
    plan = dataclasses.replace(plan, data_sha256=digest)
    if stored is not None:
        try:
            check_spec(stored, plan, data=True)
        except ConfigError:
            if created:  # generated by this refused command: take it back
                plan.data_path.unlink(missing_ok=True)
                plan.data_path.with_name(plan.data_path.name + ".meta.json").unlink(missing_ok=True)
            raise
    return plan


def _begin_study(plan: Any, study: Any, workers: int, say: Callable[[str], None]) -> tuple[Any, int]:
    """Fail interrupted trials, cap the workers, say where the study stands, open the MLflow parent.

    Returns:
        The plan (its workers, the trials already there, its parent run) and the units left to run.
    """
    from nnlab._files import locked

    with locked(plan.lock_path):
        interrupted = fail_interrupted_trials(study)
    n_units = len(plan.cells) * len(plan.seeds)
    finished = len(done_units(study) & {(c["id"], s) for c in plan.cells for s in plan.seeds})
    left = n_units - finished
    n_workers = capped_workers(workers, left, say)
    plan = dataclasses.replace(plan, workers=max(n_workers, 1), n_existing=len(study.get_trials(deepcopy=False)))
    head = (f"study {plan.kind} '{plan.study_name}': {len(plan.cells)} cells × {len(plan.seeds)} seeds = "
            f"{n_units} runs, {finished} finished; {n_workers} worker{'s' if n_workers != 1 else ''};")
    where = f"outputs in {plan.shown_dir or plan.study_dir} (storage {plan.shown_storage})"
    for line in [f"{head} {where}"] if len(head) + len(where) < 120 else [head, f"  {where}"]:
        say(line)
    for number, reason in interrupted:
        say(f"trial {number} was {reason}; its run will be done again")
    write_runs(study, plan)
    if plan.mlflow is not None:
        plan = dataclasses.replace(plan, mlflow=open_parent(
            plan.mlflow, kind="study", study_name=plan.study_name, storage_label=plan.storage.label,
            params=_parent_params(plan), say=say, preset=plan.preset))
    return plan, left


def _run_units(plan: Any, store: Any, left: int, paths: dict[str, Path],
               emit: Callable[[str], None] | None) -> list[tuple[int, int]]:
    """The workers, in this process (one: the storage already open) or spawned; returns the failed ones."""
    from nnlab.study._worker import study_worker

    if not left:
        return []
    n_units = len(plan.cells) * len(plan.seeds)
    return run_workers(plan.workers, here=lambda: study_worker(plan, 0, storage=store, say=emit),
                       run=study_worker, args=[(plan, i) for i in range(plan.workers)],
                       name="nnlab-study-worker", label="study worker", parent=plan.mlflow,
                       parent_metrics=lambda: {"runs_total": n_units}, files=_output_files(paths))


def _end_study(plan: Any, study: Any, paths: dict[str, Path], failed_workers: list[tuple[int, int]],
            say: Callable[[str], None]) -> StudyResult:
    """The runs table and the summary from the storage; the parent run ended; where the outputs are."""
    runs = runs_frame(write_runs(study, plan), plan)
    n_units = len(plan.cells) * len(plan.seeds)
    done = int(runs["status"].isin(DONE_STATUSES).sum())
    changed = data_change(plan.data_path, plan.data_sha256) if failed_workers else None
    if changed:  # the workers stopped on it (each said so): the command ends as a single worker would
        finish_parent(plan.mlflow, status="FAILED", metrics={"runs_total": n_units, "runs_finished": done},
                      files=_output_files(paths))
        raise DataChangedError(changed_data_message(changed, done, n_units, plan.shown(plan.runs_path)))
    summary = _write_summary(plan, runs, paths)
    _report_workers(failed_workers, complete=done == n_units)
    result = StudyResult(study_dir=plan.study_dir, study_name=plan.study_name, storage=plan.storage.label,
                         runs=runs, summary=summary, paths=paths, failed_workers=failed_workers)
    finish_parent(plan.mlflow, status="FINISHED" if done == n_units else "FAILED",
                  metrics={"runs_total": n_units, "runs_finished": done,
                           "runs_completed": int((runs["status"] == RunStatus.COMPLETED.value).sum())},
                  files=_output_files(paths))
    for line in flag_lines((summary or {}).get("flags") or []):
        say(line)
    say(f"{done} of {n_units} runs finished" + ("" if done == n_units else
                                                "; rerun the same command to finish the others"))
    for name, path in paths.items():
        say(f"{name}: {path}")
    return result


def _report_workers(failed_workers: list[tuple[int, int]], *, complete: bool) -> None:
    """Worker processes that failed: errors when units are missing, else warnings (the others ran its units)."""
    if not complete:
        report_failed_workers(failed_workers, "study worker")
        return
    for worker, status in failed_workers:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        print(f"warning: study worker {worker} {how}; the other workers ran its units: every run finished",
              file=sys.stderr)


def _parent_params(plan: Any) -> dict[str, Any]:
    """What the study's MLflow parent run records as params (few: MLflow takes 100 per request)."""
    return {"study_kind": plan.kind, "keys": list(plan.keys), "cells": [c["label"] for c in plan.cells],
            "reference": plan.reference, "preset": plan.preset, "base": plan.base}


def _output_files(paths: dict[str, Path]) -> list[tuple[Path, str | None]]:
    """The study's outputs logged to its parent run: every one but the particle data."""
    return [(path, None) for name, path in paths.items() if name != "data"]


def _write_summary(plan: Any, runs: Any, paths: dict[str, Path]) -> dict[str, Any] | None:
    """The summary table, figure and JSON (nnlab.study._summary); a failure there is a warning, not an error."""
    try:
        from nnlab.study._summary import write_study_outputs
    except ImportError as exc:
        warnings.warn(f"study summary not written: {exc}", UserWarning, stacklevel=4)
        return None
    # The summary counts status "completed" runs, a NaN test R² among them as diverged: so is a diverged run.
    runs = runs.assign(status=runs["status"].replace({RunStatus.DIVERGED.value: RunStatus.COMPLETED.value}))
    try:
        summary = write_study_outputs(plan.study_dir, plan.kind, runs, keys=plan.keys, reference=plan.reference)
    except (OSError, ValueError, TypeError, KeyError, ArithmeticError) as exc:
        # Optional output: the runs and their table are already safe on disk.
        warnings.warn(f"study summary not written: {type(exc).__name__}: {exc}", UserWarning, stacklevel=4)
        print(f"warning: study summary not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    for name, file in (("study_csv", f"{plan.kind}_study.csv"), ("figure", f"{plan.kind}_study.png"),
                       ("summary", f"{plan.kind}_summary.json")):
        if (plan.study_dir / file).exists():
            paths[name] = plan.study_dir / file
    return summary
