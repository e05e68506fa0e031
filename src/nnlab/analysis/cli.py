"""``nnlab analyze``: analyse one training run (figures, statistics, summary JSON, report.html), or a study (--study).

Imports nothing heavy at module level: ``nnlab --help`` builds this parser.
"""

from __future__ import annotations

import argparse
import sys

from nnlab._argtypes import int_at_least
from nnlab._text import LINE_WIDTH, fit
from nnlab.analysis.base import SECTIONS

__all__ = ["add_arguments", "run"]

# Kept literal (no import of the heavy modules) so building the parser stays cheap;
# tests check they match nnlab.analysis.framework / james_stein.
DEFAULT_SAMPLE_SIZE = 256
DEFAULT_JS_SEEDS = 6
DEFAULT_JS_EPOCHS = 30


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
                          "heatmap, loss weights and constraints, physics consistency. Each analysis gets a "
                          "folder of its own, <analysis-dir>/<run_id> (then <run_id>_2, ...; never replaced): "
                          "300-dpi PNGs, analysis_summary_YYYYMMDD_HHMMSS.json and report.html. With "
                          "--study DIR: the per-cell table, figure and findings of a multi-seed study instead.")
    parser.add_argument("--run", default="latest", metavar="RUN_ID",
                        help="run id under <output-dir>/runs, or 'latest' (default)")
    parser.add_argument("--output-dir", default="training_output", metavar="DIR",
                        help="training output root, as for python main.py (default: training_output)")
    parser.add_argument("--analysis-dir", metavar="DIR", help="where outputs go (default: <output-dir>/analysis)")
    parser.add_argument("--sample-size", type=int_at_least(1), default=DEFAULT_SAMPLE_SIZE, metavar="N",
                        help=f"test points in the residual and scatter plots (default: {DEFAULT_SAMPLE_SIZE})")
    parser.add_argument("--skip", type=_sections, action="append", default=[], metavar="NAME[,NAME...]",
                        help="sections not to run (comma-separated, repeatable): " + ", ".join(SECTIONS))
    parser.add_argument("--js-seeds", type=int_at_least(1), default=DEFAULT_JS_SEEDS, metavar="N",
                        help=f"seeds per variant in the James-Stein comparison (default: {DEFAULT_JS_SEEDS}, the "
                             "fewest with which its paired Wilcoxon test can reach p < 0.05)")
    parser.add_argument("--js-epochs", type=int_at_least(2), default=DEFAULT_JS_EPOCHS, metavar="N",
                        help=f"epochs per James-Stein training (default: {DEFAULT_JS_EPOCHS})")
    parser.add_argument("--js-workers", type=int_at_least(1), default=None, metavar="N",
                        help="worker processes training the James-Stein study in parallel (default: the CPUs "
                             "available)")
    parser.add_argument("--quiet", action="store_true", help="print only the output paths and problems")
    parser.add_argument("--study", metavar="DIR",
                        help="analyse a study directory of `nnlab study` instead of a run: recompute its per-cell "
                             "table, figure and summary from <kind>_runs.csv into a new folder "
                             "study_<name>_<time> under the analysis directory (DIR is never written)")


def _section_bar(total: int):
    """On a terminal, a live "sections k/N" bar (rich); None elsewhere: the section lines are the progress."""
    if not sys.stdout.isatty():
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("sections {task.completed:.0f}/{task.total:.0f}"), BarColumn(bar_width=20),
                   TimeElapsedColumn(), transient=True)
    bar.add_task("analysis", total=total)
    return bar


CONSOLE_WIDTH = LINE_WIDTH  # every line nnlab analyze prints fits this many columns


def _say(line: str) -> None:
    print(fit(line))  # continuation lines indented like the first plus two


def _print_outputs(folder, files) -> None:
    """The analysis folder, then each file: its whole path when that fits 120 columns, else its name in it."""
    print(f"analysis: {folder}")
    for label, path in files:
        line = f"{label + ':':<9} {path}"
        print(line if len(line) <= CONSOLE_WIDTH else f"{label + ':':<9} <analysis>/{path.name}")


def run(args: argparse.Namespace) -> int:
    """Run the analysis. Exit status 0, or 1 when a section failed unexpectedly (outputs are still written).

    Bad input (no runs, unknown run id, an unwritable directory) raises an
    :class:`~nnlab.errors.NnlabError`, which ``nnlab.cli.main`` prints and turns into exit status 2.
    """
    if args.study is not None:
        return _run_study(args)
    from nnlab.analysis.framework import ExperimentAnalysis

    skip = [name for group in args.skip for name in group]
    say = (lambda _line: None) if args.quiet else _say
    analysis = ExperimentAnalysis(args.output_dir, run=args.run, analysis_dir=args.analysis_dir,
                                  sample_size=args.sample_size, js_seeds=args.js_seeds, js_epochs=args.js_epochs,
                                  js_workers=args.js_workers,
                                  progress=None if args.quiet else lambda line: say(f"    {line}"))
    say(f"analysing run {analysis.run_id} (the analysis goes to a new folder in {analysis.analysis_root})")

    bar = _section_bar(len([name for name in SECTIONS if name not in skip])) if not args.quiet else None

    def report(result) -> None:
        line = f"  {result.title}: {result.status} ({result.elapsed_s:.1f} s)"
        if result.reason:
            line += f" - {result.reason}"
        line = fit(line)
        if result.status == "failed":
            print(line, file=sys.stderr)
        else:
            say(line)
        if bar is not None:
            bar.advance(bar.task_ids[0])

    try:
        if bar is None:
            analysis.run(skip, on_section=report)
        else:
            with bar:  # the section lines print above it
                analysis.run(skip, on_section=report)
        paths = analysis.write_outputs()
    except BaseException:
        analysis.discard()  # nothing half-written: the unpublished folder goes
        raise
    _print_outputs(paths["folder"], [("summary", paths["summary"]), ("report", paths["report"])])
    _log_to_mlflow(analysis.run_artifacts.run_dir, [paths["report"], paths["summary"]], say, folder=paths["folder"])
    failed = [name for name, r in analysis.results.items() if r.status == "failed"]
    if failed:
        print(f"error: {len(failed)} section(s) failed: {', '.join(failed)} (the other outputs were written)",
              file=sys.stderr)
        return 1
    return 0


ANALYSIS_ARTIFACTS = "analysis"  # the folder of the run's MLflow artifacts the analysis goes to


def _log_to_mlflow(run_dir, files, say, *, folder=None) -> None:
    """A run logged to MLflow (its ``mlflow_run.json``) gets the analysis as artifacts of that same MLflow run
    (never a new run): with ``folder``, every file in it under ``analysis/<folder name>/``, else ``files``
    under ``analysis/``.

    Optional: MLflow missing or unreachable is one warning; the analysis itself succeeded.
    """
    from pathlib import Path

    from nnlab.integrations.mlflow import run_record

    record = run_record(run_dir)
    if record is None or not record.get("tracking_uri") or not record.get("run_id"):
        return
    destination = ANALYSIS_ARTIFACTS
    if folder is not None and Path(folder).is_dir():
        destination = f"{ANALYSIS_ARTIFACTS}/{Path(folder).name}"
        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    try:
        from nnlab.integrations.mlflow import client_for, log_files

        logged = log_files(client_for(str(record["tracking_uri"])), str(record["run_id"]),
                           [(path, destination) for path in files])
    except Exception as exc:  # an optional destination must not fail the analysis
        text = " ".join(str(exc).split())[:300]
        print(f"warning: MLflow: the analysis was not logged to run {record['run_id']}: "
              f"{type(exc).__name__}: {text}", file=sys.stderr)
        return
    say(f"mlflow:  {logged} file(s) logged to run {record['run_id']} under '{destination}/'")


# -- nnlab analyze --study DIR ---------------------------------------------------------------


def _new_study_dir(root, study_dir):
    """A folder that did not exist: ``<root>/study_<name>_<YYYYMMDD_HHMMSS>[_k]`` (so nothing is ever replaced)."""
    from datetime import datetime
    from pathlib import Path

    from nnlab.analysis.base import ArtifactError

    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    name = f"study_{Path(study_dir).resolve().name}_{stamp}"
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            out = Path(root) / (name if attempt == 1 else f"{name}_{attempt}")
            try:
                out.mkdir()
            except FileExistsError:
                continue
            return out
    except OSError as exc:
        raise ArtifactError(f"analysis directory '{root}' cannot be created: {exc.strerror or exc}") from None
    raise ArtifactError(f"too many study analyses named {name} in '{root}'")  # pragma: no cover


def _study_lines(summary: dict) -> list[str]:
    """One console line per cell: the cell, seeds, mean test R² [CI], difference from the reference, p."""
    from nnlab.study import format_r2_difference

    def num(value, spec=".4f"):
        return "—" if value is None else format(value, spec)

    def diff(value):
        return "—" if value is None else format_r2_difference(value)

    keys = summary["keys"]
    labels = [" ".join(str(cell[k]) for k in keys) for cell in summary["cells"]]
    width = max([len("cell")] + [len(label) for label in labels]) + len(" (reference)")
    lines = [f"  {'cell':<{width}} {'n':>3}  {'test R²':>7}  {'95% CI':<17}  {'diff vs ref':>11}  {'p':>7}"]
    for i, (label, cell) in enumerate(zip(labels, summary["cells"])):
        ci = (f"[{num(cell['test_r2_ci_low'])}, {num(cell['test_r2_ci_high'])}]"
              if cell["test_r2_ci_low"] is not None else "—")
        lines.append(f"  {label + (' (reference)' if i == 0 else ''):<{width}} {cell['n_seeds']:>3}  "
                     f"{num(cell['test_r2_mean']):>7}  {ci:<17}  {diff(cell['diff_vs_ref_mean']):>11}  "
                     f"{num(cell['wilcoxon_p'], '.2g'):>7}")
    return lines


def _run_study(args: argparse.Namespace) -> int:
    """``nnlab analyze --study DIR``: the study outputs recomputed into a new folder, a console table, report.html."""
    from pathlib import Path

    import pandas as pd

    from nnlab.analysis.base import SectionResult
    from nnlab.analysis.report import write_study_report
    from nnlab.errors import ConfigError, NnlabError
    from nnlab.study import read_study_dir, write_study_outputs

    if args.run != "latest" or args.skip:
        raise ConfigError("--study analyses a whole study directory; --run and --skip apply to one run: drop them")
    say = (lambda _line: None) if args.quiet else _say
    studies = read_study_dir(args.study)
    root = Path(args.analysis_dir) if args.analysis_dir is not None else Path(args.output_dir) / "analysis"
    out = _new_study_dir(root, args.study)
    sections, failed = [], []
    for study in studies:
        kind = study["kind"]
        try:
            summary = write_study_outputs(out, kind, study["runs"], keys=study["keys"],
                                          reference=study["reference"], alpha=study["alpha"])
        except NnlabError as exc:
            if not any(out.iterdir()):
                out.rmdir()  # nothing was written: leave no empty folder behind
            raise type(exc)(f"{study['path']}: {exc}") from None
        say(f"{kind} study {study['path']}: {summary['n_cells']} cells, {len(summary['seeds'])} seeds, "
            f"{summary['n_completed']}/{summary['n_runs']} runs completed")
        for line in _study_lines(summary):
            say(line)
        for line in summary["findings"]:
            say(f"  - {line}")
        for line in summary["notes"]:
            say(f"  note: {line}")
        figure = summary["files"]["figure"]
        if figure is None:
            failed.append(kind)
        sections.append(SectionResult(
            kind, f"{kind.capitalize()} study ({study['path']})", status="done" if figure else "failed",
            reason=None if figure else "the figure could not be drawn (see the notes)",
            tables={f"{kind}_study.csv": pd.read_csv(summary["files"]["csv"], keep_default_na=True)},
            figures=[Path(figure)] if figure else [], notes=summary["findings"] + summary["notes"]))
        for name in ("csv", "figure", "summary"):
            if summary["files"][name]:
                print(f"{name + ':':<9}{summary['files'][name]}")
    report = write_study_report(sections, title=f"Study analysis: {Path(args.study).resolve().name}",
                                intro=f"Recomputed from {', '.join(str(s['path']) for s in studies)}.",
                                out_dir=out)
    print(f"report:  {report}")
    if failed:
        print(f"error: the figure of the {', '.join(failed)} study could not be drawn (the other outputs were "
              "written)", file=sys.stderr)
        return 1
    return 0
