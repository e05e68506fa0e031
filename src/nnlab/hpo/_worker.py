"""One search worker: prepare the data once, then claim and train trials until the budget is reached.

The loop itself (claims, heartbeat, interruption, a lost database) is
:func:`nnlab.orchestration.run_claim_loop`; this module says what a trial is:
a sampled configuration, trained through :func:`nnlab.runs.execute`, ending
with a :class:`~nnlab.hpo._results.TrialOutcome`.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any

from nnlab._redact import redact
from nnlab.errors import ConfigError
from nnlab.hpo._results import ResultPaths, TrialOutcome, format_progress, write_results
from nnlab.hpo._space import SearchSpace
from nnlab.orchestration import (
    OUTCOME_ATTR,
    claim_trial,
    counts_towards_budget,
    eta_text,
    one_line,
    open_worker_study,
    run_claim_loop,
    train_claimed,
)

__all__ = ["data_source", "make_pruner", "make_sampler", "run_trial", "sampler_seed", "search_worker"]

logger = logging.getLogger(__name__)


def sampler_seed(seed: int, worker: int, n_existing: int) -> int:
    """A distinct sampler seed per worker and per continuation of a study.

    ``n_existing`` (trials in the study when the command started) keeps a
    resumed random search from replaying the parameters of its first trials.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


def make_sampler(kind: str, *, seed: int, startup_trials: int) -> Any:
    """``random`` or ``tpe`` (TPE samples its first ``startup_trials`` at random)."""
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(kind: str, *, startup_trials: int, epochs: int) -> Any:
    """``none``, ``median`` or ``hyperband``; epochs are the pruners' steps, numbered 1 to ``epochs``.

    The median pruner waits for ``startup_trials`` completed trials and, in each
    trial, for the first ``epochs // 5`` epochs (early R² is noisy): it prunes
    from step ``epochs // 5 + 1`` on, as Optuna skips the steps below
    ``n_warmup_steps``. Hyperband's resource is the epochs trained, 1 to ``epochs``.
    """
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=epochs // 5 + 1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def data_source(settings: Any, base: dict[str, Any]) -> Any:
    """The search's data (every trial the same), split with the search's seed: the ``--data`` CSV (a table
    with ``data_targets``), or ``num_particles`` simulated.

    Raises:
        ConfigError: a table key (``data_targets``, ...) without ``--data``.
    """
    from nnlab.config import Config
    from nnlab.runs import DataSource

    cfg = Config.from_flat(base)
    if settings.data is not None:
        from nnlab.data import check_data_file

        check_data_file(settings.data, option="--data", what="data file")
    return DataSource.for_config(cfg, csv_path=settings.data, num_particles=settings.num_particles,
                                 random_state=settings.seed)


def _next_preset(presets: tuple[str, ...]) -> Callable[[list[Any]], dict[str, str] | None]:
    """Benchmarking: the first preset no counted trial has taken yet."""

    def choose(counted: list[Any]) -> dict[str, str] | None:
        taken = {t.user_attrs.get("preset") for t in counted}
        remaining = [p for p in presets if p not in taken]
        return {"preset": remaining[0]} if remaining else None

    return choose


def search_worker(plan: Any, worker: int, n_existing: int, *, storage: Any = None) -> int:
    """Run trials of the plan's study until its budget is reached; returns how many this worker ran.

    ``storage``: the storage already opened by this process (an in-memory
    database exists only there); a spawned worker opens its own.
    """
    s = plan.settings
    study = open_worker_study(
        plan.storage, plan.study_name, workers=s.workers, storage=storage,
        sampler=make_sampler(s.sampler, seed=sampler_seed(s.seed, worker, n_existing),
                             startup_trials=plan.startup_trials),
        pruner=make_pruner(plan.pruner, startup_trials=plan.startup_trials, epochs=s.epochs),
    )
    data = data_source(s, plan.base_configs[plan.presets[0]])
    data.prepare()  # once, before the first claim: a data error ends the worker, not one trial after another
    space = SearchSpace(plan.space, source=plan.space_source)
    choose = _next_preset(plan.presets) if s.benchmarking else None
    bar = _trial_bar(plan.budget, _finished_count(study)) if s.verbose and s.workers == 1 else None
    try:
        return run_claim_loop(
            study,
            claim=lambda owner: claim_trial(study, budget=plan.budget, lock_path=plan.lock_path, owner=owner,
                                            choose=choose),
            run_one=lambda trial: run_trial(study, trial, plan=plan, space=space, data=data),
            on_done=_trial_reporter(study, plan, worker, bar),
            label=plan.storage.label,
            say=(lambda text: print(text, file=sys.stderr, flush=True)) if s.verbose else None,
            wait_for_retries=True)
    finally:
        if bar is not None:
            bar.stop()


def _trial_reporter(study: Any, plan: Any, worker: int, bar: Any) -> Callable[[Any], None]:
    """After each trial: the results files, and its line (above the bar on a terminal) with the time left."""
    paths = ResultPaths(plan.results)
    s = plan.settings

    def report(frozen: Any) -> None:
        best = write_results(study, paths, storage_label=plan.storage.label)
        if not s.verbose:
            return
        line = format_progress(frozen, best, worker=worker if s.workers > 1 else None, eta=_search_eta(study, plan))
        if bar is None:
            print(line, flush=True)
        else:
            bar.console.print(line, highlight=False, markup=False)
            bar.update(bar.task_ids[0], completed=_finished_count(study))

    return report


def _search_eta(study: Any, plan: Any) -> str:
    """The time left for the budget: the counted trials' mean duration, the trials left, the workers."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts_towards_budget(t)]
    took = sum(float(t.user_attrs.get("duration_s") or 0.0) for t in finished)
    return eta_text(len(finished), plan.budget, took, plan.settings.workers)


def _finished_count(study: Any) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts_towards_budget(t))


def _trial_bar(total: int, done: int) -> Any:
    """On a terminal, a live "trials k/N" bar (rich) under the per-trial lines; None elsewhere."""
    if not sys.stdout.isatty():
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("trials {task.completed:.0f}/{task.total:.0f}"), BarColumn(bar_width=20),
                   TimeElapsedColumn(), transient=True)
    bar.add_task("search", total=total, completed=done)
    bar.start()
    return bar


def run_trial(study: Any, trial: Any, *, plan: Any, space: SearchSpace, data: Any) -> Any:
    """Train one trial and tell the study how it ended; returns the finished (frozen) trial.

    A failure (bad sampled combination, exception, NaN loss) is recorded with its
    reason and the search goes on. Ctrl-C or SIGTERM (training stops after the
    current epoch) marks the trial interrupted -- failed without an outcome, so it
    is not counted -- and raises ``KeyboardInterrupt`` to end the search.
    """
    from optuna.trial import TrialState

    (outcome, value, error), took = train_claimed(
        study, trial, lambda: _train_trial(trial, plan=plan, space=space, data=data),
        interrupted=f"trial {trial.number} interrupted; rerun the same command to continue the study")
    trial.set_user_attr("duration_s", took)
    if error:
        trial.set_user_attr("error", error)
    trial.set_user_attr(OUTCOME_ATTR, outcome.value)
    if outcome is TrialOutcome.COMPLETE:
        return study.tell(trial, value)
    return study.tell(trial, state=TrialState.PRUNED if outcome is TrialOutcome.PRUNED else TrialState.FAIL)


def _trial_metrics(result: Any) -> dict[str, Any]:
    """The results table's metrics of a trial's run (non-finite values as None: storages keep JSON)."""
    test, summary = result.test_scaled, result.summary
    metrics = {
        "test_mse": test.get("mse"), "test_mae": test.get("mae"), "test_rmse": test.get("rmse"),
        "test_r2": test.get("r2"),
        "best_r2": summary.get("best_r2"), "final_r2": summary.get("current_r2"),
        "avg_epoch_time": summary.get("avg_epoch_time"), "total_epochs": summary.get("total_epochs"),
    }
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}


def _run_spec(trial: Any, cfg: Any, *, preset: str, plan: Any, data: Any) -> Any:
    """The trial's :class:`~nnlab.runs.RunSpec`: its configuration, MLflow child run and pruning callback."""
    from nnlab.hpo._pruning import TrialPruningCallback
    from nnlab.runs import RunSpec

    run_cfg, tags = cfg, None
    if plan.mlflow is not None:
        # Only the run's: best_config.json and the trial's config stay free of the tracking store.
        run_cfg = cfg.updated(plan.mlflow.run_overrides(), source="--mlflow")
        tags = plan.mlflow.child_tags({"nnlab.hpo_study": plan.study_name, "nnlab.trial": trial.number,
                                       "nnlab.preset": preset})
    return RunSpec(run_cfg, data, output_dir=plan.settings.output_dir, preset=preset, tags=tags,
                   callbacks=[TrialPruningCallback(trial)])


def _train_trial(trial: Any, *, plan: Any, space: SearchSpace, data: Any
                 ) -> tuple[TrialOutcome, float | None, str]:
    """(outcome, objective value, error) of one trial: sample, train, judge."""
    from nnlab.config import Config
    from nnlab.runs import execute

    preset = trial.suggest_categorical("preset", list(plan.presets))
    overrides = space.sample(trial)
    trial.set_user_attr("preset", preset)
    trial.set_user_attr("overrides", overrides)
    if data.kind == "csv":  # a retrain of the best configuration needs the file: the summary names it
        trial.set_user_attr("data", data.given_path or data.csv_path)
    try:
        cfg = Config.from_flat(plan.base_configs[preset]).updated(overrides, source=f"trial {trial.number}")
    except ConfigError as exc:
        return TrialOutcome.FAILED, None, one_line(exc)
    trial.set_user_attr("config", redact(cfg.to_flat()))  # stored in the journal/database: no password
    spec = _run_spec(trial, cfg, preset=preset, plan=plan, data=data)
    try:
        result = execute(spec)
    except Exception as exc:  # recorded on the trial, not swallowed: the search goes on
        logger.debug("trial %d failed", trial.number, exc_info=True)
        return TrialOutcome.FAILED, None, one_line(exc)
    return _judge(trial, result)


def _judge(trial: Any, result: Any) -> tuple[TrialOutcome, float | None, str]:
    """Record the trial's run and metrics; its outcome from the run's status and validation R²."""
    from nnlab.runs import RunStatus

    trial.set_user_attr("run_id", result.run_id)
    trial.set_user_attr("run_dir", str(result.run_dir))
    metrics = _trial_metrics(result)
    trial.set_user_attr("metrics", metrics)
    if result.status == RunStatus.INTERRUPTED:
        # The run turned Ctrl-C/SIGTERM into a clean stop after the epoch.
        raise KeyboardInterrupt
    if result.status == RunStatus.DIVERGED:
        return TrialOutcome.FAILED, None, result.divergence_message
    if result.status == RunStatus.PRUNED:
        return TrialOutcome.PRUNED, None, ""
    if result.status.failed:
        # e.g. "failed: disk full": the run stopped itself and says why.
        return TrialOutcome.FAILED, None, one_line(Exception(result.failure or result.status))
    if metrics["best_r2"] is None:
        return TrialOutcome.FAILED, None, "no finite validation R² was reached"
    return TrialOutcome.COMPLETE, float(metrics["best_r2"]), ""
