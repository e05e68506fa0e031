"""One study worker: claim (cell, seed) units from the Optuna study and train each through the normal pipeline.

The loop itself (claims, heartbeat, interruption, a lost database) is
:func:`nnlab.orchestration.run_claim_loop`; this module says what a unit is:
a cell's configuration with one seed, trained through :func:`nnlab.runs.execute`.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnlab._numbers import float_or_none
from nnlab.errors import NnlabError
from nnlab.orchestration import (
    OUTCOME_ATTR,
    claim_trial,
    give_back,
    one_line,
    open_worker_study,
    run_claim_loop,
    train_claimed,
)
from nnlab.runs import RunStatus
from nnlab.study._cells import SEED_KEY
from nnlab.study._flags import unit_notes
from nnlab.study._results import FORMATS, done_units, is_done, study_eta, write_runs

__all__ = ["DataChangedError", "UnitRecord", "changed_data_message", "data_change", "run_unit", "seed_source",
           "study_worker"]

logger = logging.getLogger(__name__)
# claim_trial's budget: a study's units are chosen by _next_unit, which returns None when none is left.
_NO_BUDGET = 2**62


@dataclass
class UnitRecord:
    """How one (cell, seed) ended, as recorded on its trial (``outcome`` is the run's status)."""

    status: RunStatus
    run_id: str = ""
    run_dir: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    duration_s: float = 0.0


def _unit(trial: Any) -> tuple[Any, Any]:
    return trial.user_attrs.get("cell"), trial.user_attrs.get("seed")


def _next_unit(plan: Any) -> Callable[[list[Any]], dict[str, Any] | None]:
    """``choose`` for claim_trial: the first unit, seed by seed, that no trial holds.

    A unit is held by a running trial, by a finished run (completed or
    diverged), or by a failure in this command (trial numbers from
    ``n_existing`` on) -- a failure of an earlier command is tried again.
    """
    from optuna.trial import TrialState

    def choose(counted: list[Any]) -> dict[str, Any] | None:
        held = {_unit(t) for t in counted
                if t.state == TrialState.RUNNING or is_done(t.user_attrs.get(OUTCOME_ATTR))
                or t.number >= plan.n_existing}
        for seed in plan.seeds:
            for cell in plan.cells:
                if (cell["id"], seed) not in held:
                    return {"cell": cell["id"], "seed": seed}
        return None

    return choose


def _held_elsewhere(study: Any, trial: Any) -> int | None:
    """Another trial that holds this trial's unit (a machine that claimed it at the same moment), or None.

    Workers on one machine claim under one lock and never collide; machines
    sharing a database can. The unit goes to its finished run, else to the
    trial that started first; the other gives way before training.
    """
    from optuna.trial import TrialState

    mine = study._storage.get_trial(trial._trial_id)
    unit = _unit(mine)
    rivals = [t for t in study.get_trials(deepcopy=False)
              if t.number != mine.number and _unit(t) == unit
              and (t.state == TrialState.RUNNING or is_done(t.user_attrs.get(OUTCOME_ATTR)))]
    for rival in rivals:
        if rival.state != TrialState.RUNNING:
            return rival.number
        if (rival.datetime_start, rival.number) < (mine.datetime_start, mine.number):
            return rival.number
    return None


def _claim(study: Any, plan: Any, owner: Mapping[str, Any]) -> Any | None:
    """The next unit's trial, or None when every unit is held; a unit claimed twice at once goes to one claim."""
    while True:
        trial = claim_trial(study, budget=_NO_BUDGET, lock_path=plan.lock_path, owner=owner,
                            choose=_next_unit(plan))
        if trial is None:
            return None
        rival = _held_elsewhere(study, trial)
        if rival is None:
            _record_unit_params(study, trial, plan)
            return trial
        # Without an outcome: not counted, never listed.
        give_back(study, trial, f"duplicate claim: trial {rival} holds this unit")


def _record_unit_params(study: Any, trial: Any, plan: Any) -> None:
    """The unit's cell key columns and seed as its trial's parameters, for optuna-dashboard's plots.

    Written through the storage: the values are the unit's, never a sampler's.
    The cell stays in the trial's attributes too (what the study itself reads).
    A study stored with other choices for a column (created with other cells)
    keeps that column as an attribute only: Optuna refuses mixed distributions.
    """
    import json

    cell = plan.cell_of(trial.user_attrs.get("cell"))
    if cell is None:
        return
    values = {**cell["key"], SEED_KEY: trial.user_attrs.get("seed")}
    for name, distribution in plan.param_distributions().items():
        value = values[name]
        if not (value is None or isinstance(value, (bool, int, float, str))):
            value = json.dumps(value, sort_keys=True)  # as the distribution names it
        try:
            study._storage.set_trial_param(trial._trial_id, name, distribution.to_internal_repr(value),
                                           distribution)
        except ValueError as exc:  # incompatible with the study's earlier trials: an attribute only
            logger.debug("trial %d: parameter %s not recorded: %s", trial.number, name, exc)


class DataChangedError(NnlabError):
    """The study's data file is not the one its record names (replaced, edited or gone mid-study)."""


def data_change(path: Path, expected_sha256: str) -> str | None:
    """How the study's data file differs from its record (one sentence), or None when it does not."""
    from nnlab.runs import file_digest

    try:
        found = file_digest(path)
    except OSError as exc:
        return f"the study's data '{path}' cannot be read ({exc.strerror or exc})"
    if found == expected_sha256:
        return None
    return (f"the study's data '{path}' changed since the study was created (SHA-256 {found[:12]}..., recorded "
            f"{expected_sha256[:12]}...)")


def changed_data_message(change: str, done: int, total: int, runs_path: Path) -> str:
    """The whole message of a study stopped by a changed data file: what ran, what to do."""
    return (f"{change}: the study stopped and nothing was trained on the changed file; {done} of {total} runs "
            f"had finished before (listed in {runs_path}). Restore the file and rerun the same command to "
            "finish the others, or start a new study (another --output-dir)")


class _SeedData:
    """The study's CSV (particles, or a table of the user's), as the data source of one seed's units: units run
    seed by seed."""

    def __init__(self, path: Path, base: Mapping[str, Any], expected_sha256: str, *, shown: str | None = None
                 ) -> None:
        self.path, self.sha256, self.base, self.shown = path, expected_sha256, base, shown
        self.check()

    def check(self) -> None:
        """Raise :class:`DataChangedError` unless the file still has the study's SHA-256 (before and after
        each unit: a file replaced mid-study is never trained on unseen)."""
        changed = data_change(self.path, self.sha256)
        if changed:
            raise DataChangedError(changed)

    def source(self, seed: int) -> Any:
        """The :class:`~nnlab.runs.DataSource` of a seed: the split depends on the seed only, so every
        cell of a seed trains on the same rows."""
        return seed_source(self.path, self.base, seed, sha256=self.sha256, shown=self.shown)


def seed_source(path: Path, base: Mapping[str, Any], seed: int, *, sha256: str | None = None,
                shown: str | None = None) -> Any:
    """The :class:`~nnlab.runs.DataSource` of a seed's units: the study's CSV split with the seed; a table
    when the base configuration chooses ``data_targets`` (with its ``data_features``, ``data_drop_missing``).
    ``shown``: the file as the user named it, for messages."""
    import dataclasses

    from nnlab.config import Config
    from nnlab.runs import DataSource

    cfg = Config.from_flat(base)
    training = cfg.training
    source = DataSource.from_csv(path, sha256=sha256, seed=cfg.generation.random_seed, random_state=seed,
                                 test_size=training.test_size, val_size=training.val_size,
                                 targets=training.data_targets, features=training.data_features,
                                 drop_missing=training.data_drop_missing)
    return dataclasses.replace(source, given_path=shown) if shown else source


def study_worker(plan: Any, worker: int, *, storage: Any = None, say: Callable[[str], None] | None = None) -> int:
    """Claim and train units of the plan's study until none is left; returns how many this worker ran.

    A line per finished unit goes to ``say``, or is printed when the plan asks for progress.
    ``storage``: the storage already opened by this process (an in-memory
    database exists only there); a spawned worker opens its own.
    """
    study = open_worker_study(plan.storage, plan.study_name, workers=plan.workers, storage=storage)
    data = _SeedData(plan.data_path, plan.base, plan.data_sha256, shown=plan.shown_data or None)

    def run_one(trial: Any) -> tuple[dict[str, Any], int, UnitRecord]:
        cell, seed = plan.cell_of(trial.user_attrs["cell"]), trial.user_attrs["seed"]
        try:
            data.check()
            return cell, seed, run_unit(study, trial, plan=plan, cell=cell, seed=seed, data=data)
        except DataChangedError as exc:  # the unit is not counted: the next command runs it again
            give_back(study, trial, str(exc))
            units = {(c["id"], s) for c in plan.cells for s in plan.seeds}
            write_runs(study, plan)
            raise DataChangedError(changed_data_message(str(exc), len(done_units(study) & units), len(units),
                                                        plan.shown(plan.runs_path))) from None

    return run_claim_loop(study, claim=lambda owner: _claim(study, plan, owner), run_one=run_one,
                          on_done=_unit_reporter(study, plan, say), label=plan.storage.label,
                          say=(lambda text: print(text, file=sys.stderr, flush=True)) if plan.progress else None)


def _unit_reporter(study: Any, plan: Any, say: Callable[[str], None] | None
              ) -> Callable[[tuple[dict[str, Any], int, UnitRecord]], None]:
    """After each unit: the runs table, and its line ``[done/total] cell seed=N: outcome``."""
    units = {(c["id"], s) for c in plan.cells for s in plan.seeds}

    def report(done: tuple[dict[str, Any], int, UnitRecord]) -> None:
        cell, seed, record = done
        write_runs(study, plan)
        if say is None and not plan.progress:
            return
        line = (f"[{len(done_units(study) & units)}/{len(units)}] {plan.label(cell)} {SEED_KEY}={seed}: "
                f"{_outcome_text(record)}  {study_eta(study, plan)}")
        for text in [line, *unit_notes(study, plan, cell, seed, record)]:
            if say is not None:
                say(text)
            else:
                print(text, flush=True)

    return report


def _outcome_text(record: UnitRecord) -> str:
    r2, took = record.metrics.get("test_r2"), record.duration_s
    if record.status == RunStatus.COMPLETED:
        shown = f"{r2:.4f}" if isinstance(r2, float) and math.isfinite(r2) else "n/a"
        return f"test R² {shown} ({took:.0f} s)"
    return f"{record.status} ({took:.0f} s)"


def run_unit(study: Any, trial: Any, *, plan: Any, cell: Mapping[str, Any], seed: int, data: _SeedData
             ) -> UnitRecord:
    """Train one (cell, seed) and record it on its trial; returns the record.

    A failure (an exception, a full disk) is recorded with its reason and the
    study goes on; the next command tries the unit again. Ctrl-C or SIGTERM
    (training stops after the current epoch) fails the trial without an
    outcome -- the unit is run again -- and raises ``KeyboardInterrupt``.
    """
    from optuna.trial import TrialState

    record, took = train_claimed(
        study, trial, lambda: _train_unit(plan=plan, cell=cell, seed=seed, data=data),
        interrupted=f"run {plan.label(cell)} seed={seed} interrupted; rerun the same command to continue the study")
    record.duration_s = took
    for key in ("run_id", "run_dir", "metrics", "duration_s"):
        trial.set_user_attr(key, getattr(record, key))
    if record.error:
        trial.set_user_attr("error", record.error)
    trial.set_user_attr(OUTCOME_ATTR, record.status.value)
    r2 = record.metrics.get("test_r2")
    if record.status == RunStatus.COMPLETED and r2 is not None:
        study.tell(trial, r2)
    else:
        study.tell(trial, state=TrialState.FAIL)
    return record


def _train_unit(*, plan: Any, cell: Mapping[str, Any], seed: int, data: _SeedData) -> UnitRecord:
    """Build, train, evaluate one unit."""
    from nnlab.config import Config
    from nnlab.runs import RunSpec, execute

    cfg = Config.from_flat(plan.base).updated({**cell["overrides"], SEED_KEY: seed}, source=cell["source"])
    tags = None
    if plan.mlflow is not None:
        cfg = cfg.updated(plan.mlflow.run_overrides(), source="--mlflow")
        tags = plan.mlflow.child_tags({"nnlab.study_name": plan.study_name, "nnlab.study_kind": plan.kind,
                                       "nnlab.cell": cell["label"], "nnlab.seed": seed,
                                       **{f"nnlab.cell.{k}": v for k, v in cell["key"].items()}})
    spec = RunSpec(cfg, data.source(seed), output_dir=plan.study_dir, preset=plan.preset, tags=tags)
    try:
        result = execute(spec)
    except Exception as exc:  # recorded on the unit's trial, not swallowed: the study goes on
        logger.debug("study unit %s seed %s failed", cell["label"], seed, exc_info=True)
        return UnitRecord(RunStatus.FAILED, error=one_line(exc))
    if result.status == RunStatus.INTERRUPTED:
        raise KeyboardInterrupt  # the run turned Ctrl-C/SIGTERM into a stop after the epoch
    data.check()  # replaced while this unit read it: its result is not the study's
    return UnitRecord(result.status, run_id=result.run_id, run_dir=str(result.run_dir),
                      metrics=_unit_metrics(result),
                      error=one_line(Exception(result.failure)) if result.failure else "")


def _steady_epoch_time(run_dir: Path) -> float | None:
    """Mean epoch time without the first epoch, which also traces and XLA-compiles
    the train step (seconds, against a fraction of a second per epoch after it):
    the per-step cost of a cell is what is compared."""
    import pandas as pd

    try:
        times = pd.read_csv(run_dir / "training_results.csv")["epoch_time"].to_numpy(float)
    except (OSError, KeyError, ValueError, pd.errors.ParserError):
        return None
    times = times[1:] if len(times) > 1 else times
    times = times[np.isfinite(times)]
    return float(times.mean()) if len(times) else None


def _unit_metrics(result: Any) -> dict[str, Any]:
    """The runs table's metrics of one run; the formats' R² from test_metrics.json when it has them."""
    import json

    history = (result.details.get("training") or {}).get("history") or {}
    val_mse = [v for v in (float_or_none(x) for x in history.get("val_mse", [])) if v is not None]
    metrics = {"test_r2": float_or_none(result.test_scaled.get("r2")),
               "best_val_mse": min(val_mse) if val_mse else None,
               "epoch_time_mean": _steady_epoch_time(result.run_dir)
               or float_or_none(result.summary.get("avg_epoch_time"))}
    formats: Any = (result.test or {}).get("formats")
    if not isinstance(formats, Mapping):
        try:
            saved = json.loads((result.run_dir / "test_metrics.json").read_text(encoding="utf-8"))
            formats = saved.get("formats") if isinstance(saved, Mapping) else None
        except (OSError, ValueError):
            formats = None
    for name in FORMATS:
        entry = formats.get(name) if isinstance(formats, Mapping) else None
        metrics[f"format_r2_{name}"] = float_or_none(entry.get("r2")) if isinstance(entry, Mapping) else None
    return metrics
