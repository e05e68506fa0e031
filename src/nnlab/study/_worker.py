"""One study worker: claim (cell, seed) units from the Optuna study and train each through the normal pipeline."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnlab._numbers import float_or_none
from nnlab.errors import NnlabError
from nnlab.hpo._study import (
    OUTCOME_ATTR,
    claim_trial,
    heartbeat,
    open_storage,
    worker_identity,
)
from nnlab.study._cells import SEED_KEY
from nnlab.study._results import DONE_STATUSES, FORMATS, done_units, write_runs

__all__ = ["run_worker", "worker_main"]

logger = logging.getLogger(__name__)
# claim_trial's budget: a study's units are chosen by _next_unit, which returns None when none is left.
_NO_BUDGET = 2**62


def worker_main(plan: Any, worker: int) -> None:
    """Entry point of a spawned worker process: errors as short messages, exit status 2."""
    from nnlab._tflog import quiet_tensorflow_import

    quiet_tensorflow_import()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_worker(plan, worker)
    except NnlabError as exc:
        print(f"error: study worker {worker}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _unit(trial: Any) -> tuple[Any, Any]:
    return trial.user_attrs.get("cell"), trial.user_attrs.get("seed")


def _next_unit(plan: Any):
    """``choose`` for claim_trial: the first unit, seed by seed, that no trial holds.

    A unit is held by a running trial, by a finished run (completed or
    diverged), or by a failure in this command (trial numbers from
    ``n_existing`` on) -- a failure of an earlier command is tried again.
    """
    from optuna.trial import TrialState

    def choose(counted: list[Any]) -> dict[str, Any] | None:
        held = {_unit(t) for t in counted
                if t.state == TrialState.RUNNING or t.user_attrs.get(OUTCOME_ATTR) in DONE_STATUSES
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
              and (t.state == TrialState.RUNNING or t.user_attrs.get(OUTCOME_ATTR) in DONE_STATUSES)]
    for rival in rivals:
        if rival.state != TrialState.RUNNING:
            return rival.number
        if (rival.datetime_start, rival.number) < (mine.datetime_start, mine.number):
            return rival.number
    return None


def _claim(study: Any, plan: Any, owner: Mapping[str, Any]) -> Any | None:
    from optuna.trial import TrialState

    while True:
        trial = claim_trial(study, budget=_NO_BUDGET, lock_path=plan.lock_path, owner=owner,
                            choose=_next_unit(plan))
        if trial is None:
            return None
        rival = _held_elsewhere(study, trial)
        if rival is None:
            return trial
        trial.set_user_attr("error", f"duplicate claim: trial {rival} holds this unit")
        study.tell(trial, state=TrialState.FAIL)  # without an outcome: not counted, never listed


def _limit_threads(workers: int) -> None:
    from nnlab.hpo._worker import _limit_threads as limit

    limit(workers)


class _SeedData:
    """The study's particle CSV, as the data source of one seed's units: units run seed by seed."""

    def __init__(self, path: Path, base: Mapping[str, Any], expected_sha256: str) -> None:
        from nnlab.config import Config
        from nnlab.runs import file_digest

        cfg = Config.from_flat(base)
        self.path, self.sha256 = path, expected_sha256
        self.training, self.generation_seed = cfg.training, cfg.generation.random_seed
        found = file_digest(path)
        if found != expected_sha256:
            raise NnlabError(f"the study's data '{path}' changed since the study was created (SHA-256 "
                             f"{found[:12]}..., recorded {expected_sha256[:12]}...); restore it, or start a new study")

    def source(self, seed: int) -> Any:
        """The :class:`~nnlab.runs.DataSource` of a seed: the split depends on the seed only, so every
        cell of a seed trains on the same rows."""
        from nnlab.runs import DataSource

        return DataSource.from_csv(self.path, sha256=self.sha256, seed=self.generation_seed, random_state=seed,
                                   test_size=self.training.test_size, val_size=self.training.val_size)


def run_worker(plan: Any, worker: int, *, storage: Any = None, say: Callable[[str], None] | None = None) -> int:
    """Claim and train units of the plan's study until none is left; returns how many this worker ran.

    A line per finished unit goes to ``say``, or is printed when the plan asks for progress.
    """
    import optuna

    if plan.workers > 1:
        _limit_threads(plan.workers)
    if storage is None:
        storage = open_storage(plan.storage)
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    data = _SeedData(plan.data_path, plan.base, plan.data_sha256)
    owner = worker_identity()
    n_units = len(plan.cells) * len(plan.seeds)
    units = {(c["id"], s) for c in plan.cells for s in plan.seeds}
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addFilter(_drop_retracing_warning)
    ran = 0
    try:
        while True:
            trial = _claim(study, plan, owner)
            if trial is None:
                return ran
            cell = plan.cell_of(trial.user_attrs["cell"])
            seed = trial.user_attrs["seed"]
            record = run_unit(study, trial, plan=plan, cell=cell, seed=seed, data=data)
            ran += 1
            write_runs(study, plan)
            if say is not None or plan.progress:
                done = len(done_units(study) & units)
                line = f"[{done}/{n_units}] {plan.label(cell)} {SEED_KEY}={seed}: {_outcome_text(record)}"
                if say is not None:
                    say(line)
                else:
                    print(line, flush=True)
    finally:
        tf_logger.removeFilter(_drop_retracing_warning)


def _outcome_text(record: Mapping[str, Any]) -> str:
    status, r2, took = record["status"], record["metrics"].get("test_r2"), record["duration_s"]
    if status == "completed":
        shown = f"{r2:.4f}" if isinstance(r2, float) and math.isfinite(r2) else "n/a"
        return f"test R² {shown} ({took:.0f} s)"
    return f"{status} ({took:.0f} s)"


def _drop_retracing_warning(record: logging.LogRecord) -> bool:
    # Every unit builds a new network and new tf.functions: expected, not a performance bug.
    return "triggered tf.function retracing" not in record.getMessage()


def run_unit(study: Any, trial: Any, *, plan: Any, cell: Mapping[str, Any], seed: int, data: _SeedData
             ) -> dict[str, Any]:
    """Train one (cell, seed) and record it on its trial; returns the record.

    A failure (an exception, a full disk) is recorded with its reason and the
    study goes on; the next command tries the unit again. Ctrl-C or SIGTERM
    (training stops after the current epoch) fails the trial without an
    outcome -- the unit is run again -- and raises ``KeyboardInterrupt``.
    """
    from optuna.trial import TrialState

    started = time.perf_counter()
    try:
        with heartbeat(study, trial):
            record = _train(plan=plan, cell=cell, seed=seed, data=data)
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)")
        study.tell(trial, state=TrialState.FAIL)
        print(f"run {plan.label(cell)} seed={seed} interrupted; rerun the same command to continue the study",
              file=sys.stderr, flush=True)
        raise
    record["duration_s"] = round(time.perf_counter() - started, 3)
    for key in ("run_id", "run_dir", "metrics", "duration_s"):
        trial.set_user_attr(key, record[key])
    if record.get("error"):
        trial.set_user_attr("error", record["error"])
    trial.set_user_attr(OUTCOME_ATTR, record["status"])
    r2 = record["metrics"].get("test_r2")
    if record["status"] == "completed" and r2 is not None:
        study.tell(trial, r2)
    else:
        study.tell(trial, state=TrialState.FAIL)
    return record


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _train(*, plan: Any, cell: Mapping[str, Any], seed: int, data: _SeedData) -> dict[str, Any]:
    """Build, train, evaluate one unit: ``status``, ``run_id``, ``run_dir``, ``metrics``, ``error``."""
    from nnlab.config import Config
    from nnlab.runs import RunSpec, RunStatus, execute

    record: dict[str, Any] = {"run_id": "", "run_dir": "", "metrics": {}, "error": ""}
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
        return {**record, "status": RunStatus.FAILED.value, "error": _one_line(exc)}
    if result.status == RunStatus.INTERRUPTED:
        raise KeyboardInterrupt  # the run turned Ctrl-C/SIGTERM into a stop after the epoch
    record.update(run_id=result.run_id, run_dir=str(result.run_dir), status=result.status.value,
                  metrics=_metrics(result))
    if result.failure:
        record["error"] = _one_line(Exception(result.failure))
    return record


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


def _metrics(result: Any) -> dict[str, Any]:
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
