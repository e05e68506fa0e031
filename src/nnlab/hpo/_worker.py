"""One worker: prepare the data once, then claim and train trials until the budget is reached."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from nnlab.errors import ConfigError, NnlabError
from nnlab.hpo._results import ResultPaths, format_progress, write_results
from nnlab.hpo._space import SearchSpace
from nnlab.hpo._study import (
    OUTCOME_ATTR,
    POLL_S,
    StorageLostError,
    claim_trial,
    counts_towards_budget,
    heartbeat,
    is_connection_error,
    make_pruner,
    make_sampler,
    open_storage,
    reconnect,
    release_own_trials,
    running_elsewhere,
    worker_identity,
)

__all__ = ["run_worker", "worker_main", "sampler_seed"]

logger = logging.getLogger(__name__)


def sampler_seed(seed: int, worker: int, n_existing: int) -> int:
    """A distinct sampler seed per worker and per continuation of a study.

    ``n_existing`` (trials in the study when the command started) keeps a
    resumed random search from replaying the parameters of its first trials.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


def worker_main(plan: Any, worker: int, n_existing: int) -> None:
    """Entry point of a spawned worker process: errors as short messages, exit status 2."""
    from nnlab._tflog import quiet_tensorflow_import

    quiet_tensorflow_import()  # a fresh (spawned) process: its first TensorFlow import is quiet too
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_worker(plan, worker, n_existing)
    except NnlabError as exc:
        print(f"error: worker {worker}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except StorageLostError as exc:
        print(f"error: worker {worker}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _limit_threads(workers: int) -> None:
    # N workers on one machine: share the cores instead of each taking all of them.
    import tensorflow as tf

    threads = max(1, (os.cpu_count() or 1) // workers)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def data_source(plan: Any) -> Any:
    """The search's data: ``num_particles`` simulated and split with the search's seed (every trial the same)."""
    from nnlab.config import Config
    from nnlab.runs import DataSource

    cfg = Config.from_flat(plan.base_configs[plan.presets[0]])
    s = plan.settings
    return DataSource.simulated(s.num_particles, seed=s.seed, generation=cfg.generation, random_state=s.seed,
                                test_size=cfg.training.test_size, val_size=cfg.training.val_size)


def _next_preset(presets: tuple[str, ...]):
    """Benchmarking: the first preset no counted trial has taken yet."""

    def choose(counted: list[Any]) -> dict[str, str] | None:
        taken = {t.user_attrs.get("preset") for t in counted}
        remaining = [p for p in presets if p not in taken]
        return {"preset": remaining[0]} if remaining else None

    return choose


def run_worker(plan: Any, worker: int, n_existing: int, *, storage: Any = None) -> int:
    """Run trials of the plan's study until its budget is reached; returns how many this worker ran.

    ``storage``: the storage already opened by this process (an in-memory
    database exists only there); a spawned worker opens its own.
    """
    import optuna

    s = plan.settings
    if s.workers > 1:
        _limit_threads(s.workers)
    if storage is None:
        storage = open_storage(plan.storage)
    study = optuna.load_study(
        study_name=plan.study_name, storage=storage,
        sampler=make_sampler(s.sampler, seed=sampler_seed(s.seed, worker, n_existing),
                             startup_trials=plan.startup_trials),
        pruner=make_pruner(plan.pruner, startup_trials=plan.startup_trials, epochs=s.epochs),
    )
    data = data_source(plan)
    data.prepare()  # once, before the first claim: a data error ends the worker, not one trial after another
    space = SearchSpace(plan.space, source=plan.space_source)
    paths = ResultPaths(plan.results)
    owner = worker_identity()
    choose = _next_preset(plan.presets) if s.benchmarking else None
    ran = 0
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addFilter(_drop_retracing_warning)
    bar = _trial_bar(plan.budget, _finished_count(study)) if s.verbose and s.workers == 1 else None
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if s.verbose else None
    try:
        while True:
            try:
                trial = claim_trial(study, budget=plan.budget, lock_path=plan.lock_path, owner=owner,
                                    choose=choose)
                if trial is None:
                    if running_elsewhere(study):
                        # The budget is claimed, but a trial still runs elsewhere: if its worker dies, the
                        # trial is failed (heartbeat, or its process gone) and its retry is run here.
                        time.sleep(POLL_S)
                        continue
                    return ran
                frozen = run_trial(study, trial, plan=plan, space=space, data=data)
                ran += 1
                best = write_results(study, paths, storage_label=plan.storage.label)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                # Back: this worker's trial (if any) is failed and retried. StorageLostError if it stays away.
                reconnect(lambda: release_own_trials(study, owner), plan.storage.label, exc, say)
                continue
            if s.verbose:
                line = format_progress(frozen, best, worker=worker if s.workers > 1 else None)
                if bar is None:
                    print(line, flush=True)
                else:
                    bar.console.print(line, highlight=False, markup=False)
                    bar.update(bar.task_ids[0], completed=_finished_count(study))
    finally:
        if bar is not None:
            bar.stop()
        tf_logger.removeFilter(_drop_retracing_warning)


def _finished_count(study: Any) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts_towards_budget(t))


def _trial_bar(total: int, done: int):
    """On a terminal, a live "trials k/N" bar (rich) under the per-trial lines; None elsewhere."""
    if not sys.stdout.isatty():
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("trials {task.completed:.0f}/{task.total:.0f}"), BarColumn(bar_width=20),
                   TimeElapsedColumn(), transient=True)
    bar.add_task("search", total=total, completed=done)
    bar.start()
    return bar


def _drop_retracing_warning(record: logging.LogRecord) -> bool:
    # Every trial builds a new network, hence new tf.functions; TensorFlow's
    # "N out of the last M calls ... triggered tf.function retracing" heuristic
    # counts them as retracing, which here is expected, not a performance bug.
    return "triggered tf.function retracing" not in record.getMessage()


def run_trial(study: Any, trial: Any, *, plan: Any, space: SearchSpace, data: Any) -> Any:
    """Train one trial and tell the study how it ended; returns the finished (frozen) trial.

    A failure (bad sampled combination, exception, NaN loss) is recorded with its
    reason and the search goes on. Ctrl-C or SIGTERM (training stops after the
    current epoch) marks the trial interrupted -- failed without an outcome, so it
    is not counted -- and raises ``KeyboardInterrupt`` to end the search.
    """
    from optuna.trial import TrialState

    started = time.perf_counter()
    try:
        with heartbeat(study, trial):
            outcome, value, error = _train(trial, plan=plan, space=space, data=data)
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)")
        trial.set_user_attr("duration_s", round(time.perf_counter() - started, 3))
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} interrupted; rerun the same command to continue the study",
              file=sys.stderr, flush=True)
        raise
    trial.set_user_attr("duration_s", round(time.perf_counter() - started, 3))
    if error:
        trial.set_user_attr("error", error)
    trial.set_user_attr(OUTCOME_ATTR, outcome)
    if outcome == "complete":
        return study.tell(trial, value)
    return study.tell(trial, state=TrialState.PRUNED if outcome == "pruned" else TrialState.FAIL)


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _metrics(result: Any) -> dict[str, Any]:
    test, summary = result.test_scaled, result.summary
    return {
        "test_mse": test.get("mse"), "test_mae": test.get("mae"), "test_rmse": test.get("rmse"),
        "test_r2": test.get("r2"),
        "best_r2": summary.get("best_r2"), "final_r2": summary.get("current_r2"),
        "avg_epoch_time": summary.get("avg_epoch_time"), "total_epochs": summary.get("total_epochs"),
    }


def _finite_or_none(metrics: Mapping[str, Any]) -> dict[str, Any]:
    # Journal and database storages keep JSON; NaN/inf are not JSON.
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}


def _train(trial: Any, *, plan: Any, space: SearchSpace, data: Any) -> tuple[str, float | None, str]:
    """(outcome, objective value, error) of one trial: build, train, evaluate."""
    from nnlab.config import Config
    from nnlab.hpo._pruning import TrialPruningCallback
    from nnlab.runs import RunSpec, RunStatus, execute

    preset = trial.suggest_categorical("preset", list(plan.presets))
    overrides = space.sample(trial)
    trial.set_user_attr("preset", preset)
    trial.set_user_attr("overrides", overrides)
    try:
        cfg = Config.from_flat(plan.base_configs[preset]).updated(overrides, source=f"trial {trial.number}")
    except ConfigError as exc:
        return "failed", None, _one_line(exc)
    trial.set_user_attr("config", cfg.to_flat())
    run_cfg, tags = cfg, None
    if plan.mlflow is not None:
        # Only the run's: best_config.json and the trial's config stay free of the tracking store.
        run_cfg = cfg.updated(plan.mlflow.run_overrides(), source="--mlflow")
        tags = plan.mlflow.child_tags({"nnlab.hpo_study": plan.study_name, "nnlab.trial": trial.number,
                                       "nnlab.preset": preset})
    spec = RunSpec(run_cfg, data, output_dir=plan.settings.output_dir, preset=preset, tags=tags,
                   callbacks=[TrialPruningCallback(trial)])
    try:
        result = execute(spec)
    except Exception as exc:  # recorded on the trial, not swallowed: the search goes on
        logger.debug("trial %d failed", trial.number, exc_info=True)
        return "failed", None, _one_line(exc)
    trial.set_user_attr("run_id", result.run_id)
    trial.set_user_attr("run_dir", str(result.run_dir))
    metrics = _finite_or_none(_metrics(result))
    trial.set_user_attr("metrics", metrics)
    if result.status == RunStatus.INTERRUPTED:
        # The run turned Ctrl-C/SIGTERM into a clean stop after the epoch.
        raise KeyboardInterrupt
    if result.status == RunStatus.DIVERGED:
        return "failed", None, "training diverged (the loss became NaN/inf); try a smaller learning_rate"
    if result.status == RunStatus.PRUNED:
        return "pruned", None, ""
    if result.status.failed:
        # e.g. "failed: disk full": the run stopped itself and says why.
        return "failed", None, _one_line(Exception(result.failure or result.status))
    if metrics["best_r2"] is None:
        return "failed", None, "no finite validation R² was reached"
    return "complete", float(metrics["best_r2"]), ""
