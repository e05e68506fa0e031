"""The ``nnlab`` command line.

Subcommands::

    nnlab train [options]                              the training pipeline (= python main.py)
    nnlab predict INPUT --out FILE [--run RUN_ID]      a trained run's predictions for raw rows
    nnlab export --format FMT --out PATH [--run ID]    a run as one keras/savedmodel/tflite/onnx model
    nnlab data generate --num-particles N --out FILE   simulate particles to a CSV
    nnlab data validate FILE                           check a particle CSV
    nnlab data resimulate OLD.csv NEW.csv              convert a CSV of the original lab
    nnlab config show [--config FILE] [--format toml]  print the resolved configuration
    nnlab hpo [options]                                hyperparameter search (= python hpo_agent.py)
    nnlab study precision|compare [options]            controlled multi-seed comparisons
    nnlab analyze [options]                            analyse a run
    nnlab completion bash|zsh|tcsh                     print a shell completion script
    nnlab --version                                    print ``nnlab <version>``

``python -m nnlab`` is the same command line.

Errors a user can cause (bad configuration, bad CSV, bad arguments) are printed
as a short message without a traceback, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nnlab._argtypes import (  # noqa: F401 - the argument types stay importable as nnlab.cli.positive_int etc.
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    add_table_arguments,
    non_negative_int,
    positive_int,
    seed_int,
    table_overrides,
)
from nnlab._argtypes import Parser as _Parser
from nnlab._text import fit
from nnlab.errors import DataValidationError, NnlabError

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader went away


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        help="configuration directory (default: ./ml_config, or $NNLAB_CONFIG_DIR)",
    )
    parser.add_argument("--preset", metavar="NAME", help="a preset from ml_config/model_presets/")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key (repeatable); VALUE is JSON or a plain string",
    )


def _load_config(args: argparse.Namespace, extra: dict | None = None):
    from nnlab.config import load_config, parse_overrides

    overrides = {**(extra or {}), **parse_overrides(args.overrides)}
    return load_config(
        args.config_dir,
        preset=args.preset,
        overrides=overrides,
        config_file=getattr(args, "config_file", None),
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nnlab train`` and ``python main.py``."""
    _add_config_arguments(parser)
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        help="JSON or TOML (.toml) file of configuration keys, applied after the preset "
                             "(e.g. best_config.json)")
    parser.add_argument("--epochs", type=positive_int, metavar="N", help="number of epochs (config key epochs)")
    parser.add_argument("--batch-size", type=positive_int, metavar="N", help="batch size (config key batch_size)")
    parser.add_argument("--num-particles", type=positive_int, metavar="N",
                        help="particles to simulate (default: num_particles_default)")
    parser.add_argument("--data", metavar="FILE",
                        help="train on this CSV, never modified: a particle CSV (validated), or with --targets "
                             "a table of your own")
    add_table_arguments(parser)
    parser.add_argument("--output-dir", default="training_output", metavar="DIR",
                        help="training output root (default: training_output)")
    parser.add_argument("--seed", type=seed_int, metavar="N",
                        help="seed for data generation, weights and shuffling (repeatable runs)")
    parser.add_argument("--quiet", action="store_true", help="no Keras progress output")
    from nnlab.integrations import MLFLOW_OPTION_HELP

    parser.add_argument("--mlflow", nargs="?", const="", metavar="URI", help=MLFLOW_OPTION_HELP)
    parser.add_argument("--resume", metavar="RUN_ID", nargs="?", const="latest",
                        help="continue an interrupted run (a run id, or 'latest') from its last checkpoint; "
                             "its configuration and data come from the run")
    parser.set_defaults(handler=_cmd_train)


_TRAIN_DESCRIPTION = (
    "Train one network: the configuration (ml_config/, a preset, --config FILE, --set KEY=VALUE), the data "
    "(simulated particles, a particle CSV, or with --targets a table of your own), then one run directory "
    "<output-dir>/runs/<run_id>/ with the model, metrics, checkpoints and summary; --resume continues an "
    "interrupted run.")


def build_parser() -> argparse.ArgumentParser:
    from nnlab import __version__

    parser = _Parser(prog="nnlab", description="Train regression networks on simulated particle physics or on a "
                                               "table of your own, search their hyperparameters, compare them in "
                                               "multi-seed studies, analyse and export the runs. "
                                               "`nnlab COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"nnlab {__version__}",
                        help="print the version (nnlab X.Y.Z) and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="run the training pipeline (same as python main.py)",
                                description=_TRAIN_DESCRIPTION)
    add_train_arguments(train)
    # Also after the subcommand (`python main.py --verbose`); SUPPRESS keeps a `nnlab -v train` intact.
    train.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="Keras' own per-epoch output instead of nnlab's progress display, and more log output")

    # Subcommands owned by other modules: each module defines add_arguments(parser)
    # and run(args) -> exit status ("module:name": add_<name>_arguments and run_<name>,
    # for a package with several subcommands), and imports TensorFlow/Optuna only inside run().
    # Each sets parser.description; the help text here is its line in `nnlab --help`.
    for name, module, help_text in _PLUGGED_COMMANDS:
        plugged = commands.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        _plug(plugged, module)
    _add_data_commands(commands)
    _add_config_commands(commands)
    completion = commands.add_parser(
        "completion", help="print a shell completion script (bash, zsh, tcsh)",
        description="Print the tab-completion script of nnlab for a shell; see docs/shell.md. For bash: "
                    "nnlab completion bash > ~/.local/share/bash-completion/completions/nnlab")
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell to complete in")
    completion.set_defaults(handler=_cmd_completion)
    return parser


def _add_data_commands(commands) -> None:
    """``nnlab data generate|validate|resimulate``."""
    data = commands.add_parser("data", help="generate or validate particle data",
                               description="Particle CSVs: simulate new ones, check one, or convert one of the "
                                           "original lab. Every CSV written gets a provenance sidecar FILE.meta.json.")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser, metavar="COMMAND")

    generate = data_commands.add_parser(
        "generate", help="simulate particles and write a CSV",
        description="Simulate particles with the generation configuration and write them to a CSV.")
    generate.add_argument("--num-particles", type=positive_int, metavar="N",
                          help="number of particles (default: num_particles_default of the config)")
    generate.add_argument("--out", required=True, metavar="FILE",
                          help="CSV file to write, with its provenance sidecar FILE.meta.json; "
                               "missing parent directories are created")
    generate.add_argument("--seed", type=seed_int, metavar="N", help="random seed (default: random_seed of the config)")
    generate.add_argument("--force", action="store_true",
                          help="replace FILE and FILE.meta.json if they exist")
    _add_config_arguments(generate)
    generate.set_defaults(handler=_cmd_data_generate)

    validate = data_commands.add_parser(
        "validate", help="check a particle CSV (exit 0 valid, 2 invalid)",
        description="Check a particle CSV: columns, types, ranges and the physics of every row; every problem "
                    "is reported at once. Exit status 0 when valid, 2 when not.")
    validate.add_argument("file", metavar="FILE", help="the particle CSV to check (never modified)")
    validate.add_argument("--drop-invalid", metavar="CLEAN_FILE",
                          help="write the valid rows to CLEAN_FILE (and CLEAN_FILE.meta.json) instead of "
                               "failing on bad rows; missing parent directories are created")
    validate.add_argument("--force", action="store_true",
                          help="with --drop-invalid: replace CLEAN_FILE and its sidecar if they exist")
    validate.set_defaults(handler=_cmd_data_validate)

    resimulate_help = ("convert a particle CSV (e.g. of the original lab): recompute every final column "
                       "from the initial ones into a new CSV")
    resimulate = data_commands.add_parser("resimulate", help=resimulate_help,
                                          description=resimulate_help[:1].upper() + resimulate_help[1:] + ".")
    resimulate.add_argument("old", metavar="OLD", help="the particle CSV to convert (never modified)")
    resimulate.add_argument("new", metavar="NEW", help="the CSV to write, with its provenance sidecar "
                                                       "NEW.meta.json; missing parent directories are created")
    resimulate.add_argument("--force", action="store_true", help="replace NEW and NEW.meta.json if they exist")
    resimulate.set_defaults(handler=_cmd_data_resimulate)


def _add_config_commands(commands) -> None:
    """``nnlab config show|presets``."""
    config = commands.add_parser("config", help="show the resolved configuration",
                                 description="The configuration a run would use, and the presets available.")
    config_commands = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser,
                                            metavar="COMMAND")
    show = config_commands.add_parser(
        "show", help="print the validated configuration (JSON, or TOML with --format toml)",
        description="Print the validated configuration: ml_config/, then the preset, then --config FILE, then "
                    "--set, as one flat table of keys. Its output is a valid --config FILE.")
    _add_config_arguments(show)
    show.add_argument("--config", dest="config_file", metavar="FILE",
                      help="JSON or TOML (.toml) file of configuration keys, applied after the preset")
    show.add_argument("--format", choices=("json", "toml"), default="json", help="output format (default: json)")
    show.set_defaults(handler=_cmd_config_show)
    presets = config_commands.add_parser("presets", help="list the available presets",
                                         description="List the presets of ml_config/model_presets/, one a line.")
    presets.add_argument("--config-dir", metavar="DIR",
                         help="configuration directory (default: ./ml_config, or $NNLAB_CONFIG_DIR)")
    presets.set_defaults(handler=_cmd_config_presets)


_PLUGGED_COMMANDS = (
    ("predict", "nnlab.export:predict", "a trained run's predictions for the raw rows of a CSV"),
    ("export", "nnlab.export:export", "a trained run as one self-contained keras/savedmodel/tflite/onnx model"),
    ("hpo", "nnlab.hpo", "hyperparameter search on Optuna (same as python hpo_agent.py)"),
    ("study", "nnlab.study", "controlled multi-seed comparisons: precision (bits x rounding), compare (variants)"),
    ("analyze", "nnlab.analysis.cli", "analyse a training run: figures, statistics, report"),
)


def _plug(parser: argparse.ArgumentParser, spec: str) -> None:
    import importlib

    module_name, _, command = spec.partition(":")
    module = importlib.import_module(module_name)
    if command:
        getattr(module, f"add_{command}_arguments")(parser)
        parser.set_defaults(handler=getattr(module, f"run_{command}"))
        return
    module.add_arguments(parser)
    parser.set_defaults(handler=module.run)


def _refuse_overwrite(path: str, force: bool, option: str = "--out") -> None:
    """Fail before any work when ``path`` (or its ``.meta.json`` sidecar) cannot or may not be written.

    Args:
        path: the CSV to write, as given (a trailing '/' means a directory).
        force: allow replacing an existing CSV and sidecar.
        option: the option that named ``path``, for the message.
    """
    from nnlab.data import check_output_file

    check_output_file(path, force=force, option=option)


def _cmd_data_generate(args: argparse.Namespace) -> int:
    from nnlab.data import generate_particle_data, save_particle_data

    cfg = _load_config(args)
    _refuse_overwrite(args.out, args.force)  # before simulating: nothing is computed for nothing
    from nnlab._memory import check_memory  # before simulating: refuse what cannot fit in memory

    check_memory(cfg, num_particles=args.num_particles or cfg.generation.num_particles_default, network=False,
                 source="--num-particles" if args.num_particles else "num_particles_default")
    out = Path(args.out)
    n = args.num_particles or cfg.generation.num_particles_default
    seed = args.seed if args.seed is not None else cfg.generation.random_seed
    df = generate_particle_data(n, cfg.generation, seed=seed)
    save_particle_data(
        df,
        out,
        metadata={"generation_config": cfg.generation.model_dump(mode="json"), "num_particles": n, "seed": seed},
    )
    print(f"wrote {n} particles to {out}")
    return EXIT_OK


def _cmd_data_validate(args: argparse.Namespace) -> int:
    from nnlab.data import check_data_file, load_particle_data, save_particle_data, validate_particle_data
    from nnlab.errors import ConfigError

    path = Path(args.file)
    if args.force and not args.drop_invalid:
        raise ConfigError("--force only applies with --drop-invalid CLEAN_FILE (validate never writes FILE)")
    check_data_file(path)  # a pipe or device is named, not opened
    if args.drop_invalid:
        _refuse_overwrite(args.drop_invalid, args.force, option="--drop-invalid")
    df = load_particle_data(path)
    if args.drop_invalid:
        clean = Path(args.drop_invalid)
        try:
            report = validate_particle_data(df, drop_invalid=True)
        except DataValidationError as exc:
            raise DataValidationError(f"{path} is invalid:\n{exc}", exc.problems) from None
        print(report.summary())
        save_particle_data(report.data, clean)
        print(f"wrote {len(report.data)} valid rows to {clean}")
        return EXIT_OK
    try:
        report = validate_particle_data(df)
    except DataValidationError as exc:
        raise DataValidationError(f"{path} is invalid:\n{exc}", exc.problems) from None
    print(f"{path}: {report.summary()}")
    return EXIT_OK


def _cmd_data_resimulate(args: argparse.Namespace) -> int:
    from nnlab.data import resimulate_csv

    print(resimulate_csv(args.old, args.new, force=args.force, option="NEW").summary())
    return EXIT_OK


def _finish_training(result, output_dir: str) -> int:
    from nnlab.runs import RunStatus, format_summary

    print(format_summary(result.details), end="")
    if result.status == RunStatus.INTERRUPTED:
        import shlex  # a command that works from any directory

        print(f"interrupted: checkpoint written; resume with\n  nnlab train --resume {result.run_id} "
              f"--output-dir {shlex.quote(os.path.abspath(output_dir))}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.status == RunStatus.DIVERGED:
        print(fit(f"error: {result.divergence_message}"), file=sys.stderr)
        return 1
    if result.failure:  # the disk filled up: the run stopped, what it wrote is intact
        print(fit(f"error: {result.failure}"), file=sys.stderr)
        return 1
    return EXIT_OK


def _progress_mode(args: argparse.Namespace) -> int | str:
    """``verbose`` for training: nothing (--quiet), Keras' own output (--verbose), else nnlab's display."""
    if args.quiet:
        return 0
    if args.verbose:
        return 1 if sys.stdout.isatty() else 2  # a bar on a terminal, a line per epoch in a log
    return "progress"  # nnlab.console.ConsoleProgress: a live bar on a terminal, a line per ~10 % otherwise


def _cmd_resume(args: argparse.Namespace) -> int:
    from nnlab.errors import ConfigError
    from nnlab.runs import resume

    given = [flag for flag, value in (("--config-dir", args.config_dir), ("--preset", args.preset),
                                      ("--config", args.config_file),
                                      ("--epochs", args.epochs), ("--batch-size", args.batch_size),
                                      ("--num-particles", args.num_particles), ("--data", args.data),
                                      ("--seed", args.seed), ("--mlflow", args.mlflow), ("--targets", args.targets),
                                      ("--features", args.features), ("--drop-missing", args.drop_missing))
             if value is not None]
    if given or args.overrides:
        raise ConfigError(f"--resume continues a run with its own configuration and data; "
                          f"drop {', '.join(given + ['--set'] * bool(args.overrides))}")
    result = resume(args.resume, output_dir=args.output_dir, progress=_progress_mode(args))
    return _finish_training(result, args.output_dir)


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _cmd_resume(args)
    extra: dict = {}
    if args.epochs is not None:
        extra["epochs"] = args.epochs
    if args.batch_size is not None:
        extra["batch_size"] = args.batch_size
    if args.seed is not None:
        extra.update(seed=args.seed, random_seed=args.seed)
    if args.mlflow is not None:
        from nnlab.integrations import mlflow_option

        extra["mlflow_tracking_uri"] = mlflow_option(args.mlflow, args.output_dir)
    extra.update(table_overrides(args))
    cfg = _load_config(args, extra)
    from nnlab._memory import check_memory  # before any allocation: refuse what cannot fit in memory

    check_memory(cfg, num_particles=None if args.data else (args.num_particles or cfg.generation.num_particles_default),
                 source="--num-particles" if args.num_particles else "num_particles_default")

    if args.data is not None:
        from nnlab.data import check_data_file

        # Before anything else: a named pipe or device would block or never end.
        if cfg.training.data_targets is not None:  # a table of the user's own
            check_data_file(args.data, option="--data", what="data file")
        else:
            check_data_file(args.data, option="--data", hint=" (create one with `nnlab data generate --out FILE`)")
    from nnlab.runs import check_output_dir

    check_output_dir(args.output_dir, create=False)  # fail before any data or training work
    from nnlab.runs import DataSource, RunSpec, execute

    source = DataSource.for_config(cfg, csv_path=args.data, num_particles=args.num_particles)
    source.check_config(cfg)
    spec = RunSpec(cfg, source, output_dir=args.output_dir, preset=args.preset, progress=_progress_mode(args),
                   announce=not args.quiet)
    return _finish_training(execute(spec), args.output_dir)


def _cmd_config_show(args: argparse.Namespace) -> int:
    from nnlab._redact import redact

    flat = redact(_load_config(args).to_flat())  # a tracking URI's password masked
    if args.format == "toml":
        from nnlab.config import dump_toml

        print(dump_toml(flat), end="")
    else:
        print(json.dumps(flat, indent=2))
    return EXIT_OK


def _cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script of ``args.shell`` (shtab): commands, options, choices, files and directories."""
    try:
        import shtab
    except ImportError:
        from nnlab.errors import ConfigError

        raise ConfigError("nnlab completion needs the shtab package: pip install 'shtab>=1.7'") from None
    parser = build_parser()
    _mark_paths(parser, shtab)
    print(shtab.complete(parser, shell=args.shell), end="")
    return EXIT_OK


def _mark_paths(parser: argparse.ArgumentParser, shtab) -> None:
    """Let the shell complete file names after FILE/PATH options and directory names after DIR options."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _mark_paths(sub, shtab)
        elif isinstance(action.metavar, str) and action.metavar.endswith("DIR"):
            action.complete = shtab.DIRECTORY
        elif isinstance(action.metavar, str) and action.metavar.endswith(("FILE", "PATH", "INPUT", "OLD", "NEW")):
            action.complete = shtab.FILE


def _cmd_config_presets(args: argparse.Namespace) -> int:
    from nnlab.config import list_presets

    for name in list_presets(args.config_dir):
        print(name)
    return EXIT_OK


def _quiet_tensorflow() -> None:
    """Before anything imports TensorFlow: its C++ start-up lines go unless asked for (NNLAB_TF_LOG=1).

    Only a hook: TensorFlow loads when a command first needs it, so commands
    that fail early or never need it do not pay for the import.
    """
    from nnlab._tflog import quiet_tensorflow_import

    quiet_tensorflow_import()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from nnlab._redact import install as mask_passwords_in_output
    from nnlab._signals import interrupts_latched, raise_if_interrupted

    mask_passwords_in_output()  # everything printed (messages, progress, warnings) goes through one redaction
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:  # nnlab's own debug messages; third-party DEBUG chatter (matplotlib, h5py...) stays off
        logging.getLogger("nnlab").setLevel(logging.DEBUG)
    try:
        with interrupts_latched():
            status = args.handler(args)
            raise_if_interrupted()  # a Ctrl-C the interpreter dropped (see nnlab._signals) still ends in 130
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return status
    except BrokenPipeError:
        # `nnlab ... | head`: the reader stopped reading, as with any shell tool: no message, no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except NnlabError as exc:
        print(fit(f"error: {exc}"), file=sys.stderr)  # every line within 120 columns; paths whole
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        # The machine, not the input: a full disk, a vanished mount, an I/O error.
        # Training handles these itself; anywhere else one line says what failed.
        where = f" ({exc.filename})" if exc.filename else ""
        print(fit(f"error: {exc.strerror or exc}{where}"), file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
