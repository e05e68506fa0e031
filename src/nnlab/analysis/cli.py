"""``nnlab analyze``: analyse one training run (figures, statistics, summary JSON, report.html).

Imports nothing heavy at module level: ``nnlab --help`` builds this parser.
"""

from __future__ import annotations

import argparse
import sys

from nnlab.analysis.base import SECTIONS

__all__ = ["add_arguments", "run"]

# Kept literal (no import of the heavy modules) so building the parser stays cheap;
# tests check they match nnlab.analysis.framework / james_stein.
DEFAULT_SAMPLE_SIZE = 256
DEFAULT_JS_SEEDS = 3
DEFAULT_JS_EPOCHS = 30


def _positive_int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def _sections(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nnlab analyze``."""
    parser.description = ("Analyse a training run: artifact check, training dynamics, learning rate, residuals, "
                          "predictions, baselines, James-Stein comparison, recommendations, hyperparameter "
                          "heatmap, loss weights and constraints. Outputs go to the analysis directory: "
                          "300-dpi PNGs, analysis_summary_YYYYMMDD_HHMMSS.json and report.html.")
    parser.add_argument("--run", default="latest", metavar="RUN_ID",
                        help="run id under <output-dir>/runs, or 'latest' (default)")
    parser.add_argument("--output-dir", default="training_output", metavar="DIR",
                        help="training output root, as for python main.py (default: training_output)")
    parser.add_argument("--analysis-dir", metavar="DIR", help="where outputs go (default: <output-dir>/analysis)")
    parser.add_argument("--sample-size", type=_positive_int(1), default=DEFAULT_SAMPLE_SIZE, metavar="N",
                        help=f"test points in the residual and scatter plots (default: {DEFAULT_SAMPLE_SIZE})")
    parser.add_argument("--skip", type=_sections, action="append", default=[], metavar="SECTION,...",
                        help="sections not to run (comma-separated, repeatable): " + ", ".join(SECTIONS))
    parser.add_argument("--js-seeds", type=_positive_int(1), default=DEFAULT_JS_SEEDS, metavar="K",
                        help=f"seeds per variant in the James-Stein comparison (default: {DEFAULT_JS_SEEDS}; "
                             "6 or more are needed for the Wilcoxon test to reach p < 0.05)")
    parser.add_argument("--js-epochs", type=_positive_int(2), default=DEFAULT_JS_EPOCHS, metavar="E",
                        help=f"epochs per James-Stein training (default: {DEFAULT_JS_EPOCHS})")
    parser.add_argument("--quiet", action="store_true", help="print only the output paths and problems")


def _section_bar(total: int):
    """On a terminal, a live "sections k/N" bar (rich); None elsewhere: the section lines are the progress."""
    if not sys.stdout.isatty():
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("sections {task.completed:.0f}/{task.total:.0f}"), BarColumn(bar_width=20),
                   TimeElapsedColumn(), transient=True)
    bar.add_task("analysis", total=total)
    return bar


def run(args: argparse.Namespace) -> int:
    """Run the analysis. Exit status 0, or 1 when a section failed unexpectedly (outputs are still written).

    Bad input (no runs, unknown run id, an unwritable directory) raises an
    :class:`~nnlab.errors.NnlabError`, which ``nnlab.cli.main`` prints and turns into exit status 2.
    """
    from nnlab.analysis.framework import ExperimentAnalysis

    skip = [name for group in args.skip for name in group]
    say = (lambda _line: None) if args.quiet else print
    analysis = ExperimentAnalysis(args.output_dir, run=args.run, analysis_dir=args.analysis_dir,
                                  sample_size=args.sample_size, js_seeds=args.js_seeds, js_epochs=args.js_epochs,
                                  progress=lambda line: say(f"    {line}"))
    say(f"analysing run {analysis.run_id} -> {analysis.analysis_dir}")

    bar = _section_bar(len([name for name in SECTIONS if name not in skip])) if not args.quiet else None

    def report(result) -> None:
        line = f"  {result.title}: {result.status} ({result.elapsed_s:.1f} s)"
        if result.reason:
            line += f" - {result.reason}"
        if result.status == "failed":
            print(line, file=sys.stderr)
        else:
            say(line)
        if bar is not None:
            bar.advance(bar.task_ids[0])

    if bar is None:
        analysis.run(skip, on_section=report)
    else:
        with bar:  # the section lines print above it
            analysis.run(skip, on_section=report)
    paths = analysis.write_outputs()
    print(f"summary: {paths['summary']}")
    print(f"report:  {paths['report']}")
    failed = [name for name, r in analysis.results.items() if r.status == "failed"]
    if failed:
        print(f"error: {len(failed)} section(s) failed: {', '.join(failed)} (the other outputs were written)",
              file=sys.stderr)
        return 1
    return 0
