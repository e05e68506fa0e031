"""Progress lines with the time left (search and study), and studies that say when a setting did nothing.

The search and the study train for real on tiny data (200-300 particles, 2-3 epochs, hidden layer [8]) through
the command line in subprocesses; the flags are read back from the summary JSON the study wrote.
"""

from __future__ import annotations

import csv
import doctest
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nnlab.orchestration import eta_text
import _forked

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "ml_config")
WIDTH = 120
NO_CONSTRAINTS = ("enable_weight_oscillation_dampener=false", "use_adaptive_oscillation_dampener=false",
                  "enable_binary_change_max=false", "enable_binary_precision_max=false")


def nnlab(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "120"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return _forked.run([sys.executable, "-m", "nnlab", *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=timeout)


# --- the time left ---------------------------------------------------------------------------


@pytest.mark.parametrize(("done", "total", "elapsed", "workers", "expected"), [
    (0, 10, 0.0, 1, "eta n/a"),                # nothing finished: no mean yet
    (1, 10, 30.0, 1, "eta ~4:30"),             # 9 left × 30 s
    (2, 10, 60.0, 2, "eta ~2:00"),             # 8 left × 30 s on 2 workers
    (3, 4, 30.0, 4, "eta ~0:10"),              # one left: one worker runs it, the others idle
    (1, 100, 90.0, 1, "eta ~2:28:30"),         # hours as h:mm:ss
    (1, 3, 0.4, 1, "eta ~0:01"),               # rounded to the second
    (5, 5, 50.0, 2, "eta 0:00"),               # none left
    (6, 5, 50.0, 1, "eta 0:00"),               # more finished than planned (an extended budget counted before)
    (2, 5, math.nan, 1, "eta n/a"),            # no duration recorded
])
def test_eta_text(done, total, elapsed, workers, expected):
    assert eta_text(done, total, elapsed, workers) == expected


def test_doctests():
    import nnlab.orchestration._pool as pool
    import nnlab.study._flags as flags

    assert doctest.testmod(pool).failed == 0
    assert doctest.testmod(flags).failed == 0


def _trials(*errors: str, preset: str = "fast_debug") -> list:
    """Finished trials 0, 1, ... of an in-memory Optuna study: complete, or failed with the error given."""
    import optuna

    study = optuna.create_study(direction="maximize")
    for error in errors:
        attrs = {"preset": preset, "outcome": "failed" if error else "complete", "duration_s": 12.5,
                 "metrics": {"best_r2": 0.91234}, **({"error": error} if error else {})}
        study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs=attrs) if not error else
                        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))
    return study.get_trials()


def test_search_progress_line_has_the_eta_and_fits_120_columns():
    from nnlab.hpo._results import format_progress

    long_error = "ValueError: " + "the sampled combination is not valid " * 10
    best, failed, full_disk = _trials("", long_error, "disk full")
    line = format_progress(best, best, eta="eta ~1:05")
    assert line.endswith("best 0.9000 (trial 0)  eta ~1:05") and len(line) <= WIDTH
    first, second = format_progress(failed, best, worker=3, eta="eta ~12:34:56").split("\n")
    assert first.startswith("[worker 3] trial   1") and first.endswith("  eta ~12:34:56")
    assert second.startswith("    -- ValueError: the sampled combination is not valid the sampled")
    assert len(second) == WIDTH and second.endswith("…")  # shortened; the whole error is in the results CSV
    first, second = format_progress(failed, best, eta="eta ~1:05").split("\n")  # too long for the rest of line 1
    assert len(first) <= WIDTH and len(second) == WIDTH
    assert format_progress(full_disk, best).endswith("best 0.9000 (trial 0)  -- disk full")


# --- cell flags from the runs' own files ---------------------------------------------------------


def _run_dir(root: Path, name: str, applied: list[int] | None, *, interval: int = 5) -> str:
    """A run directory as a run writes it: training_results.csv (with constraint/applied when the run has
    epoch-level constraints) and training_config.json."""
    directory = root / name
    directory.mkdir(parents=True)
    columns = ["epoch", "r2_score"] + ([] if applied is None else ["constraint/applied"])
    with open(directory / "training_results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for epoch, flag in enumerate(applied or [0, 0, 0], start=1):
            writer.writerow([epoch, 0.5] + ([] if applied is None else [float(flag)]))
    (directory / "training_config.json").write_text(json.dumps(
        {"config": {"constraint_interval": interval, "epochs": 3}}), encoding="utf-8")
    return str(directory)


def test_cell_flags_from_run_files(tmp_path):
    from nnlab.study import summarise_study

    runs = pd.DataFrame([
        # plain: no epoch-level constraint at all (no column): never flagged for it
        {"variant": "plain", "seed": 0, "test_r2": 0.8123456789, "best_val_mse": 0.1,
         "run_dir": _run_dir(tmp_path, "p0", None)},
        {"variant": "plain", "seed": 1, "test_r2": 0.7, "best_val_mse": 0.2, "run_dir": _run_dir(tmp_path, "p1", None)},
        # js: interval 5 in 3 epochs: never ran, and identical to plain in both seeds
        {"variant": "js", "seed": 0, "test_r2": 0.8123456789, "best_val_mse": 0.1,
         "run_dir": _run_dir(tmp_path, "j0", [0, 0, 0])},
        {"variant": "js", "seed": 1, "test_r2": 0.7, "best_val_mse": 0.2, "run_dir": _run_dir(tmp_path, "j1", [0, 0, 0])},
        # bits: ran every epoch; equal to plain in seed 0 only by its R² (its MSE differs): not identical
        {"variant": "bits", "seed": 0, "test_r2": 0.8123456789, "best_val_mse": 0.11,
         "run_dir": _run_dir(tmp_path, "b0", [1, 1, 1], interval=1)},
        {"variant": "bits", "seed": 1, "test_r2": 0.7, "best_val_mse": 0.2, "run_dir": _run_dir(tmp_path, "b1", [1, 1, 1])},
        # close: 1e-12 away from plain in seed 1: not identical to full precision
        {"variant": "close", "seed": 0, "test_r2": 0.8123456789, "best_val_mse": 0.1, "run_dir": ""},
        {"variant": "close", "seed": 1, "test_r2": 0.7 + 1e-12, "best_val_mse": 0.2, "run_dir": ""},
    ]).assign(status="completed", epoch_time_mean=1.0)
    _, summary, _ = summarise_study("compare", runs, keys=["variant"], reference={"variant": "plain"})
    flags = {(f["label"], f["flag"]): f for f in summary["flags"]}
    assert set(flags) == {("js", "constraint_never_ran"), ("js", "identical_to")}
    never = flags[("js", "constraint_never_ran")]
    assert never["message"].startswith("js: the constraint never ran in any of its 2 runs "
                                       "(constraint_interval 5 > 3 epochs)")
    assert [(r["seed"], r["constraint_applications"], r["epochs_run"]) for r in never["runs"]] == [(0, 0, 3), (1, 0, 3)]
    same = flags[("js", "identical_to")]
    assert same["duplicates"] == "plain" and same["seeds"] == [0, 1]
    by_cell = {c["variant"]: c["flags"] for c in summary["cells"]}
    assert by_cell["plain"] == by_cell["bits"] == by_cell["close"] == [] and len(by_cell["js"]) == 2
    assert never["message"] in summary["findings"] and same["message"] in summary["findings"]


def test_a_constraint_that_ran_in_some_runs_only_is_flagged_for_those(tmp_path):
    from nnlab.study import summarise_study

    runs = pd.DataFrame([
        {"variant": "a", "seed": 0, "test_r2": 0.5, "run_dir": _run_dir(tmp_path, "a0", None)},
        {"variant": "b", "seed": 0, "test_r2": 0.6, "run_dir": _run_dir(tmp_path, "b0", [0, 0])},
        {"variant": "b", "seed": 1, "test_r2": 0.4, "run_dir": _run_dir(tmp_path, "b1", [0, 1], interval=2)},
    ]).assign(status="completed", epoch_time_mean=1.0, best_val_mse=0.1)
    _, summary, _ = summarise_study("compare", runs, keys=["variant"], reference={"variant": "a"})
    assert [f["message"].split(" (")[0] for f in summary["flags"]] == ["b: the constraint never ran in 1 of its 2 runs"]


# --- a real search and a real study --------------------------------------------------------------


def test_search_progress_lines_have_an_eta_and_fit_120_columns(tmp_path):
    proc = nnlab("hpo", "--max-trials", "2", "--epochs", "2", "--num-particles", "200", "--presets", "fast_debug",
                 "--config-dir", CONFIG_DIR, "--set", "jit_compile=false", "--output-dir", "o", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("trial ")]
    assert len(lines) == 2, proc.stdout
    assert "  eta ~" in lines[0] and lines[-1].endswith("  eta 0:00")
    assert all(len(line) <= WIDTH for line in lines), [len(line) for line in lines]


@pytest.fixture(scope="module")
def flagged_study(tmp_path_factory):
    """A compare study of 3 cells × 2 seeds, 3 epochs, no default constraints: ``plain``; ``js`` (James-Stein
    every 5 epochs: never runs); ``bits`` (8-bit precision limit every epoch: runs, changes the results)."""
    cwd = tmp_path_factory.mktemp("flags")
    proc = nnlab("study", "compare", "--variant", "plain=",
                 "--variant", "js=enable_james_stein=true constraint_interval=5",
                 "--variant", "bits=enable_binary_precision_max=true max_binary_digits=8 constraint_interval=1",
                 "--seeds", "2", "--epochs", "3", "--num-particles", "300", "--config-dir", CONFIG_DIR,
                 "--set", "hidden_layers=[8]", "--set", "jit_compile=false",
                 *[arg for setting in NO_CONSTRAINTS for arg in ("--set", setting)],
                 "--output-dir", "s", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "s", proc


def test_study_progress_has_an_eta_and_fits_120_columns(flagged_study):
    _, proc = flagged_study
    runs = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(runs) == 6 and all("  eta " in line for line in runs), proc.stdout
    assert "  eta ~" in runs[0] and runs[-1].endswith("  eta 0:00")
    assert all(len(line) <= WIDTH for line in proc.stdout.splitlines()), proc.stdout


def test_study_says_as_runs_finish_that_the_constraint_never_ran(flagged_study):
    _, proc = flagged_study
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    for seed in (0, 1):
        assert (f"note: variant=js seed={seed}: the constraint never ran in this run "
                f"(constraint_interval 5 > 3 epochs)") in notes
        assert any(n.startswith(f"note: variant=js seed={seed}: identical to variant=plain seed={seed}")
                   for n in notes)
    assert not any("bits" in n or "variant=plain seed" in n.split(":")[1] for n in notes), notes
    # at the end, once per cell
    assert "note: cell 'js': the constraint never ran in any of its 2 runs (constraint_interval 5 > 3 epochs)" in notes
    assert ("note: cell 'js' is identical to cell 'plain' in every seed (2 of 2): its setting made no difference"
            in notes)


def test_study_findings_flag_the_cell_that_did_nothing(flagged_study):
    study_dir, _ = flagged_study
    summary = json.loads((study_dir / "compare_summary.json").read_text(encoding="utf-8"))
    flags = {(f["cell"]["variant"], f["flag"]) for f in summary["flags"]}
    assert flags == {("js", "constraint_never_ran"), ("js", "identical_to")}
    by_cell = {c["variant"]: c["flags"] for c in summary["cells"]}
    assert by_cell["plain"] == [] and by_cell["bits"] == [] and len(by_cell["js"]) == 2
    assert any(f.startswith("js: identical to plain in every seed (2 of 2") for f in summary["findings"])
    # the evidence is the runs' own record: constraint/applied in training_results.csv
    runs = pd.read_csv(study_dir / "compare_runs.csv")
    for _, run in runs.iterrows():
        applied = pd.read_csv(Path(run["run_dir"]) / "training_results.csv").get("constraint/applied")
        if run["variant"] == "plain":
            assert applied is None
        else:
            assert list(applied) == ([0.0, 0.0, 0.0] if run["variant"] == "js" else [1.0, 1.0, 1.0])
    js = runs[runs["variant"] == "js"].set_index("seed")["test_r2"]
    plain = runs[runs["variant"] == "plain"].set_index("seed")["test_r2"]
    bits = runs[runs["variant"] == "bits"].set_index("seed")["test_r2"]
    assert (js == plain).all() and (bits != plain).all()
