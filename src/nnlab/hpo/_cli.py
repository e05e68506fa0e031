"""``nnlab hpo`` / ``python hpo_agent.py``: the options and the command."""

from __future__ import annotations

import argparse
import json

from nnlab._argtypes import non_negative_int as _non_negative_int
from nnlab._argtypes import positive_int as _positive_int
from nnlab._argtypes import seed_int as _seed_int
from nnlab.errors import ConfigError

__all__ = ["add_arguments", "run"]


def _preset_list(text: str) -> tuple[str, ...]:
    presets = tuple(p.strip() for p in text.split(",") if p.strip())
    if not presets:
        raise argparse.ArgumentTypeError(f"expected comma-separated preset names, got '{text}'")
    return presets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nnlab hpo`` and ``python hpo_agent.py``."""
    from nnlab.hpo._search import DEFAULT_PRESETS, PRUNERS, SAMPLERS

    parser.description = ("Hyperparameter search on Optuna. Rerunning the same command continues its study "
                          "until --max-trials trials have finished.")
    add = parser.add_argument
    add("--max-trials", type=_positive_int, default=10, metavar="N",
        help="finished trials the study should reach, counting earlier runs of it (default: 10)")
    add("--presets", type=_preset_list, default=DEFAULT_PRESETS, metavar="NAME[,NAME...]",
        help=f"presets sampled as each trial's base configuration (default: {','.join(DEFAULT_PRESETS)})")
    add("--epochs", type=_positive_int, default=25, metavar="N", help="epochs per trial (default: 25)")
    add("--batch-size", type=_positive_int, default=64, metavar="N", help="batch size (default: 64)")
    add("--num-particles", type=_positive_int, metavar="N",
        help="particles simulated once per worker and shared by its trials (default: 3000); not with --data")
    add("--data", metavar="FILE",
        help="train every trial on this CSV, never modified: a particle CSV, or with --targets a table of your "
             "own (checked once, before any trial)")
    from nnlab._argtypes import add_table_arguments

    add_table_arguments(parser)
    add("--seed", type=_seed_int, default=42, metavar="N",
        help="seed of the data, initial weights and samplers (default: 42)")
    add("--output-dir", default="training_output", metavar="DIR",
        help="training output root: runs/<run_id>/ per trial (default: training_output)")
    add("--output", metavar="FILE",
        help="results CSV (default: <output-dir>/analysis/hpo_results.csv); best_config.json goes next to it")
    add("--benchmarking", action="store_true", help="train each preset once as-is, no sampling (--max-trials is ignored)")
    add("--space", metavar="FILE", help="search space JSON file (default: the built-in space; see --show-space)")
    add("--show-space", action="store_true", help="print the search space as JSON and exit")
    add("--export", metavar="DIR",
        help="write hpo_results.csv, best_config.json and hpo_study.json of the study (--storage, --study-name) "
             "into DIR from the storage alone, on any machine, and exit; no training")
    add("--sampler", choices=SAMPLERS, default="random", help="Optuna sampler (default: random)")
    add("--pruner", choices=PRUNERS, help="default: none for random, median for tpe")
    add("--startup-trials", type=_positive_int, metavar="N",
        help="trials TPE samples at random and completed trials the median pruner waits for "
             "(default: max-trials // 3, within 2..10)")
    add("--storage", metavar="URL|FILE",
        help="Optuna storage: a journal FILE or a database URL (sqlite:///, postgresql://, mysql://); "
             "default: <output-dir>/analysis/hpo_journal.log")
    add("--heartbeat", dest="heartbeat_interval", type=_positive_int, default=30, metavar="SECONDS",
        help="database storages: seconds between a running trial's heartbeats (default: 30)")
    add("--grace-period", type=_positive_int, default=120, metavar="SECONDS",
        help="database storages: a trial without a heartbeat for this long (its worker or machine died) is "
             "failed by the other workers (default: 120)")
    add("--retries", type=_non_negative_int, default=1, metavar="N",
        help="database storages: run a trial failed that way again, up to N times (default: 1; 0: never)")
    add("--study-name", metavar="NAME",
        help="the Optuna study's name (default: nnlab-hpo; nnlab-benchmark with --benchmarking)")
    add("--workers", type=_positive_int, default=1, metavar="N", help="processes sharing the study (default: 1)")
    add("--config-dir", metavar="DIR", help="configuration directory (default: ./ml_config, or $NNLAB_CONFIG_DIR)")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="configuration key applied to every trial (repeatable); VALUE is JSON or a plain string")
    from nnlab.integrations import MLFLOW_OPTION_HELP

    add("--mlflow", nargs="?", const="", metavar="URI",
        help=MLFLOW_OPTION_HELP + "; a parent run per study, a child run per trial")


def run(args: argparse.Namespace) -> int:
    """Run the search; 0 when a trial completed, 1 when none did or a worker failed."""
    import optuna

    from nnlab._argtypes import table_overrides
    from nnlab.config import parse_overrides
    from nnlab.hpo._search import DEFAULT_NUM_PARTICLES, SearchSettings, run_search
    from nnlab.hpo._space import load_search_space

    if args.show_space:
        print(json.dumps(load_search_space(args.space).to_dict(), indent=2))
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints its own progress
    if args.export is not None:
        from nnlab.hpo._search import export_results

        return export_results(args.export, storage=args.storage, study_name=args.study_name,
                              output_dir=args.output_dir)
    if args.data is not None and args.num_particles is not None:
        raise ConfigError("--num-particles sets how many particles the search simulates; with --data FILE the "
                          "file is used as found: drop one of them")
    settings = SearchSettings(
        max_trials=args.max_trials, presets=args.presets, epochs=args.epochs, batch_size=args.batch_size,
        num_particles=args.num_particles or DEFAULT_NUM_PARTICLES, data=args.data, seed=args.seed, output_dir=args.output_dir, output=args.output,
        benchmarking=args.benchmarking, sampler=args.sampler, pruner=args.pruner,
        startup_trials=args.startup_trials, storage=args.storage, study_name=args.study_name,
        workers=args.workers, space=args.space, config_dir=args.config_dir,
        overrides={**parse_overrides(args.overrides), **table_overrides(args)}, mlflow=args.mlflow, heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period, retries=args.retries,
    )
    from nnlab.orchestration import exit_on_lost_storage

    def search() -> int:
        summary = run_search(settings)
        return 0 if summary.best_trial is not None and not summary.failed_workers else 1

    # A lost database: one message and exit status 1, whether a worker or this process noticed it.
    return exit_on_lost_storage(search)
