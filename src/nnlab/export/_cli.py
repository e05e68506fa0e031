"""The ``nnlab predict`` and ``nnlab export`` subcommands (plugged into :mod:`nnlab.cli`).

Each subcommand has ``add_<name>_arguments(parser)`` and ``run_<name>(args) -> exit
status``. Nothing heavy is imported at module level: ``nnlab --help`` builds these
parsers; TensorFlow loads only when a network is used.
"""

from __future__ import annotations

import argparse

from nnlab._argtypes import EXIT_OK
from nnlab._text import fit

__all__ = ["add_export_arguments", "add_predict_arguments", "run_export", "run_predict"]

# --- nnlab predict ---------------------------------------------------------------------------------


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nnlab predict``."""
    parser.description = ("Predict the targets of a trained run for the raw rows of a CSV: the particle task's 8 "
                          "initial columns, or a table run's feature columns. The output holds the input columns "
                          "as read plus one predicted_<target> column per target, in physical units.")
    parser.add_argument("input", metavar="INPUT", help="CSV of raw rows (never modified)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="CSV to write; missing parent directories are created")
    _add_run_arguments(parser, force="replace FILE if it exists")


def _add_run_arguments(parser: argparse.ArgumentParser, *, force: str) -> None:
    """The options both commands share: which run, which of its weights, and --force."""
    from nnlab.export._run import WEIGHTS

    parser.add_argument("--run", default="latest", metavar="RUN_ID",
                        help="run id under <output-dir>/runs, or 'latest' (default)")
    parser.add_argument("--output-dir", default="training_output", metavar="DIR",
                        help="training output root, as for python main.py (default: training_output)")
    parser.add_argument("--weights", choices=WEIGHTS, default="final",
                        help="the run's final weights (default) or its best (lowest validation loss)")
    parser.add_argument("--force", action="store_true", help=force)


def run_predict(args: argparse.Namespace) -> int:
    """Write the predictions; print one line (rows, run, file). Bad input raises NnlabError (exit 2)."""
    from nnlab.export._predict import CLI_NAMES, predict_rows

    written = predict_rows(args.input, args.out, output_dir=args.output_dir, run=args.run, weights=args.weights,
                           force=args.force, names=CLI_NAMES)
    print(fit(written.summary()))
    return EXIT_OK


# --- nnlab export ----------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nnlab export``."""
    from nnlab.export._export import FORMATS

    parser.description = ("Export a trained run as one self-contained model: input one float32 matrix of the raw "
                          "input columns, output the targets in physical units (derived features, scaling, network "
                          "and de-scaling inside the graph). The export is checked in its own runtime against "
                          "nnlab's predictions on the run's test rows; PATH.meta.json describes it.")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="format",
                        help="keras (.keras file), savedmodel (a directory), tflite (LiteRT) or onnx")
    parser.add_argument("--out", required=True, metavar="PATH", help="the model file (savedmodel: directory) to write")
    _add_run_arguments(parser, force="replace PATH and PATH.meta.json if they exist")
    from nnlab.integrations import MLFLOW_OPTION_HELP

    parser.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                        help="also log the export as an MLflow model of the run's MLflow run; " + MLFLOW_OPTION_HELP)


def run_export(args: argparse.Namespace) -> int:
    """Write the export and its meta file; print a short summary. Bad input raises NnlabError (exit 2).

    With ``--mlflow``, a run that was never logged there is refused before anything is written.
    """
    from nnlab.export._export import export_run, export_summary

    trained, uri = None, None
    if args.mlflow is not None:
        from nnlab.export._run import TrainedRun
        from nnlab.integrations import mlflow_option, require_mlflow_run

        uri = mlflow_option(args.mlflow, args.output_dir)
        trained = TrainedRun.load(args.output_dir, args.run, weights=args.weights)
        require_mlflow_run(uri, trained.run_id)
    meta = export_run(trained, fmt=args.format, out=args.out, weights=args.weights, force=args.force,
                      output_dir=args.output_dir, run=args.run)
    print(fit(export_summary(meta, args.out), indent="          "))
    if uri is not None:
        from nnlab.integrations import log_exported_model

        print(f"  mlflow  {log_exported_model(uri, meta['run_id'], args.out, args.format, meta)}")
    return EXIT_OK
