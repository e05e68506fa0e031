"""``run_search``: validate the settings, open the study, run the workers, report the best."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlab._files import probe_writable
from nnlab._redact import redact
from nnlab.errors import ConfigError
from nnlab.orchestration import (
    HEARTBEAT_GRACE_S,
    HEARTBEAT_INTERVAL_S,
    OUTCOME_ATTR,
    MlflowTarget,
    StorageSpec,
    budget_lock_path,
    capped_workers,
    check_positive,
    check_storage,
    counts_towards_budget,
    fail_interrupted_trials,
    finish_parent,
    open_parent,
    open_storage,
    open_study,
    progress_printer,
    report_failed_workers,
    resolve_mlflow,
    resolve_storage,
    run_workers,
    storage_spec,
    wait_for_running_trials,
)

__all__ = ["DEFAULT_PRESETS", "SearchSettings", "SearchSummary", "export_results", "plan_search", "run_search"]

DEFAULT_PRESETS = ("baseline", "deep_regularized")
DEFAULT_NUM_PARTICLES = 3000
DEFAULT_STUDY_NAME = "nnlab-hpo"
DEFAULT_BENCHMARK_STUDY_NAME = "nnlab-benchmark"
SAMPLERS = ("random", "tpe")
PRUNERS = ("none", "median", "hyperband")


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """Everything a search is run with; the keyword arguments of :func:`run_search`.

    Args:
        max_trials: finished trials the study should reach (complete, pruned or
            failed; interrupted trials do not count). Ignored with ``benchmarking``.
        presets: presets a trial samples its base configuration from.
        epochs, batch_size: training length and batch size of every trial.
        num_particles: particles simulated once per worker and shared by its trials.
        data: a CSV every trial trains on instead (``--data``): a particle CSV, or a
            table of your own with ``data_targets`` in ``overrides``; checked and
            prepared once, before any trial. Not with a non-default ``num_particles``.
        seed: seeds the data, the networks' initial weights and the samplers.
        output_dir: training output root; run directories go to ``<output_dir>/runs/``.
        output: the results CSV (default ``<output_dir>/analysis/hpo_results.csv``).
        benchmarking: train each preset once as-is instead of sampling.
        sampler: ``random`` or ``tpe``.
        pruner: ``none``, ``median`` or ``hyperband`` (default: none for random,
            median for tpe).
        startup_trials: trials TPE samples at random, and completed trials the
            median pruner waits for (default ``max_trials // 3`` within [2, 10]).
        storage: a journal file, or a database URL (``sqlite:///``,
            ``postgresql://``, ``mysql://``); default a journal file
            ``<output_dir>/analysis/hpo_journal.log``.
        study_name: default ``nnlab-hpo`` (``nnlab-benchmark`` with benchmarking),
            so rerunning a command continues its study.
        workers: processes running trials in parallel on the shared storage;
            capped at the CPUs available and at the trials left (see :func:`~nnlab.orchestration.cap_workers`).
        space: a ``--space`` JSON file, a dict in the same format, or None for
            the default space.
        config_dir: the ``ml_config`` directory.
        overrides: configuration keys applied to every trial (``--set``).
        mlflow: log to MLflow (``--mlflow``): a tracking URI, or ``""`` for
            ``sqlite:///<output_dir>/mlflow.db``; a parent run for the study and
            a child run per trial. None: only if the configuration sets
            ``mlflow_tracking_uri``. Not part of the study's settings: a rerun
            with or without it continues the same study.
        heartbeat_interval: database storages: seconds between a running
            trial's heartbeats (``--heartbeat``).
        grace_period: database storages: a running trial whose heartbeat is
            older than this is failed by the other workers (``--grace-period``).
        retries: database storages: how many times a trial failed that way (its
            worker killed, its machine gone) is run again with the same
            parameters (``--retries``; 0: never).
        verbose: print one line per trial and a summary.
    """

    max_trials: int = 10
    presets: tuple[str, ...] = DEFAULT_PRESETS
    epochs: int = 25
    batch_size: int = 64
    num_particles: int = DEFAULT_NUM_PARTICLES
    data: str | os.PathLike | None = None
    seed: int = 42
    output_dir: str = "training_output"
    output: str | None = None
    benchmarking: bool = False
    sampler: str = "random"
    pruner: str | None = None
    startup_trials: int | None = None
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    space: str | os.PathLike | Mapping[str, Any] | None = None
    config_dir: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    mlflow: str | None = None
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S
    grace_period: int = HEARTBEAT_GRACE_S
    retries: int = 1
    verbose: bool = True


@dataclass(frozen=True)
class SearchSummary:
    """What :func:`run_search` found.

    ``best_*`` are None when no trial completed; ``counts`` has complete,
    pruned and failed; ``failed_workers`` lists ``(worker, exit status)``.
    """

    study_name: str
    storage: str
    results_path: Path
    best_config_path: Path | None
    best_trial: int | None
    best_value: float | None
    best_preset: str | None
    best_overrides: dict[str, Any] | None
    counts: dict[str, int]
    failed_workers: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _SearchPlan:
    """The validated, resolved settings handed to each worker (picklable)."""

    settings: SearchSettings
    presets: tuple[str, ...]
    space: dict[str, Any]
    space_source: str
    base_configs: dict[str, dict[str, Any]]
    storage: StorageSpec
    study_name: str
    results: Path
    lock_path: Path
    budget: int
    pruner: str
    startup_trials: int
    fingerprint: dict[str, Any]
    mlflow: MlflowTarget | None = None


def plan_search(settings: SearchSettings) -> _SearchPlan:
    """Validate every setting, preset and the space, once, before any work.

    Raises:
        ConfigError: naming the setting, preset or space key at fault.
    """
    s = settings
    pruner = _check_settings(s)
    presets = _presets(s)
    if s.benchmarking and s.space is not None:
        raise ConfigError("--space cannot be combined with --benchmarking, which trains each preset as-is")
    space = _search_space(s)
    base = _base_configs(s, presets)
    data_record = _check_data(s, base, presets, space)
    mlflow = resolve_mlflow(s.mlflow, s.output_dir, [base[p] for p in presets])
    results, spec = _search_storage(s)
    study_name = s.study_name or (DEFAULT_BENCHMARK_STUDY_NAME if s.benchmarking else DEFAULT_STUDY_NAME)
    # Stored in the study (journal/database) and hpo_study.json: passwords masked, so a rerun with the same
    # password-bearing --set compares equal.
    fingerprint = redact(json.loads(json.dumps({
        "presets": list(presets), "benchmarking": s.benchmarking, "space": space.to_dict(),
        "epochs": s.epochs, "batch_size": s.batch_size, "num_particles": s.num_particles, "seed": s.seed,
        "overrides": dict(s.overrides), **({"data": data_record} if data_record is not None else {}),
    })))
    return _SearchPlan(
        settings=s, presets=presets, space=space.to_dict(), space_source=space.source, base_configs=base,
        storage=spec, study_name=study_name,
        results=results,
        lock_path=budget_lock_path(Path(s.output_dir) / "analysis", study_name),
        budget=len(presets) if s.benchmarking else s.max_trials,
        pruner=pruner,
        startup_trials=s.startup_trials or max(2, min(10, s.max_trials // 3)),
        fingerprint=fingerprint,
        mlflow=mlflow,
    )


def _check_settings(s: SearchSettings) -> str:
    """The numbers, the seed, the sampler, the pruner and the option types; returns the pruner."""
    from nnlab.config import SEED_MAX

    for name in ("max_trials", "epochs", "batch_size", "num_particles", "workers"):
        check_positive(name.replace("_", "-"), getattr(s, name))
    if s.startup_trials is not None:
        check_positive("startup-trials", s.startup_trials)
    check_positive("heartbeat", s.heartbeat_interval)
    check_positive("grace-period", s.grace_period)
    if s.grace_period <= s.heartbeat_interval:
        raise ConfigError(f"--grace-period ({s.grace_period} s) must be longer than --heartbeat "
                          f"({s.heartbeat_interval} s): a live trial would be failed between two heartbeats")
    if isinstance(s.retries, bool) or not isinstance(s.retries, int) or s.retries < 0:
        raise ConfigError(f"retries must be an integer >= 0, got {s.retries!r}")
    if isinstance(s.seed, bool) or not isinstance(s.seed, int) or not 0 <= s.seed <= SEED_MAX:
        # NumPy, scikit-learn and Optuna's samplers take 0 <= seed < 2**32.
        raise ConfigError(f"--seed must be an integer from 0 to 2**32 - 1 = {SEED_MAX} "
                          f"(what NumPy and scikit-learn accept), got {s.seed!r}")
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler!r}")
    pruner = s.pruner or ("median" if s.sampler == "tpe" else "none")
    if pruner not in PRUNERS:
        raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    return pruner


def _presets(s: SearchSettings) -> tuple[str, ...]:
    """The presets named, in order, each once."""
    names = s.presets.split(",") if isinstance(s.presets, str) else s.presets
    presets = tuple(dict.fromkeys(p.strip() for p in names if p.strip()))
    if not presets:
        raise ConfigError("presets: name at least one preset")
    return presets


def _search_space(s: SearchSettings) -> Any:
    """The :class:`~nnlab.hpo.SearchSpace`: empty when benchmarking, a dict, a file or the default."""
    from nnlab.hpo._space import SearchSpace, load_search_space

    if s.benchmarking:
        return SearchSpace({}, source="benchmarking")
    if isinstance(s.space, Mapping):
        return SearchSpace(s.space, source="search space")
    return load_search_space(s.space)


def _base_configs(s: SearchSettings, presets: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each preset's flat configuration with the search's fixed keys; they must share the data."""
    from nnlab.config import load_config
    from nnlab.hpo._space import DATA_KEYS

    fixed = {"epochs": s.epochs, "batch_size": s.batch_size, "seed": s.seed, "random_seed": s.seed,
             "num_particles_default": s.num_particles}
    base = {p: load_config(s.config_dir, preset=p, overrides={**fixed, **s.overrides}).to_flat() for p in presets}
    for p in presets[1:]:
        differ = [k for k in sorted(DATA_KEYS) if base[p][k] != base[presets[0]][k]]
        if differ:
            raise ConfigError(f"preset '{p}' sets {', '.join(differ)} differently from preset '{presets[0]}'; "
                              "the data is prepared once per search, so presets must share it")
    return base


def _check_data(s: SearchSettings, base: dict[str, dict[str, Any]], presets: tuple[str, ...], space: Any
                ) -> dict[str, Any] | None:
    """The search's data, checked once before anything is written; returns its record (None: simulated).

    A ``--data`` table is read, validated and split here (every problem at once,
    exit 2), and the split is kept for this process's trials. Table keys without
    ``--data``, and the physics loss on a table (set or sampled), are refused.
    """
    from nnlab.hpo._worker import data_source

    if s.data is not None and s.num_particles != DEFAULT_NUM_PARTICLES:
        raise ConfigError("--num-particles sets how many particles the search simulates; with --data FILE the "
                          "file is used as found: drop one of them")
    source = data_source(s, base[presets[0]])  # without --data: refuses the table keys
    if s.data is None:
        return None
    from nnlab.config import Config

    for preset in presets:
        source.check_config(Config.from_flat(base[preset]))  # e.g. the physics loss on a table
    high = space.upper_bound("physics_loss_weight")
    if source.task == "table" and high is not None and high > 0:
        raise ConfigError(f"{space.source}: physics_loss_weight samples values up to {high:g}; the physics-informed "
                          f"loss applies to the particle task only, and this search predicts "
                          f"{', '.join(source.targets)} from a table: leave physics_loss_weight out of the space")
    source.prepare()
    return {k: v for k, v in source.to_record().items() if k not in ("seed", "num_particles")}


def _search_storage(s: SearchSettings) -> tuple[Path, StorageSpec]:
    """The results CSV and the storage, checked: writable, distinct files, usable by the workers."""
    from nnlab.hpo._results import ResultPaths

    output_dir = Path(s.output_dir)
    results = Path(s.output) if s.output else output_dir / "analysis" / "hpo_results.csv"
    if results.is_dir():
        raise ConfigError(f"--output: '{results}' is a directory; give the results CSV file name")
    paths = ResultPaths(results)
    spec = storage_spec(s.storage, output_dir)
    _probe_writable("--output-dir", output_dir)
    from nnlab.runs import check_config_log, check_path_names

    check_path_names(output_dir)  # a UTF-8 path of names the file system allows: every run records it
    check_config_log(output_dir)  # every trial adds its row there: a foreign file is refused now
    _probe_writable("--output", results.parent)
    spec = resolve_storage(spec, workers=s.workers)
    _check_no_collision(paths, spec, output_dir)
    if spec.kind == "rdb":
        spec = dataclasses.replace(spec, heartbeat_interval=s.heartbeat_interval, grace_period=s.grace_period,
                                   retries=s.retries)
    if spec.per_process:
        # Its study vanishes with this search: results written by an earlier one are another study's.
        spec = dataclasses.replace(spec, instance=f"process {os.getpid()}, search {secrets.token_hex(4)}")
    return results, spec


def _check_no_collision(paths: Any, spec: StorageSpec, output_dir: Path) -> None:
    """The results, the storage file and the runs' configuration log must be different files."""
    storage_file = spec.location if spec.kind == "journal" else spec.sqlite_path
    written = {"--output": paths.results, "best_config.json": paths.best_config, "hpo_study.json": paths.study_file}
    for name, path in written.items():
        if storage_file is not None and path.resolve() == Path(storage_file).resolve():
            raise ConfigError(f"--storage: '{storage_file}' is also where the search writes {name}; "
                              "choose another --storage or --output")
    if paths.results.resolve() == (output_dir / "configuration_log.csv").resolve():
        raise ConfigError(f"--output: '{paths.results}' is the runs' configuration log of --output-dir "
                          f"'{output_dir}'; choose another --output")


def _probe_writable(option: str, directory: Path) -> None:
    """Fail early if ``directory`` could not be created and written, without creating anything."""
    try:
        probe_writable(directory)
    except OSError as exc:
        raise ConfigError(f"{option}: '{directory}' cannot be written: {exc.strerror or exc}") from None


def _counts(study: Any) -> dict[str, int]:
    """Finished trials by outcome: complete, pruned, failed."""
    from nnlab.hpo._results import TrialOutcome

    outcomes = [t.user_attrs.get(OUTCOME_ATTR) for t in study.get_trials(deepcopy=False)
                if t.state.is_finished() and counts_towards_budget(t)]
    return {outcome.value: outcomes.count(outcome.value) for outcome in TrialOutcome}


def run_search(settings: SearchSettings | None = None, /, **options: Any) -> SearchSummary:
    """Run (or continue) a hyperparameter search; see :class:`SearchSettings` for the options.

    Each trial trains through :func:`~nnlab.runs.execute` into its own run
    directory and reports validation R² every epoch to the pruner.
    The study lives in ``storage``; rerunning with the same settings continues
    it until ``max_trials`` trials have finished.

    Raises:
        ConfigError: a bad setting, preset, space or storage, before any training.

    Example:
        >>> from nnlab.hpo import run_search
        >>> summary = run_search(max_trials=3, epochs=2, num_particles=300,   # doctest: +SKIP
        ...                      presets=("fast_debug",), output_dir="hpo_demo")
        >>> summary.best_value, summary.best_config_path                     # doctest: +SKIP
    """
    from nnlab.hpo._results import ResultPaths, check_results_owner

    settings = dataclasses.replace(settings or SearchSettings(), **options)
    plan = plan_search(settings)
    say = progress_printer(settings.verbose)
    paths = ResultPaths(plan.results)
    check_results_owner(paths, plan.study_name, plan.storage.label)  # before the storage is even created
    storage = open_storage(plan.storage)
    study = open_study(storage, plan.study_name, plan.fingerprint, label=plan.storage.label)
    plan, left = _begin_search(plan, study, paths, say)
    failed_workers = _run_trials(plan, study, storage, paths, left)
    return _end_search(plan, study, paths, failed_workers, say)


def _begin_search(plan: _SearchPlan, study: Any, paths: Any, say: Callable[[str], None]
                  ) -> tuple[_SearchPlan, int]:
    """Fail interrupted trials, cap the workers, say where the study stands, open the MLflow parent.

    Returns:
        The plan (its workers capped, its parent run open) and the trials left to run.
    """
    from nnlab._files import locked
    from nnlab.hpo._results import write_results

    settings = plan.settings
    plan.lock_path.parent.mkdir(parents=True, exist_ok=True)
    with locked(plan.lock_path):
        interrupted = fail_interrupted_trials(study)
    finished = sum(_counts(study).values())
    workers = capped_workers(settings.workers, plan.budget - finished, say)
    if workers and workers != settings.workers:
        settings = dataclasses.replace(settings, workers=workers)
        plan = dataclasses.replace(plan, settings=settings)
    parts = [f"study '{plan.study_name}' ({plan.storage.label}): {finished} of {plan.budget} trials finished; "
             f"{settings.workers} worker{'s' if settings.workers > 1 else ''}",
             "  benchmarking " + ", ".join(plan.presets) if settings.benchmarking else (
                 f"  sampler {settings.sampler}, pruner {plan.pruner}, presets {', '.join(plan.presets)}, "
                 f"space: {plan.space_source}")]
    if settings.data is not None:
        targets = plan.fingerprint["data"].get("targets")
        parts.append(f"  data {settings.data}" + (f" (predicting {', '.join(targets)})" if targets else ""))
    for part in parts:  # each within 120 columns, but for a path longer than that
        for line in textwrap.wrap(part, width=120, subsequent_indent="    ", break_long_words=False,
                                  break_on_hyphens=False):
            say(line)
    for number, reason in interrupted:
        say(f"trial {number} was {reason}; it is not counted and will not be listed")
    write_results(study, paths, storage_label=plan.storage.label)
    if plan.mlflow is not None:
        plan = dataclasses.replace(plan, mlflow=open_parent(
            plan.mlflow, kind="hpo", study_name=plan.study_name, storage_label=plan.storage.label,
            params={"sampler": settings.sampler, "pruner": plan.pruner, **plan.fingerprint}, say=say,
            preset=",".join(plan.presets)))
    return plan, plan.budget - finished


def _run_trials(plan: _SearchPlan, study: Any, storage: Any, paths: Any, left: int) -> list[tuple[int, int]]:
    """The workers, in this process (one: the storage already open) or spawned; returns the failed ones."""
    from nnlab.hpo._worker import search_worker

    if left <= 0:
        return []
    n_existing = len(study.get_trials(deepcopy=False))
    workers = plan.settings.workers
    return run_workers(workers, here=lambda: search_worker(plan, 0, n_existing, storage=storage),
                       run=search_worker, args=[(plan, i, n_existing) for i in range(workers)],
                       name="nnlab-hpo-worker", label="worker", parent=plan.mlflow,
                       parent_metrics=lambda: _parent_metrics(_counts(study), None), files=_search_files(paths))


def _end_search(plan: _SearchPlan, study: Any, paths: Any, failed_workers: list[tuple[int, int]],
            say: Callable[[str], None]) -> SearchSummary:
    """Wait for trials running elsewhere, write the results, end the parent run, say the best."""
    from nnlab.hpo._results import format_best, write_results

    wait_for_running_trials(study, plan.lock_path, say)  # trials still training elsewhere on the study
    best = write_results(study, paths, storage_label=plan.storage.label)
    counts = _counts(study)
    finish_parent(plan.mlflow, status="FINISHED" if best is not None and not failed_workers else "FAILED",
                  metrics=_parent_metrics(counts, best), files=_search_files(paths))
    say(format_best(best, paths, counts).rstrip("\n"))
    report_failed_workers(failed_workers, "worker")
    return SearchSummary(
        study_name=plan.study_name, storage=plan.storage.label, results_path=paths.results,
        best_config_path=paths.best_config if best is not None else None,
        best_trial=best.number if best is not None else None,
        best_value=best.value if best is not None and math.isfinite(best.value) else None,
        best_preset=best.user_attrs.get("preset") if best is not None else None,
        best_overrides=best.user_attrs.get("overrides") if best is not None else None,
        counts=counts, failed_workers=failed_workers,
    )


def _search_files(paths: Any) -> list[tuple[Path, str | None]]:
    """The search's files logged to its MLflow parent run."""
    return [(paths.results, None), (paths.best_config, None), (paths.study_file, None)]


def export_results(directory: str | os.PathLike, *, storage: str | None, study_name: str | None,
                   output_dir: str | os.PathLike = "training_output") -> int:
    """``nnlab hpo --export DIR``: the study's results files rebuilt in ``DIR`` from its storage alone.

    Every machine of a search reaches the same files this way (the study's
    trials, best configuration and record), whatever it ran itself. Files in
    ``DIR`` that another study wrote are refused, like a search's.

    Returns:
        0 (the files were written), 1 when the study has no completed trial yet.

    Raises:
        ConfigError: no such study in the storage, or a bad storage or DIR.
    """
    import optuna

    from nnlab.hpo._results import (
        ResultPaths,
        check_results_owner,
        format_best,
        write_results,
    )

    spec = storage_spec(storage, output_dir)
    check_storage(spec)
    if spec.kind == "journal" and not Path(spec.location).is_file():
        raise ConfigError(f"--storage: journal file '{spec.location}' does not exist; give the search's "
                          "--storage (and --output-dir for the default journal)")
    name = study_name or DEFAULT_STUDY_NAME
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--export: '{target}' is not a directory")
    paths = ResultPaths(target / "hpo_results.csv")
    check_results_owner(paths, name, spec.label)
    study_storage = open_storage(spec)
    names = [s.study_name for s in study_storage.get_all_studies()]
    if name not in names:
        raise ConfigError(f"--study-name: no study '{name}' in {spec.label}; it has "
                          f"{', '.join(repr(n) for n in names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=study_storage)
    target.mkdir(parents=True, exist_ok=True)
    best = write_results(study, paths, storage_label=spec.label)
    print(format_best(best, paths, _counts(study)), end="")
    return 0 if best is not None else 1


def _parent_metrics(counts: Mapping[str, int], best: Any) -> dict[str, Any]:
    """The parent run's metrics: trials complete, pruned, failed; the best value and trial."""
    metrics: dict[str, Any] = {f"trials_{state}": n for state, n in counts.items()}
    if best is not None:
        metrics.update(best_value=best.value, best_trial=best.number)
    return metrics
