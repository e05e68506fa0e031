"""The runs table: one row per (cell, seed), rebuilt from the trials in the storage."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlab.orchestration import OUTCOME_ATTR, eta_text
from nnlab.runs import RunStatus

__all__ = [
    "DONE_STATUSES",
    "FORMATS",
    "METRIC_COLUMNS",
    "RUN_COLUMNS",
    "StudyResult",
    "done_units",
    "is_done",
    "runs_frame",
    "runs_rows",
    "study_eta",
    "write_runs",
]

# The casts of nnlab.formats.FORMATS, then Keras' integer quantizers (test_metrics.json "formats").
FORMATS = ("bfloat16", "float16", "float8_e4m3", "float8_e5m2", "int8", "int4")
METRIC_COLUMNS = ("test_r2", "best_val_mse", "epoch_time_mean", *(f"format_r2_{f}" for f in FORMATS))
RUN_COLUMNS = ("seed", "run_id", "run_dir", "status", *METRIC_COLUMNS)
"""The columns of ``<kind>_runs.csv`` after the cell's key columns."""
# A finished run with one of these statuses (RunStatus.finished) is the unit's result; anything
# else (an exception, a full disk) is tried again by the next command.
DONE_STATUSES = tuple(status.value for status in RunStatus if status.finished)


def is_done(status: Any) -> bool:
    """Whether a recorded run status (a unit trial's outcome) is its unit's result: completed or diverged.

    Example:
        >>> is_done("diverged"), is_done("failed: disk full"), is_done(None)
        (True, False, False)
    """
    parsed = RunStatus.parse(status) if status is not None else None
    return parsed is not None and parsed.finished


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` produced.

    Attributes:
        study_dir: the study directory (runs/, the data, the outputs).
        study_name, storage: the Optuna study and where it lives.
        runs: one row per (cell, seed): the cell's key columns, then
            :data:`RUN_COLUMNS`; ``status`` is ``completed``, ``diverged``,
            ``failed: ...``, ``running`` (elsewhere) or ``pending``.
        summary: what the summary writer returned (None if it could not run).
        paths: every output by name (``runs``, ``data``, ``record``, and the
            summary's ``study_csv``, ``figure``, ``summary`` when written).
        failed_workers: ``(worker, exit status)`` of worker processes that failed.
    """

    study_dir: Path
    study_name: str
    storage: str
    runs: Any
    summary: dict[str, Any] | None
    paths: dict[str, Path]
    failed_workers: list[tuple[int, int]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every unit has its finished run (a worker that died while the others finished its units
        is in ``failed_workers``, but the study is complete)."""
        return bool((self.runs["status"].isin(DONE_STATUSES)).all())


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _pick(trials: list[Any]) -> Any | None:
    """The trial that stands for a unit: its earliest finished-and-done run, else a running one, else the latest."""
    from optuna.trial import TrialState

    done = [t for t in trials if t.state.is_finished() and is_done(t.user_attrs.get(OUTCOME_ATTR))]
    if done:
        return min(done, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        return min(running, key=lambda t: t.number)
    finished = [t for t in trials if t.state.is_finished() and OUTCOME_ATTR in t.user_attrs]
    return max(finished, key=lambda t: t.number) if finished else None


def runs_rows(study: Any, plan: Any) -> list[dict[str, Any]]:
    """One row per (cell, seed) of the plan, rebuilt from the trials in the storage."""
    from optuna.trial import TrialState

    by_unit: dict[tuple[str, int], list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        cell, seed = trial.user_attrs.get("cell"), trial.user_attrs.get("seed")
        if cell is not None and seed is not None:
            by_unit.setdefault((cell, seed), []).append(trial)
    rows = []
    for cell in plan.cells:
        for seed in plan.seeds:
            trial = _pick(by_unit.get((cell["id"], seed), []))
            row: dict[str, Any] = {**cell["key"], "seed": seed, "run_id": "", "run_dir": "", "status": "pending",
                                   **dict.fromkeys(METRIC_COLUMNS, math.nan)}
            if trial is not None:
                attrs = trial.user_attrs
                metrics = attrs.get("metrics") or {}
                row.update(run_id=attrs.get("run_id", ""), run_dir=attrs.get("run_dir", ""),
                           status=RunStatus.RUNNING.value if trial.state == TrialState.RUNNING
                           else attrs.get(OUTCOME_ATTR, ""),
                           **{k: _finite(metrics.get(k)) for k in METRIC_COLUMNS})
            rows.append(row)
    return rows


def done_units(study: Any) -> set[tuple[str, int]]:
    """The (cell id, seed) units that have their finished run."""
    return {(t.user_attrs.get("cell"), t.user_attrs.get("seed")) for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and is_done(t.user_attrs.get(OUTCOME_ATTR))}


def study_eta(study: Any, plan: Any) -> str:
    """The time left for the plan's runs (``eta ~M:SS``): its finished runs' mean duration, the runs left, the
    workers (:func:`nnlab.orchestration.eta_text`)."""
    units = {(c["id"], s) for c in plan.cells for s in plan.seeds}
    took: dict[tuple[str, int], float] = {}
    for t in study.get_trials(deepcopy=False):
        unit = (t.user_attrs.get("cell"), t.user_attrs.get("seed"))
        if unit in units and t.state.is_finished() and is_done(t.user_attrs.get(OUTCOME_ATTR)):
            took.setdefault(unit, _finite(t.user_attrs.get("duration_s")))
    durations = [d for d in took.values() if math.isfinite(d)]
    if not durations:
        return eta_text(0, len(units), 0.0, plan.workers)
    return eta_text(len(took), len(units), sum(durations) / len(durations) * len(took), plan.workers)


def write_runs(study: Any, plan: Any) -> list[dict[str, Any]]:
    """Rebuild ``<kind>_runs.csv`` from the storage, atomically (under the study's lock: never a stale one last)."""
    from nnlab._files import locked, write_csv_rows

    with locked(plan.runs_path):
        rows = runs_rows(study, plan)
        write_csv_rows(plan.runs_path, rows, [*plan.keys, *RUN_COLUMNS])
    return rows


def runs_frame(rows: list[dict[str, Any]], plan: Any) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=[*plan.keys, *RUN_COLUMNS])
