"""``nnlab study precision|compare``: the options and the command."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]

_PRECISION_HELP = (
    "Bits × rounding study: one reference cell per policy (rounding none, 24 bits: plain training) plus every "
    "rounding × bits × policy with bits < 24 (24 bits with any rounding is the identity, i.e. the reference). "
    "In every cell the dampeners, the change limit and James-Stein are off and only BinaryPrecisionMax(bits, "
    "rounding) is on, on the given schedule.")
_COMPARE_HELP = "A/B(/C...) study of named variants of the configuration; the first variant is the reference."


def _common(parser: argparse.ArgumentParser, kind: str) -> None:
    from nnlab._argtypes import positive_int

    add = parser.add_argument
    add("--seeds", type=int, default=6, metavar="N",
        help="seeds 0..N-1; every cell runs once per seed, cells of a seed share the data split and initial "
             "weights (default 6: the smallest N at which the exact two-sided paired Wilcoxon test can reach "
             "p < 0.05). A rerun with a larger N extends the study")
    add("--epochs", type=positive_int, metavar="N", help="epochs per run (config key epochs)")
    add("--num-particles", type=positive_int, metavar="N",
        help="particles simulated once per study (config key num_particles_default); not with --data")
    add("--data", metavar="FILE", help="train every run on this CSV, never modified: a particle CSV (validated), "
                                       "or with --targets a table of your own (checked once, before any run)")
    from nnlab._argtypes import add_table_arguments

    add_table_arguments(parser)
    add("--preset", metavar="NAME", help="a preset from ml_config/model_presets/ as the base configuration")
    add("--config-dir", metavar="DIR", help="configuration directory (default: ./ml_config, or $NNLAB_CONFIG_DIR)")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="configuration key of every run (repeatable); VALUE is JSON or a plain string")
    add("--output-dir", metavar="DIR",
        help=f"the study directory: runs/, the data, the journal and the outputs "
             f"(default: training_output/studies/{kind})")
    add("--workers", type=positive_int, default=1, metavar="N",
        help="processes sharing the study (default 1; capped at the CPUs available and the runs left)")
    add("--storage", metavar="URL|FILE",
        help="Optuna storage: a journal FILE or a database URL (sqlite:///, postgresql://, mysql://) that "
             "several machines can share; default: <output-dir>/study_journal.log")
    add("--study-name", metavar="NAME", help=f"the Optuna study's name (default: nnlab-study-{kind})")
    from nnlab.integrations import MLFLOW_OPTION_HELP

    add("--mlflow", nargs="?", const="", metavar="URI",
        help=MLFLOW_OPTION_HELP.replace("<output-dir>", "<training output>")
        + " (a study under <training output>/studies/ shares its store with train and hpo, else its own "
        "directory's); a parent run per study, a child run per (cell, seed)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands and options of ``nnlab study``."""
    from nnlab._argtypes import Parser

    parser.description = ("Controlled multi-seed comparisons: every (cell, seed) is one normal training run. "
                          "Rerunning the same command finishes a killed study without redoing finished runs.")
    commands = parser.add_subparsers(dest="study_command", required=True, parser_class=Parser,
                                     metavar="COMMAND")
    precision = commands.add_parser("precision", help="how many significant bits, and which rounding",
                                    description=_PRECISION_HELP)
    precision.add_argument("--bits", default="24,12,8,6,4,3,2", metavar="N[,N...]",
                           help="significant bits 1..24 (default 24,12,8,6,4,3,2; 24 is the reference)")
    precision.add_argument("--rounding", default="truncate,nearest,stochastic", metavar="NAME[,NAME...]",
                           help="truncate, nearest, stochastic (default: all three)")
    precision.add_argument("--schedule", default="step", metavar="{step,epoch}",
                           help="step (round after every optimizer step) or epoch (every constraint_interval "
                                "epochs); default step")
    precision.add_argument("--policy", default="float32", metavar="NAME[,NAME...]",
                           help="float32, mixed_bfloat16, mixed_float16 (default float32)")
    _common(precision, "precision")
    compare = commands.add_parser("compare", help="A/B(/C) comparison of named variants",
                                  description=_COMPARE_HELP)
    compare.add_argument("--variant", dest="variants", action="append", default=[], metavar='NAME="KEY=VALUE ..."',
                         help="a variant: its name and the configuration keys it sets (repeat; two or more; "
                              "NAME= alone is the base configuration)")
    _common(compare, "compare")


def _spec(args: argparse.Namespace):
    from nnlab.config import parse_overrides
    from nnlab.errors import ConfigError
    from nnlab.study._cells import StudySpec

    from nnlab._argtypes import table_overrides

    base = {**parse_overrides(args.overrides), **table_overrides(args)}
    if args.epochs is not None:
        base["epochs"] = args.epochs
    if args.num_particles is not None:
        if args.data is not None:
            raise ConfigError("--num-particles sets how many particles the study simulates; with --data FILE the "
                              "file is used as found: drop one of them")
        base["num_particles_default"] = args.num_particles
    common = dict(seeds=args.seeds, base=base, preset=args.preset, config_dir=args.config_dir)
    if args.study_command == "precision":
        return StudySpec.precision(bits=args.bits, rounding=args.rounding, schedule=args.schedule,
                                   policies=args.policy, **common)
    return StudySpec.compare(args.variants, **common)


def run(args: argparse.Namespace) -> int:
    """Run the study; 0 when every (cell, seed) has its finished run, 1 otherwise."""
    from nnlab.orchestration import exit_on_lost_storage
    from nnlab.study._engine import run_study

    spec = _spec(args)

    def study() -> int:
        result = run_study(spec, output_dir=args.output_dir, workers=args.workers, storage=args.storage,
                           study_name=args.study_name, data=args.data, mlflow=args.mlflow)
        return 0 if result.complete else 1

    # A lost database: one message and exit status 1, whether a worker or this process noticed it.
    return exit_on_lost_storage(study)
