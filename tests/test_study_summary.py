"""The statistics, figure and summary of a multi-seed study, on synthetic runs tables (no training),
and ``nnlab analyze --study DIR`` as a subprocess."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines
from scipy import stats

from nnlab.stats import bootstrap_ci, min_wilcoxon_p
from nnlab.errors import ConfigError
from nnlab.study._summary import STUDY_COLUMNS, read_study_dir, write_study_outputs
import _forked

REPO = Path(__file__).resolve().parents[1]
PRECISION_KEYS = ["schedule", "rounding", "bits", "policy"]
PRECISION_REF = {"schedule": "epoch", "rounding": "none", "bits": 24, "policy": "float32"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_row(seed: int, test_r2: float, *, status: str = "completed", val: float = 0.01, time: float = 1.0,
            **cell) -> dict:
    return {**cell, "seed": seed, "run_id": f"r{seed}", "run_dir": f"runs/r{seed}", "status": status,
            "test_r2": test_r2, "best_val_mse": val, "epoch_time_mean": time,
            "format_r2_bfloat16": math.nan, "format_r2_float16": math.nan,
            "format_r2_float8_e4m3": math.nan, "format_r2_float8_e5m2": math.nan}


REF_R2 = np.array([0.990, 0.992, 0.989, 0.991, 0.993, 0.990, 0.988, 0.992])
JS_R2 = REF_R2 - np.array([0.004, 0.006, 0.003, 0.005, 0.007, 0.002, 0.004, 0.006])
SAME_R2 = REF_R2 + np.array([0.001, -0.002, 0.0005, -0.0005, 0.0015, -0.001, 0.002, -0.0015])


def compare_runs() -> pd.DataFrame:
    rows = [run_row(s, r, variant="plain", val=0.01 + s * 1e-3, time=2.0) for s, r in enumerate(REF_R2)]
    rows += [run_row(s, r, variant="js", val=0.02, time=3.0) for s, r in enumerate(JS_R2)]
    rows += [run_row(s, r, variant="same", time=2.5) for s, r in enumerate(SAME_R2)]
    return pd.DataFrame(rows)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --- statistics ---------------------------------------------------------------------------


def test_compare_values_match_scipy_and_definitions(tmp_path):
    summary = write_study_outputs(tmp_path, "compare", compare_runs(), keys=["variant"],
                                  reference={"variant": "plain"})
    table = pd.read_csv(tmp_path / "compare_study.csv")
    assert list(table.columns) == ["variant", *STUDY_COLUMNS]
    assert table["variant"].tolist() == ["plain", "js", "same"]  # reference first, then file order
    ref, js = table.iloc[0], table.iloc[1]

    assert ref["n_seeds"] == 8 and ref["test_r2_mean"] == pytest.approx(REF_R2.mean())
    low, high = bootstrap_ci(REF_R2, seed=0)
    assert (ref["test_r2_ci_low"], ref["test_r2_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert low < REF_R2.mean() < high
    assert ref["val_mse_mean"] == pytest.approx(0.01 + 3.5e-3)
    assert ref["epoch_time_ratio"] == pytest.approx(1.0)
    for column in ("diff_vs_ref_mean", "diff_ci_low", "diff_ci_high", "wilcoxon_p", "cohens_d", "n_pairs"):
        assert pd.isna(ref[column]), column  # empty in the CSV

    diff = JS_R2 - REF_R2
    assert js["diff_vs_ref_mean"] == pytest.approx(diff.mean())
    assert js["wilcoxon_p"] == pytest.approx(stats.wilcoxon(JS_R2, REF_R2).pvalue)
    assert js["wilcoxon_p"] == pytest.approx(min_wilcoxon_p(8))  # every difference negative
    assert js["cohens_d"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    low, high = bootstrap_ci(diff, seed=0)
    assert (js["diff_ci_low"], js["diff_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert js["n_pairs"] == 8 and js["epoch_time_ratio"] == pytest.approx(1.5)
    same = table.iloc[2]
    assert same["wilcoxon_p"] == pytest.approx(stats.wilcoxon(SAME_R2, REF_R2).pvalue)
    assert same["wilcoxon_p"] > 0.05

    saved = json.loads((tmp_path / "compare_summary.json").read_text())
    assert saved == summary
    assert saved["kind"] == "compare" and saved["keys"] == ["variant"] and saved["reference"] == {"variant": "plain"}
    assert saved["n_cells"] == 3 and saved["seeds"] == list(range(8)) and saved["alpha"] == 0.05
    assert saved["min_attainable_p"] == pytest.approx(min_wilcoxon_p(8)) and saved["significance_possible"]
    assert saved["cells"][1]["wilcoxon_p"] == pytest.approx(js["wilcoxon_p"])
    assert saved["cells"][0]["wilcoxon_p"] is None  # NaN -> null
    findings = " ".join(saved["findings"])
    assert "js: significantly worse than the reference plain" in findings
    assert "same: not significantly different from the reference plain" in findings
    assert png_size(tmp_path / "compare_study.png")[0] > 1000


def test_pairs_only_seeds_present_in_both_and_failed_runs_are_left_out(tmp_path):
    runs = compare_runs()
    runs = runs[~((runs["variant"] == "js") & runs["seed"].isin([0, 1]))]  # js lacks seeds 0, 1
    runs = runs[~((runs["variant"] == "plain") & (runs["seed"] == 7))].copy()  # the reference lacks seed 7
    # A failed js run at seed 2 (its test R² must not count) replaces the completed one.
    runs.loc[(runs["variant"] == "js") & (runs["seed"] == 2), ["status", "test_r2"]] = ["failed: OSError", 0.1]
    summary = write_study_outputs(tmp_path, "compare", runs, keys=["variant"], reference={"variant": "plain"})
    js = pd.read_csv(tmp_path / "compare_study.csv").set_index("variant").loc["js"]
    used = [3, 4, 5, 6]
    assert js["n_seeds"] == 5 and js["n_failed"] == 1 and js["n_pairs"] == 4
    assert js["test_r2_mean"] == pytest.approx(JS_R2[[3, 4, 5, 6, 7]].mean())
    assert js["diff_vs_ref_mean"] == pytest.approx((JS_R2[used] - REF_R2[used]).mean())
    assert js["wilcoxon_p"] == pytest.approx(stats.wilcoxon(JS_R2[used], REF_R2[used]).pvalue)
    assert any("did not complete" in note and "failed: 1" in note for note in summary["notes"])


def test_one_seed_cell_diverged_run_and_duplicate_seed(tmp_path):
    rows = [run_row(s, r, variant="plain") for s, r in enumerate(REF_R2)]
    rows.append(run_row(0, 0.95, variant="lonely"))  # one seed: no CI
    rows += [run_row(s, math.nan if s == 3 else r, variant="wild", status="diverged" if s == 3 else "completed")
             for s, r in enumerate(JS_R2)]
    rows.append(run_row(0, 0.5, variant="plain", status="failed: killed"))
    summary = write_study_outputs(tmp_path, "compare", pd.DataFrame(rows), keys=["variant"],
                                  reference={"variant": "plain"})
    table = pd.read_csv(tmp_path / "compare_study.csv").set_index("variant")
    lonely, wild = table.loc["lonely"], table.loc["wild"]
    assert lonely["n_seeds"] == 1 and lonely["test_r2_mean"] == pytest.approx(0.95)
    assert math.isnan(lonely["test_r2_ci_low"]) and math.isnan(lonely["test_r2_ci_high"])
    assert lonely["n_pairs"] == 1 and lonely["diff_vs_ref_mean"] == pytest.approx(0.95 - REF_R2[0])
    assert math.isnan(lonely["diff_ci_low"]) and math.isnan(lonely["cohens_d"])
    assert wild["n_seeds"] == 7 and wild["n_diverged"] == 1 and wild["n_pairs"] == 7
    assert wild["test_r2_mean"] == pytest.approx(np.delete(JS_R2, 3).mean())
    assert table.loc["plain", "n_failed"] == 1 and table.loc["plain", "n_seeds"] == 8
    notes = " ".join(summary["notes"])
    assert "single seed" in notes and "lonely" in notes
    assert "diverged" in notes and "wild: 1" in notes
    assert png_size(tmp_path / "compare_study.png")[0] > 0


def test_all_runs_failed_writes_everything_and_says_so(tmp_path):
    rows = [run_row(s, math.nan, status="failed: boom", variant=v) for v in ("a", "b") for s in range(3)]
    summary = write_study_outputs(tmp_path, "compare", pd.DataFrame(rows), keys=["variant"],
                                  reference={"variant": "a"})
    table = pd.read_csv(tmp_path / "compare_study.csv")
    assert table["n_seeds"].tolist() == [0, 0] and table["n_failed"].tolist() == [3, 3]
    assert table["test_r2_mean"].isna().all()
    assert any("None of the 6 runs completed" in n for n in summary["notes"])
    assert "no usable run" in summary["findings"][0]
    assert png_size(tmp_path / "compare_study.png")[0] > 0
    # The same for a precision study with no runs at all for the reference.
    rows = [run_row(s, math.nan, status="failed: x", schedule="epoch", rounding="nearest", bits=4,
                    policy="float32") for s in range(2)]
    summary = write_study_outputs(tmp_path, "precision", pd.DataFrame(rows), keys=PRECISION_KEYS,
                                  reference=PRECISION_REF)
    assert summary["cells"][0]["rounding"] == "none" and summary["cells"][0]["n_seeds"] == 0
    assert any("reference cell" in n and "no runs at all" in n for n in summary["notes"])
    assert png_size(tmp_path / "precision_study.png")[0] > 0


def test_empty_table(tmp_path):
    empty = pd.DataFrame(columns=list(run_row(0, 0.0, variant="a")))
    summary = write_study_outputs(tmp_path, "compare", empty, keys=["variant"], reference={"variant": "a"})
    assert summary["n_runs"] == 0 and summary["n_cells"] == 1
    assert any("empty" in n for n in summary["notes"])


def test_bad_inputs_raise_config_error_naming_the_problem(tmp_path):
    runs = compare_runs()
    with pytest.raises(ConfigError, match="kind must be one of precision, compare"):
        write_study_outputs(tmp_path, "sweep", runs, keys=["variant"], reference={"variant": "plain"})
    with pytest.raises(ConfigError, match="no column 'best_val_mse'"):
        write_study_outputs(tmp_path, "compare", runs.drop(columns="best_val_mse"), keys=["variant"],
                            reference={"variant": "plain"})
    with pytest.raises(ConfigError, match="no column 'flavour'"):
        write_study_outputs(tmp_path, "compare", runs, keys=["flavour"], reference={"flavour": "x"})
    with pytest.raises(ConfigError, match="reference must give one value for each key"):
        write_study_outputs(tmp_path, "compare", runs, keys=["variant"], reference={"name": "plain"})
    with pytest.raises(ConfigError, match="alpha"):
        write_study_outputs(tmp_path, "compare", runs, keys=["variant"], reference={"variant": "plain"}, alpha=5)
    with pytest.raises(ConfigError, match="DataFrame"):
        write_study_outputs(tmp_path, "compare", runs.to_dict("records"), keys=["variant"],
                            reference={"variant": "plain"})
    assert not list(tmp_path.iterdir())  # nothing written on bad input


def test_few_seeds_cannot_be_significant(tmp_path):
    runs = compare_runs()
    summary = write_study_outputs(tmp_path, "compare", runs[runs["seed"] < 3], keys=["variant"],
                                  reference={"variant": "plain"})
    assert summary["seeds"] == [0, 1, 2] and summary["n_seeds_completed"] == 3
    assert summary["min_attainable_p"] == pytest.approx(0.25) and not summary["significance_possible"]
    assert any("smallest p-value" in n and "0.25" in n for n in summary["notes"])
    assert "no test can reach p < 0.05" in summary["findings"][-1]


# --- precision study ----------------------------------------------------------------------

SEEDS = range(8)
NOISE = np.array([0.0004, -0.0003, 0.0001, -0.0005, 0.0003, 0.0, -0.0002, 0.0006])


def precision_runs() -> pd.DataFrame:
    """Stochastic rounding keeps up with float32 down to 4 bits; nearest and truncate collapse below 8."""
    ref = 0.990
    drop = {"truncate": {16: 0.0, 12: 0.001, 8: 0.004, 6: 0.03, 4: 0.2},
            "nearest": {16: 0.0, 12: 0.0005, 8: 0.003, 6: 0.02, 4: 0.15},
            "stochastic": {16: 0.0, 12: 0.0, 8: 0.0005, 6: 0.001, 4: 0.0015}}
    jitter = np.random.default_rng(3)
    rows = []
    for s in SEEDS:
        rows.append(run_row(s, ref + NOISE[s], time=1.0, **PRECISION_REF) | {
            "format_r2_bfloat16": ref + NOISE[s] - 0.001, "format_r2_float16": ref + NOISE[s],
            "format_r2_float8_e4m3": 0.90 + NOISE[s], "format_r2_float8_e5m2": math.nan,
            "format_r2_int8": ref + NOISE[s] - 0.002, "format_r2_int4": 0.95 + NOISE[s]})
        for rounding, by_bits in drop.items():
            for bits, d in by_bits.items():
                rows.append(run_row(s, ref + NOISE[s] - d + jitter.normal(0, 2e-4), time=1.3, schedule="epoch",
                                    rounding=rounding, bits=bits, policy="float32"))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # the order must not matter


def test_precision_findings_rows_and_figure(tmp_path):
    summary = write_study_outputs(tmp_path, "precision", precision_runs(), keys=PRECISION_KEYS,
                                  reference=PRECISION_REF)
    table = pd.read_csv(tmp_path / "precision_study.csv")
    cells = list(zip(table["rounding"], table["bits"]))
    assert cells[0] == ("none", 24)  # reference first, then by rounding, bits descending
    assert cells[1:] == [(r, b) for r in ("truncate", "nearest", "stochastic") for b in (16, 12, 8, 6, 4)]
    assert table["epoch_time_ratio"].iloc[1:].tolist() == pytest.approx([1.3] * 15)

    within = summary["fewest_bits_within"]
    assert within["stochastic"] == {"0.002": 4, "0.005": 4}
    assert within["nearest"] == {"0.002": 12, "0.005": 8}
    assert within["truncate"] == {"0.002": 12, "0.005": 8}
    at4 = {c["rounding"]: c for c in summary["stochastic_comparisons"] if c["bits"] == 4}
    assert set(at4) == {"truncate", "nearest"}
    stochastic4 = table[(table["rounding"] == "stochastic") & (table["bits"] == 4)].iloc[0]
    nearest4 = table[(table["rounding"] == "nearest") & (table["bits"] == 4)].iloc[0]
    assert at4["nearest"]["significantly_worse"] and not at4["nearest"]["significantly_better"]
    assert at4["nearest"]["diff_mean"] == pytest.approx(nearest4["test_r2_mean"] - stochastic4["test_r2_mean"])
    assert at4["nearest"]["wilcoxon_p"] == pytest.approx(min_wilcoxon_p(8))
    findings = summary["findings"]
    assert any(f.startswith("At 4 bits, nearest rounding is significantly worse than stochastic rounding")
               for f in findings)
    assert any(f.startswith("At 4 bits, truncate rounding is significantly worse than stochastic") for f in findings)
    assert any(f.startswith("stochastic: mean test R² within 0.002 of the reference from 4 bits up")
               for f in findings)
    assert any(f.startswith("nearest: mean test R² within 0.002 of the reference from 12 bits up, within 0.005 "
                            "of the reference from 8 bits up") for f in findings)

    formats = summary["formats"]
    assert list(formats) == ["bfloat16", "float16", "float8_e4m3", "int8", "int4"]  # e5m2 all NaN: skipped
    assert (formats["int8"]["bits"], formats["int4"]["bits"]) == (8, 4)
    assert formats["int8"]["diff_vs_ref_mean"] == pytest.approx(-0.002)
    assert formats["int4"]["test_r2_mean"] == pytest.approx(0.95 + NOISE.mean())
    assert any(f.startswith("The float32-trained network deployed in int4 (4 bits)") for f in summary["findings"])
    assert formats["float8_e4m3"]["bits"] == 4
    assert formats["float8_e4m3"]["test_r2_mean"] == pytest.approx(0.90 + NOISE.mean())
    assert formats["bfloat16"]["diff_vs_ref_mean"] == pytest.approx(-0.001)
    assert any("deployed in float8_e4m3 (4 bits)" in f for f in findings)

    width, height = png_size(tmp_path / "precision_study.png")
    assert width > 2000 and height > 1000


def test_precision_keys_and_reference_survive_csv_round_trip(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    precision_runs().to_csv(study / "precision_runs.csv", index=False)
    (found,) = read_study_dir(study)
    assert found["kind"] == "precision" and found["keys"] == PRECISION_KEYS
    assert found["reference"] == PRECISION_REF and found["alpha"] == 0.05
    summary = write_study_outputs(tmp_path, "precision", found["runs"], keys=found["keys"],
                                  reference=found["reference"])
    assert summary["cells"][0]["n_seeds"] == 8 and summary["cells"][0]["bits"] == 24


# --- nnlab analyze --study ------------------------------------------------------------------


def nnlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _forked.run([sys.executable, "-m", "nnlab.cli", *args], capture_output=True, text=True, cwd=cwd,
                       check=False, timeout=300)


def checksums(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_analyze_study_writes_a_new_folder_and_never_touches_the_study(tmp_path):
    study = tmp_path / "my_study"
    runs = compare_runs()
    write_study_outputs(study, "compare", runs, keys=["variant"], reference={"variant": "same"})
    runs.to_csv(study / "compare_runs.csv", index=False)
    before = checksums(study)
    proc = nnlab("analyze", "--study", str(study), "--analysis-dir", str(study), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert checksums(study).items() >= before.items()  # nothing in DIR changed
    (out,) = [p for p in study.iterdir() if p.is_dir()]
    assert out.name.startswith("study_my_study_")
    for name in ("compare_study.csv", "compare_study.png", "compare_summary.json", "report.html"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "compare_summary.json").read_text())
    assert summary["reference"] == {"variant": "same"}  # read from the study's own summary
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["same", "(reference)"] for line in lines)
    assert any(line.split()[:2] == ["js", "8"] for line in lines)
    report = (out / "report.html").read_text()
    assert "Compare study" in report and "data:image/png;base64," in report

    # Default place: <output-dir>/analysis; a second analysis gets a folder of its own.
    first = nnlab("analyze", "--study", str(study), "--output-dir", "out", "--quiet", cwd=tmp_path)
    second = nnlab("analyze", "--study", str(study), "--output-dir", "out", "--quiet", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    folders = sorted((tmp_path / "out" / "analysis").iterdir())
    assert len(folders) == 2 and all((f / "compare_study.csv").is_file() for f in folders)
    assert checksums(study).items() >= before.items()


def test_analyze_study_bad_directories_exit_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = nnlab("analyze", "--study", "empty", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "empty" in proc.stderr and "precision_runs.csv or compare_runs.csv" in proc.stderr
    assert not (tmp_path / "training_output").exists()

    proc = nnlab("analyze", "--study", "missing", cwd=tmp_path)
    assert proc.returncode == 2 and "'missing' does not exist" in proc.stderr

    bad = tmp_path / "bad"
    bad.mkdir()
    compare_runs().drop(columns="test_r2").to_csv(bad / "compare_runs.csv", index=False)
    proc = nnlab("analyze", "--study", "bad", "--output-dir", "out", cwd=tmp_path)
    assert proc.returncode == 2 and "compare_runs.csv" in proc.stderr and "'test_r2'" in proc.stderr
    assert proc.stderr.count("error:") == 1  # one message (past 120 columns it continues on indented lines)
    assert all(line.startswith("  ") for line in proc.stderr.strip().splitlines()[1:])
    assert not any((tmp_path / "out" / "analysis").iterdir())  # no empty folder left behind

    proc = nnlab("analyze", "--study", "bad", "--run", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "--run" in proc.stderr


def test_unreadable_test_r2_is_not_diverged_and_no_finding_without_data(tmp_path):
    """`nnlab analyze --study` on a runs table with a test_r2 of "abc" and cells with no data at all."""
    study = tmp_path / "s"
    study.mkdir()
    runs = compare_runs().astype({"test_r2": object})
    runs.loc[(runs["variant"] == "js") & (runs["seed"] == 0), "test_r2"] = "abc"
    runs.loc[runs["variant"] == "same", "status"] = "failed: disk full"  # a cell without data
    runs.to_csv(study / "compare_runs.csv", index=False)
    proc = nnlab("analyze", "--study", str(study), "--output-dir", "out", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (out,) = (tmp_path / "out" / "analysis").iterdir()
    summary = json.loads((out / "compare_summary.json").read_text())
    js = next(c for c in summary["cells"] if c["variant"] == "js")
    assert js["n_diverged"] == 0 and js["n_seeds"] == 7 and summary["n_diverged"] == 0
    assert any("1 completed run(s) have an unreadable test_r2 ('abc')" in n for n in summary["notes"])
    assert not any("no finite test R² (diverged)" in n for n in summary["notes"])
    assert not any(f.startswith("same:") for f in summary["findings"])  # no data, no finding
    assert any(f.startswith("js: significantly worse") for f in summary["findings"])

    # A precision curve with no data at all gets no finding either.
    rows = precision_runs()
    rows.loc[rows["rounding"] == "nearest", "status"] = "failed: x"
    summary = write_study_outputs(tmp_path / "p", "precision", rows, keys=PRECISION_KEYS, reference=PRECISION_REF)
    assert "nearest" not in summary["fewest_bits_within"]
    assert not any(f.startswith("nearest:") or "nearest rounding" in f for f in summary["findings"])
    assert any(f.startswith("truncate:") for f in summary["findings"])
