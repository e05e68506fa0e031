"""nnlab.analysis without TensorFlow: statistics against SciPy, recommendation rules on
constructed histories, heatmap tables, run discovery errors, the summary writer."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nnlab.analysis import ArtifactError
from nnlab.analysis.artifacts import list_runs, load_hpo_results, load_run, resolve_run_dir
from nnlab.analysis.baselines import guarded_mape
from nnlab.analysis.heatmap import hyperparameter_table, impact_correlations
from nnlab.analysis.recommendations import (
    batch_size_rule,
    convergence_rule,
    historical_best_rules,
    learning_rate_rule,
    overfitting_rule,
    recommend,
)
from nnlab.analysis.report import to_jsonable, write_summary
from nnlab.stats import (
    bootstrap_ci,
    cohens_d_paired,
    compare_paired,
    fit_exponential_decay,
    min_wilcoxon_p,
    one_sample_ttest,
    paired_wilcoxon,
)

RNG = np.random.default_rng(20261126)


# --- statistics against SciPy ---------------------------------------------------------


@pytest.mark.parametrize("n, shift", [(8, 0.0), (12, 0.5), (30, -0.2)])
def test_wilcoxon_matches_scipy(n, shift):
    a = RNG.normal(size=n)
    b = a + shift + RNG.normal(scale=0.3, size=n)
    expected = stats.wilcoxon(a, b)
    got = paired_wilcoxon(a, b)
    assert got["statistic"] == pytest.approx(expected.statistic)
    assert got["p_value"] == pytest.approx(expected.pvalue)
    assert got["n"] == n


def test_wilcoxon_edge_cases():
    assert paired_wilcoxon([1, 2, 3], [1, 2, 3]) == {"statistic": 0.0, "p_value": 1.0, "n": 3}
    assert paired_wilcoxon([1.0, np.nan, 3.0], [0.5, 1.0, 2.0])["n"] == 2  # non-finite pairs dropped
    # Exact test, all 6 differences positive: the smallest two-sided p, 2 / 2**6.
    assert paired_wilcoxon(np.arange(6) + 1.0, np.zeros(6))["p_value"] == pytest.approx(0.03125)
    assert min_wilcoxon_p(6) == pytest.approx(0.03125)
    assert min_wilcoxon_p(3) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same length"):
        paired_wilcoxon([1, 2], [1, 2, 3])


def test_cohens_d_paired_definition_and_relation_to_paired_t():
    a = RNG.normal(1.0, 1.0, size=15)
    b = RNG.normal(0.0, 1.0, size=15)
    diff = a - b
    d = cohens_d_paired(a, b)
    assert d == pytest.approx(diff.mean() / diff.std(ddof=1))
    # The paired t statistic is d * sqrt(n).
    assert stats.ttest_rel(a, b).statistic == pytest.approx(d * math.sqrt(15))
    assert cohens_d_paired([1.0, 1.2, 0.9, 1.1], [0.8, 1.0, 0.7, 1.0]) == pytest.approx(3.5)
    assert math.isnan(cohens_d_paired([1.0], [0.0]))
    assert math.isnan(cohens_d_paired([1.0, 2.0], [1.0, 2.0]))
    assert cohens_d_paired([2.0, 3.0], [1.0, 2.0]) == math.inf


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_one_sample_ttest_matches_scipy(alternative):
    x = RNG.normal(0.3, 1.0, size=20)
    expected = stats.ttest_1samp(x, 0.0, alternative=alternative)
    got = one_sample_ttest(x, 0.0, alternative=alternative)
    assert got["statistic"] == pytest.approx(expected.statistic)
    assert got["p_value"] == pytest.approx(expected.pvalue)


def test_one_sample_ttest_zero_variance():
    assert one_sample_ttest([0.5] * 5)["p_value"] == 0.0
    assert one_sample_ttest([0.0] * 5)["p_value"] == 1.0
    assert one_sample_ttest([-0.5] * 5)["p_value"] == 1.0
    assert math.isnan(one_sample_ttest([1.0])["p_value"])


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    x = RNG.normal(5.0, 2.0, size=200)
    low, high = bootstrap_ci(x, seed=1)
    assert low < x.mean() < high
    assert (low, high) == bootstrap_ci(x, seed=1)
    # ~ mean ± 1.96 s.e. for a large normal sample
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_compare_paired_flags_significance():
    a = np.linspace(1.0, 2.0, 10)
    result = compare_paired(a + 0.5, a)
    assert result["significant"] and result["p_value"] < 0.05
    assert result["mean_diff"] == pytest.approx(0.5)
    assert result["ci_low"] == pytest.approx(0.5) and result["ci_high"] == pytest.approx(0.5)
    small = compare_paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert not small["significant"] and small["p_value"] == pytest.approx(0.25)
    assert small["min_attainable_p"] == pytest.approx(0.25)
    with_tie = compare_paired([1.0, 2.0, 3.0], [0.5, 1.5, 3.0])  # a zero difference is dropped by the test
    assert with_tie["p_value"] == pytest.approx(0.5) and with_tie["min_attainable_p"] == pytest.approx(0.5)


def test_exponential_fit_recovers_parameters():
    t = np.arange(1, 61, dtype=float)
    y = 2.0 * np.exp(-0.08 * (t - 1)) + 0.3
    fit = fit_exponential_decay(t, y, floor=0.0)
    assert fit["a"] == pytest.approx(2.0, rel=1e-4)
    assert fit["b"] == pytest.approx(0.08, rel=1e-4)
    assert fit["c"] == pytest.approx(0.3, rel=1e-4)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["remaining"] == pytest.approx(2.0 * math.exp(-0.08 * 59), rel=1e-3)
    assert fit_exponential_decay(t, np.full_like(t, 0.2)) is None
    assert fit_exponential_decay(t[:3], y[:3]) is None


def test_guarded_mape_leaves_out_near_zero_actuals():
    y_true = np.array([[100.0, 1.0], [-200.0, 2.0], [0.001, 3.0], [50.0, 4.0]])
    y_pred = y_true * 1.1
    y_pred[2, 0] = 5.0  # a huge relative error on a near-zero actual: excluded
    mape, excluded = guarded_mape(y_true, y_pred)
    assert mape == pytest.approx([10.0, 10.0])
    assert excluded == pytest.approx([0.25, 0.0])


# --- recommendation rules ----------------------------------------------------------------


def history_frame(train, val, *, lr=None):
    n = len(train)
    return pd.DataFrame({
        "epoch": np.arange(1, n + 1), "train_loss": train, "val_loss": val,
        "epoch_time": np.full(n, 0.3), "memory_mb": np.full(n, 800.0),
        "learning_rate": np.full(n, 1e-3) if lr is None else lr, "r2_score": 1 - np.asarray(val),
    })


CONFIG = {"learning_rate": 1e-3, "batch_size": 128, "dropout_rate": 0.0, "l2_regularization": 0.0, "epochs": 40,
          "hidden_layers": [64, 32], "activation": "relu", "optimizer": "adam", "loss_weighting_strategy": "fixed"}
MEMORY = {"total_mb": 16000.0, "available_mb": 12000.0}


def test_overfitting_run_gets_the_recommendation():
    epochs = np.arange(40)
    train = 0.5 * np.exp(-epochs / 8) + 0.01 + RNG.normal(0, 0.002, 40)
    val = 0.3 + 0.005 * epochs + RNG.normal(0, 0.01, 40)
    row = overfitting_rule(history_frame(train, val), CONFIG)
    assert row["status"] == "✗" and row["p_value"] < 0.05
    assert row["parameter"] == "dropout_rate" and str(row["suggestion"]).startswith("0.1")
    assert row["confidence"] in ("High", "Medium") and row["priority"] == "High"
    assert "t-test" in row["test"]


def test_flat_run_does_not_get_the_overfitting_recommendation():
    flat = np.full(40, 0.5)
    row = overfitting_rule(history_frame(flat, flat), CONFIG)
    assert row["status"] == "✓" and row["p_value"] >= 0.05
    # A run whose validation loss is *below* its training loss (dropout) is not overfitting either.
    noisy = 0.5 + RNG.normal(0, 0.01, 40)
    assert overfitting_rule(history_frame(noisy + 0.1, noisy), CONFIG)["status"] == "✓"


def test_convergence_rule_extrapolates_the_remaining_improvement():
    t = np.arange(1, 41, dtype=float)
    still_falling = 1.0 * np.exp(-0.03 * t) + 0.05
    row = convergence_rule(history_frame(still_falling, still_falling), CONFIG)
    assert row["status"] == "⚠" and row["suggestion"] > CONFIG["epochs"]
    converged = 1.0 * np.exp(-0.5 * t) + 0.05
    assert convergence_rule(history_frame(converged, converged), CONFIG)["status"] == "✓"
    flat = np.full(40, 0.2)
    assert convergence_rule(history_frame(flat, flat), CONFIG)["status"] == "✓"


def test_learning_rate_rule_uses_the_history_correlation():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 6e-2, 1e-1]
    history = pd.DataFrame({"run_id": [f"r{i}" for i in range(8)], "learning_rate": lrs,
                            "best_val_r2": [0.99, 0.98, 0.95, 0.9, 0.8, 0.6, 0.5, 0.4]})
    val = np.linspace(1.0, 0.1, 40)
    row = learning_rate_rule(history_frame(val, val), CONFIG, history)
    assert row["status"] == "⚠" and row["suggestion"] == pytest.approx(1e-4)  # the best run's lower LR
    assert row["correlation"] == pytest.approx(-1.0) and row["p_value"] < 0.01
    assert row["confidence"] == "High" and "permutation test" in row["evidence"]
    assert row["confidence_basis"].startswith(f"p = {row['p_value']:.3g} < 0.01 with n = 8")
    # Six runs are below the minimum n of a correlation: no ρ, no p, no suggestion from it.
    row = learning_rate_rule(history_frame(val, val), CONFIG, history.head(6))
    assert row["correlation"] is None and row["p_value"] is None and row["status"] == "✓"
    assert "n too small (n = 6 < 8)" in row["evidence"]


def test_learning_rate_rule_detects_a_plateau_at_constant_lr():
    val = np.concatenate([np.linspace(1.0, 0.2, 20), np.full(20, 0.2)])
    row = learning_rate_rule(history_frame(val, val), CONFIG, None)
    assert row["status"] == "⚠" and row["suggestion"] == pytest.approx(5e-4)
    lr = np.concatenate([np.full(25, 1e-3), np.full(15, 5e-4)])
    assert learning_rate_rule(history_frame(val, val, lr=lr), CONFIG, None)["status"] == "✓"


def test_batch_size_rule_uses_memory_headroom():
    flat = np.full(20, 0.3)
    frame = history_frame(flat, flat)
    assert batch_size_rule(frame, CONFIG, n_train=5000, memory=MEMORY)["status"] == "✓"
    assert batch_size_rule(frame, CONFIG, n_train=5000, memory={"total_mb": 900.0, "available_mb": 50.0})[
        "suggestion"] == 64
    few_steps = batch_size_rule(frame, CONFIG, n_train=500, memory=MEMORY)
    assert few_steps["status"] == "⚠" and few_steps["suggestion"] == 64


def test_historical_best_rules_from_hpo_results(tmp_path):
    csv = tmp_path / "hpo_results.csv"
    pd.DataFrame([
        {"trial_number": 0, "preset": "", "state": "COMPLETE", "overrides": json.dumps({"learning_rate": 3e-4,
         "batch_size": 64, "hidden_layers": [64, 32]}), "test_r2": 0.97, "run_id": "t0"},
        {"trial_number": 1, "preset": "", "state": "FAIL", "overrides": "{}", "test_r2": 0.99, "run_id": "t1"},
    ]).to_csv(csv, index=False)
    hpo = load_hpo_results(csv)
    rows = historical_best_rules(CONFIG, "current", 0.9, None, hpo)
    suggested = {r["parameter"]: r["suggestion"] for r in rows}
    assert suggested == {"learning_rate": 3e-4, "batch_size": 64}  # same hidden_layers: not suggested
    assert all(r["status"] == "⚠" and "HPO trial 0" in r["evidence"] for r in rows)
    best_already = historical_best_rules(CONFIG, "current", 0.975, None, hpo)
    assert [r["status"] for r in best_already] == ["✓"]


def test_recommend_has_every_rule_and_column():
    train = np.linspace(1.0, 0.1, 20)
    rows = recommend(history_frame(train, train + 0.01), CONFIG, run_id="x", memory=MEMORY)
    assert [r["rule"] for r in rows] == ["learning_rate", "overfitting", "batch_size", "convergence",
                                         "historical_best"]
    for r in rows:
        assert r["status"] in ("✓", "⚠", "✗") and r["confidence"] in ("High", "Medium", "Low")
        assert r["priority"] in ("High", "Medium", "Low") and r["evidence"]


# --- heatmap table ---------------------------------------------------------------------


def test_hyperparameter_table_merges_history_and_hpo():
    history = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "learning_rate": [1e-3, 1e-2, 1e-4, 1.0],
                            "status": ["completed", "completed", "completed", "pruned"],
                            "batch_size": [32, 64, 128, 8], "hidden_layers": ["[16]", "[32, 16]", "[64]", "[1]"],
                            "loss_weighting_strategy": ["fixed", "r2_based", "fixed", "none"],
                            "best_val_r2": [0.9, 0.5, 0.95, 0.0], "test_r2": [0.88, 0.45, 0.94, 0.0],
                            "test_mae": [0.2, 0.5, 0.1, 1.0], "total_time_s": [10, 12, 30, 1]})
    hpo = pd.DataFrame({"trial_number": [0, 1], "state": ["COMPLETE", "COMPLETE"], "run_id": ["a", "z"],
                        "learning_rate": [1e-3, 3e-3], "batch_size": [32, 16], "test_r2": [0.88, 0.7],
                        "best_r2": [0.9, 0.72], "duration_s": [10, 5]})
    table = hyperparameter_table(history, hpo)
    # Trial 0 is run a (labelled as the trial, counted once); the pruned run d is left out.
    assert list(table["source"]) == ["HPO trial 0", "run b", "run c", "HPO trial 1"]
    assert table["log10_learning_rate"].tolist() == pytest.approx([-3, -2, -4, math.log10(3e-3)])
    assert table["total_units"].tolist()[:3] == [16, 48, 64]
    assert table["strategy=fixed"].tolist()[:3] == [1.0, 0.0, 1.0]
    matrix, pairs = impact_correlations(table)
    # 4 rows: below the minimum n of a correlation, so every pair is listed as "n too small".
    assert matrix.loc["log10_learning_rate", "best_r2"] != matrix.loc["log10_learning_rate", "best_r2"]  # NaN
    assert pairs and all(p["rho"] is None and p["p_value"] is None and p["n"] <= 4 for p in pairs)
    assert pairs[0]["reason"] == "n too small (n = 4 < 8)"
    assert "epochs" not in matrix.index  # never varied
    # With 8 rows ρ is reported, with a permutation p-value.
    big = pd.concat([table, table.assign(log10_learning_rate=table["log10_learning_rate"] + 0.5,
                                         best_r2=table["best_r2"] - 0.01)], ignore_index=True)
    matrix, pairs = impact_correlations(big)
    assert matrix.loc["log10_learning_rate", "best_r2"] == pytest.approx(
        stats.spearmanr(big["log10_learning_rate"], big["best_r2"]).statistic)
    found = [p for p in pairs if p["rho"] is not None]
    assert abs(found[0]["rho"]) == max(abs(p["rho"]) for p in found)
    assert found[0]["method"] == "permutation test (20000 permutations)"


# --- runs, errors, outputs ---------------------------------------------------------------


def make_fake_run(root: Path, run_id: str) -> Path:
    run_dir = root / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "training_config.json").write_text(json.dumps({"run_id": run_id, "config": {"epochs": 2}}))
    return run_dir


def test_run_discovery_and_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match=r"run `python main\.py` first"):
        resolve_run_dir(tmp_path)
    make_fake_run(tmp_path, "20260101-000000-000001-p1")
    make_fake_run(tmp_path, "20260102-000000-000001-p1")
    (tmp_path / "runs" / "not-a-run").mkdir()  # no training_config.json
    assert list_runs(tmp_path) == ["20260101-000000-000001-p1", "20260102-000000-000001-p1"]
    assert resolve_run_dir(tmp_path).name == "20260102-000000-000001-p1"
    with pytest.raises(ArtifactError, match="unknown run id 'nope'") as info:
        resolve_run_dir(tmp_path, "nope")
    assert "20260101-000000-000001-p1" in str(info.value)
    run = load_run(tmp_path, "20260101-000000-000001-p1")
    assert run.config == {"epochs": 2} and run.results.empty
    assert run.problems["training_results.csv"] == "missing"


def test_summary_files_are_never_overwritten(tmp_path):
    now = datetime(2026, 11, 26, 12, 0, 0)
    first = write_summary({"run_id": "a", "x": float("nan")}, tmp_path, now=now)
    second = write_summary({"run_id": "b"}, tmp_path, now=now)
    assert first.name == "analysis_summary_20261126_120000.json"
    assert re.fullmatch(r"analysis_summary_20261126_120000_\d+\.json", second.name)
    assert json.loads(first.read_text()) == {"run_id": "a", "x": None}
    assert json.loads(second.read_text())["run_id"] == "b"
    assert not list(tmp_path.glob(".*tmp"))


def test_to_jsonable():
    value = to_jsonable({"a": np.float32(1.5), "b": np.array([1, 2]), "c": (np.inf, np.int64(3)), "d": np.bool_(True)})
    assert value == {"a": 1.5, "b": [1, 2], "c": [None, 3], "d": True}


def test_cli_module_imports_no_heavy_libraries():
    code = ("import sys, nnlab.cli; nnlab.cli.build_parser(); "
            "heavy = [m for m in ('tensorflow', 'keras', 'matplotlib', 'sklearn') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_defaults_match_the_library():
    from nnlab.analysis import cli, framework, james_stein

    assert cli.DEFAULT_SAMPLE_SIZE == framework.DEFAULT_SAMPLE_SIZE
    assert cli.DEFAULT_JS_SEEDS == james_stein.DEFAULT_JS_SEEDS
    assert cli.DEFAULT_JS_EPOCHS == james_stein.DEFAULT_JS_EPOCHS
