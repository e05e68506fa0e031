"""`nnlab analyze`: every analysis in its own folder, a headline with units, verdicts that state their rules."""

from __future__ import annotations

import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import _forked

REPO = Path(__file__).resolve().parents[1]
FAST_SKIP = "james_stein,physics,baselines,learning_rate,loss_and_constraints"


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables_of(html: str) -> list[list[list[str]]]:
    parser = Tables()
    parser.feed(html)
    return parser.tables


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "training_output"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    env.pop("NNLAB_CONFIG_DIR", None)
    proc = _forked.run([sys.executable, "main.py", "--num-particles", "200", "--epochs", "2", "--set",
                        "hidden_layers=[8]", "--set", "jit_compile=false", "--quiet", "--output-dir", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [run_dir] = (out / "runs").iterdir()
    return out, run_dir.name


@pytest.fixture(scope="module")
def two_analyses(tiny_run):
    """The same run analysed twice into one output directory (the second without the residuals)."""
    from nnlab.cli import main

    out, run_id = tiny_run
    outputs = []
    for skip in (FAST_SKIP, FAST_SKIP + ",residuals"):
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main(["analyze", "--output-dir", str(out), "--skip", skip, "--sample-size", "32"]) == 0
        outputs.append(buffer.getvalue())
    return out, run_id, outputs


def test_two_analyses_keep_their_own_folders(two_analyses):
    out, run_id, outputs = two_analyses
    first, second = out / "analysis" / run_id, out / "analysis" / f"{run_id}_2"
    for folder, printed in ((first, outputs[0]), (second, outputs[1])):
        assert (folder / "report.html").is_file() and len(list(folder.glob("analysis_summary_*.json"))) == 1
        assert f"analysis: {folder}\n" in printed
        assert (f"report:   {folder / 'report.html'}\n" in printed or "report:   <analysis>/report.html\n" in printed)
        assert (folder / "training_dynamics_dashboard.png").is_file()
    # The first analysis keeps its residual figure; the second (residuals skipped) has none: no stale figure.
    assert (first / "residual_analysis_suite.png").is_file()
    assert not (second / "residual_analysis_suite.png").exists()
    assert "alt='residual_analysis_suite.png'" in (first / "report.html").read_text(encoding="utf-8")
    assert "alt='residual_analysis_suite.png'" not in (second / "report.html").read_text(encoding="utf-8")
    # Nothing half-written is left: no temporary folder, nothing loose in the analysis root.
    assert sorted(p.name for p in (out / "analysis").iterdir()) == [run_id, f"{run_id}_2"]


def test_every_printed_line_fits_120_columns(two_analyses):
    _, _, outputs = two_analyses
    for printed in outputs:
        assert max(len(line) for line in printed.splitlines()) <= 120


def test_headline_names_each_target_with_its_unit(two_analyses):
    out, run_id, _ = two_analyses
    html = (out / "analysis" / run_id / "report.html").read_text(encoding="utf-8")
    headline = dict(row for row in tables_of(html)[0] if len(row) == 2)
    assert headline.pop("quantity") == "value"
    labels = list(headline)
    assert not any(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", label) for label in labels)  # no raw keys
    assert "prediction_mae" not in html.split("<h2 id='artifacts'")[0]
    assert "test R² (standardised targets, mean over targets)" in headline
    units = {"final_velocity_x": "m/s", "final_velocity_y": "m/s", "final_position_x": "m",
             "final_position_y": "m", "kinetic_energy": "J", "displacement": "m"}
    for target, unit in units.items():
        value = headline[f"test MAE of {target} ({unit})"]
        assert value.endswith(f" {unit}") and float(value.split()[0]) > 0


def test_residual_table_states_each_targets_unit(two_analyses):
    import json

    out, run_id, _ = two_analyses
    [path] = (out / "analysis" / run_id).glob("analysis_summary_*.json")
    summary = json.loads(path.read_text())
    rows = summary["sections"]["residuals"]["summary"]["per_target"]
    assert {r["target"]: r["unit"] for r in rows}["kinetic_energy"] == "J"
    assert summary["target_units"]["final_velocity_x"] == "m/s"


def test_report_tables_scroll_inside_the_page(two_analyses):
    out, run_id, _ = two_analyses
    html = (out / "analysis" / run_id / "report.html").read_text(encoding="utf-8")
    assert ".table-wrap{max-width:100%;overflow-x:auto" in html
    assert html.count("<table") == html.count("<div class='table-wrap'><table")


def test_a_failed_analysis_leaves_no_folder(tiny_run, tmp_path, monkeypatch):
    from nnlab.analysis import ExperimentAnalysis

    out, _ = tiny_run
    analysis = ExperimentAnalysis(out, analysis_dir=tmp_path / "a")
    assert analysis.analysis_dir.name.startswith(".") and analysis.analysis_dir.is_dir()
    analysis.run_section("dynamics")
    analysis.discard()
    assert list((tmp_path / "a").iterdir()) == []


# --- the rules the verdicts state ------------------------------------------------------------


def test_confidence_labels_follow_the_stated_p_thresholds():
    from nnlab.analysis.labels import CONFIDENCE_RULE, confidence_from_p

    assert confidence_from_p(0.22, 30) == "Low"
    assert confidence_from_p(0.03, 30) == "Medium"
    assert confidence_from_p(0.004, 30) == "High" and confidence_from_p(0.004, 3) == "Medium"
    assert confidence_from_p(None) == "Low"
    assert "p < 0.01" in CONFIDENCE_RULE and "p < 0.05" in CONFIDENCE_RULE


def _curves(gap: float, noise: float, n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    train = np.linspace(1.0, 0.5, n)
    return pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": train,
                         "val_loss": train + gap + rng.normal(0, noise, n)})


def test_a_significant_but_small_gap_is_not_called_overfitting_and_says_why():
    from nnlab.analysis.recommendations import overfitting_rule

    row = overfitting_rule(_curves(gap=0.015, noise=0.002), {"dropout_rate": 0.0})
    assert row["p_value"] < 0.01 and row["status"] == "✓"
    assert "threshold: not material, though significant (p = " in row["expected_impact"]
    assert "< 10% threshold" in row["expected_impact"]
    assert row["confidence"] == "High" and "< 0.01" in row["confidence_basis"]
    assert "p < 0.05 AND gap ≥ 10%" in row["evidence"]


def test_overfitting_needs_both_thresholds_and_states_them():
    from nnlab.analysis.recommendations import overfitting_rule

    row = overfitting_rule(_curves(gap=0.3, noise=0.01), {"dropout_rate": 0.0})
    assert row["status"] == "✗" and "≥ 10% threshold and significant (p = " in row["expected_impact"]
    row = overfitting_rule(_curves(gap=0.0, noise=0.05, seed=3), {"dropout_rate": 0.0})
    assert row["p_value"] >= 0.05 and row["status"] == "✓" and row["confidence"] == "Low"
    assert "no significant overfitting (p = " in row["expected_impact"] or "not significant" in row["expected_impact"]


def test_correlations_below_the_minimum_n_report_no_rho():
    from nnlab.analysis.significance import MIN_CORRELATION_N, spearman

    assert MIN_CORRELATION_N == 8
    small = spearman([1, 2, 3, 4], [2, 4, 6, 8])
    assert small["rho"] is None and small["p_value"] is None and small["reason"] == "n too small (n = 4 < 8)"
    x = np.arange(10.0)
    found = spearman(x, x ** 2)
    assert found["rho"] == pytest.approx(1.0) and found["method"].startswith("permutation test")
    assert 0 < found["p_value"] < 0.001  # a permutation p is never 0
    big = spearman(np.arange(40.0), np.arange(40.0) % 7)
    assert big["method"] == "Spearman t-approximation"


def test_heatmap_of_four_runs_says_n_too_small(tmp_path):
    from nnlab.analysis.heatmap import hyperparameter_heatmap

    history = pd.DataFrame({"run_id": list("abcd"), "status": ["completed"] * 4,
                            "learning_rate": [1e-4, 1e-3, 1e-2, 1e-1], "best_val_r2": [0.9, 0.8, 0.7, 0.6],
                            "test_r2": [0.88, 0.79, 0.69, 0.5]})
    result = hyperparameter_heatmap(history, None, tmp_path)
    assert result.summary["strongest_positive"] == [] and result.summary["strongest_negative"] == []
    matrix = result.tables["correlations (parameters × metrics)"]
    assert (matrix.set_index("parameter").loc["log10_learning_rate"] == "n too small (n = 4 < 8)").all()
    assert set(result.tables["every pair"]["rho"]) == {"n too small (n = 4 < 8)"}


def test_james_stein_p_values_state_their_method():
    from nnlab.analysis.james_stein import paired_permutation_p, wilcoxon_method

    a = np.array([1.0, 2, 3, 4, 5, 6])
    b = a - np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert wilcoxon_method(a, b) == "exact Wilcoxon"
    assert paired_permutation_p(a, b) == pytest.approx(2 / 64)  # all 64 sign patterns: exact
    assert paired_permutation_p([1.0], [0.5]) == 1.0  # one seed: nothing to permute
    assert wilcoxon_method(a, a - 0.1).startswith("Wilcoxon, normal approximation")  # tied differences
