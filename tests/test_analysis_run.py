"""`nnlab analyze` and the notebook on real tiny runs trained in this test session."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines
import _forked

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("training_dynamics_dashboard.png", "learning_rate_analysis.png", "residual_analysis_suite.png",
           "prediction_scatter_plots.png", "baseline_comparison.png", "james_stein_comparison.png",
           "hyperparameter_impact_heatmap.png", "loss_weights_and_constraints.png", "physics_consistency.png")
SUMMARY_KEYS = ("analysis_timestamp", "run_id", "best_validation_loss", "best_r2_score", "total_training_epochs",
                "prediction_mae", "james_stein_comparison", "baselines", "recommendations", "skipped_sections")
JS_KEYS = ("binary_constraints_best_loss", "james_stein_best_loss", "no_constraints_best_loss", "p_values",
           "effect_sizes", "winner")
TINY = ("--num-particles", "200", "--set", "hidden_layers=[16]", "--set", "jit_compile=false", "--quiet")
# One in-process worker: spawned workers would each import TensorFlow again for six tiny trainings
# (the parallel path of a study is tested in tests/test_study.py).
JS_FAST = ("--js-seeds", "2", "--js-epochs", "3", "--js-workers", "1", "--sample-size", "32")


def env() -> dict[str, str]:
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    e.pop("NNLAB_CONFIG_DIR", None)
    return e


def nnlab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return _forked.run([sys.executable, "-m", "nnlab.cli", *args], capture_output=True, text=True, cwd=REPO,
                       env=env(), timeout=timeout)


def run_id_of(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return re.search(r"^run (\S+): completed", proc.stdout, re.M).group(1)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> tuple[Path, str]:
    """Three tiny real runs (different learning rates and batch sizes) trained in parallel; returns
    the output root and the id of the run to analyse (6 epochs, constraints every 2)."""
    out = tmp_path_factory.mktemp("analysis") / "training_output"
    variants = [
        ("--epochs", "6", "--set", "constraint_interval=2", "--set", "checkpoint_every=2"),
        ("--epochs", "3", "--set", "learning_rate=0.005", "--batch-size", "32"),
        ("--epochs", "3", "--set", "learning_rate=0.0001", "--batch-size", "64"),
    ]
    procs = [_forked.Popen([sys.executable, "main.py", *TINY, *v, "--output-dir", str(out)], cwd=REPO, env=env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in variants]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out, run_id_of(results[0])


@pytest.fixture(scope="module")
def analysed(tiny_runs, tmp_path_factory):
    out, run_id = tiny_runs
    root = tmp_path_factory.mktemp("analysis_out")
    proc = nnlab("analyze", "--output-dir", str(out), "--run", run_id, "--analysis-dir", str(root), *JS_FAST)
    return out, run_id, root / run_id, proc


def summaries(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if re.fullmatch(r"analysis_summary_\d{8}_\d{6}(_\d+)?\.json", p.name))


def test_cli_writes_every_figure_at_300_dpi(analysed):
    from PIL import Image

    _, _, analysis_dir, proc = analysed
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for name in FIGURES:
        path = analysis_dir / name
        assert path.is_file(), (name, proc.stdout)
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.info["dpi"] == pytest.approx((300, 300), abs=0.1)
            image.verify()


def test_summary_json_matches_the_run_csvs(analysed):
    out, run_id, analysis_dir, proc = analysed
    [path] = summaries(analysis_dir)
    summary = json.loads(path.read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["run_id"] == run_id
    assert summary["skipped_sections"] == {} and summary["failed_sections"] == {}
    run_dir = out / "runs" / run_id
    results = pd.read_csv(run_dir / "training_results.csv")
    assert summary["total_training_epochs"] == len(results) == 6
    assert summary["best_validation_loss"] == pytest.approx(results["val_loss"].min())
    assert summary["best_r2_score"] == pytest.approx(results["r2_score"].max())
    # The rebuilt network on the regenerated test set reproduces the metrics recorded at training time.
    test_metrics = json.loads((run_dir / "test_metrics.json").read_text())
    physical_mae = np.mean([m["mae"] for m in test_metrics["per_target_physical"].values()])
    assert summary["prediction_mae"] == pytest.approx(physical_mae, rel=1e-4)
    assert summary["data_source"]["verified_against_scalers"] is True
    network = summary["baselines"]["network (this run)"]
    assert network["r2"] == pytest.approx(test_metrics["scaled"]["r2"], rel=1e-4, abs=1e-5)
    assert network["mae"] == pytest.approx(test_metrics["scaled"]["mae"], rel=1e-4)
    assert set(summary["baselines"]) == {"mean predictor", "linear regression", "hist gradient boosting",
                                         "network (this run)"}
    assert summary["baselines"]["mean predictor"]["r2"] == pytest.approx(0.0, abs=0.1)
    rules = [r["rule"] for r in summary["recommendations"]]
    assert rules[:4] == ["learning_rate", "overfitting", "batch_size", "convergence"]
    assert all(r["status"] in ("✓", "⚠", "✗") for r in summary["recommendations"])


def test_james_stein_section_in_the_summary(analysed):
    _, _, analysis_dir, _ = analysed
    js = json.loads(summaries(analysis_dir)[0].read_text())["james_stein_comparison"]
    for key in JS_KEYS:
        assert key in js
    assert js["seeds"] == [42, 43] and js["epochs"] == 3
    pairs = {"binary_constraints_vs_james_stein", "binary_constraints_vs_no_constraints",
             "james_stein_vs_no_constraints"}
    assert set(js["p_values"]) == pairs == set(js["effect_sizes"])
    for pair in pairs:
        assert set(js["p_values"][pair]) == {"across_seeds", "across_epochs"}
    # Two seeds cannot reach p < 0.05 with the exact Wilcoxon test: no winner may be named.
    assert js["min_attainable_p_across_seeds"] == pytest.approx(0.5)
    assert js["winner"] == "no significant difference"
    for variant in ("binary_constraints", "james_stein", "no_constraints"):
        per_seed = js["variants"][variant]["best_loss_per_seed"]
        assert js[f"{variant}_best_loss"] == pytest.approx(np.mean(per_seed))
    assert js["variants"]["binary_constraints"]["mean_significant_bits"] <= 16
    # The trainings are a compare study in the analysis folder (--js-workers 1: in this process).
    study_dir = (analysis_dir.parent / "james_stein_study").resolve()  # beside the analysis folders
    assert js["study_dir"] == str(study_dir) and js["workers"] == 1
    runs = pd.read_csv(js["runs_csv"])
    assert len(runs) == 6 and set(runs["status"]) == {"completed"}
    assert set(zip(runs["variant"], runs["seed"])) == {(v, s) for v in js["variants"] for s in (42, 43)}
    assert all(Path(d).parent == study_dir / "runs" and Path(d).is_dir() for d in runs["run_dir"])


def test_heatmap_uses_the_run_history_without_hpo_results(analysed):
    _, _, analysis_dir, _ = analysed
    summary = json.loads(summaries(analysis_dir)[0].read_text())
    heat = summary["hyperparameter_impact"]
    assert heat["n_runs"] == 3 and heat["n_hpo_trials"] == 0 and heat["uses_hpo_results"] is False
    # 3 runs are below the minimum n of a correlation: no ρ or p is reported, only "n too small".
    assert heat["min_correlation_n"] == 8 and heat["pairs_too_small"] > 0
    assert heat["strongest_positive"] == [] and heat["strongest_negative"] == []


def test_report_embeds_every_figure_and_table(analysed):
    _, _, analysis_dir, _ = analysed
    html = (analysis_dir / "report.html").read_text(encoding="utf-8")
    for name in FIGURES:
        assert f"alt='{name}'" in html, name
    assert html.count("src='data:image/png;base64,") == len(FIGURES)
    assert "src='http" not in html and "<link" not in html  # self-contained
    for heading in ("artifacts", "run summary", "test metrics", "recommendations", "paired tests",
                    "residuals per target", "strongest positive", "every pair"):
        assert f"<h3>{heading}" in html, heading


def test_without_weights_residuals_and_predictions_are_skipped(tiny_runs, tmp_path):
    out, run_id = tiny_runs
    copy = tmp_path / "training_output"
    shutil.copytree(out / "runs" / run_id, copy / "runs" / run_id, ignore=shutil.ignore_patterns("weights"))
    proc = nnlab("analyze", "--output-dir", str(copy), "--skip", "james_stein", "--sample-size", "16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = summaries(copy / "analysis" / run_id)
    summary = json.loads(path.read_text())
    skipped = summary["skipped_sections"]
    assert set(skipped) == {"residuals", "predictions", "james_stein", "heatmap"}
    assert "no weights" in skipped["residuals"] and skipped["predictions"] == skipped["residuals"]
    assert "--skip" in skipped["james_stein"]
    assert "at least 3" in skipped["heatmap"]  # one run, no HPO results
    assert set(summary["baselines"]) == {"mean predictor", "linear regression", "hist gradient boosting"}
    # prediction_mae falls back to what training recorded.
    assert summary["prediction_mae_source"].startswith("test_metrics.json")
    for name in ("training_dynamics_dashboard.png", "learning_rate_analysis.png", "baseline_comparison.png",
                 "loss_weights_and_constraints.png"):
        assert (copy / "analysis" / run_id / name).is_file()
    assert not (copy / "analysis" / run_id / "residual_analysis_suite.png").exists()
    assert summary["james_stein_comparison"]["winner"] is None


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")  # Keras, on the mismatched file
def test_weights_that_do_not_fit_the_architecture(tiny_runs, tmp_path):
    from nnlab.analysis import ExperimentAnalysis

    out, run_id = tiny_runs
    copy = tmp_path / "training_output"
    shutil.copytree(out / "runs" / run_id, copy / "runs" / run_id)
    config_path = copy / "runs" / run_id / "training_config.json"
    record = json.loads(config_path.read_text())
    record["config"]["hidden_layers"] = [8]
    config_path.write_text(json.dumps(record))
    analysis = ExperimentAnalysis(copy, sample_size=16)
    for name in ("residuals", "predictions"):
        result = analysis.run_section(name)
        assert result.status == "skipped"
        assert "do not fit the recorded architecture" in result.reason and "(23, 8)" in result.reason
    assert analysis.run_section("dynamics").status == "done"
    assert analysis.run_section("baselines").status == "done"


def test_hpo_results_feed_the_heatmap_and_recommendations(tiny_runs, tmp_path):
    from nnlab.analysis import ExperimentAnalysis

    out, run_id = tiny_runs
    hpo = tmp_path / "hpo_results.csv"
    pd.DataFrame([
        {"trial_number": i, "preset": "", "state": state, "test_r2": r2, "best_r2": r2,
         "test_mae": None if r2 is None else 1 - r2,
         "duration_s": 5.0 + i, "run_id": f"elsewhere-{i}", "error": "",
         "overrides": json.dumps({"learning_rate": lr, "batch_size": bs})}
        for i, (state, r2, lr, bs) in enumerate([("COMPLETE", 0.999, 0.002, 16), ("COMPLETE", 0.5, 0.05, 256),
                                                 ("FAIL", None, 0.1, 8)])
    ]).to_csv(hpo, index=False)
    analysis = ExperimentAnalysis(out, run=run_id, hpo_results=hpo, analysis_dir=tmp_path / "a")
    heat = analysis.run_section("heatmap")
    assert heat.status == "done", heat.reason
    assert heat.summary["n_runs"] == 3 and heat.summary["n_hpo_trials"] == 2 and heat.summary["uses_hpo_results"]
    rows = analysis.run_section("recommendations").summary["rows"]
    historical = {r["parameter"]: r["suggestion"] for r in rows if r["rule"] == "historical_best"}
    assert historical == {"learning_rate": 0.002, "batch_size": 16}


def test_clear_errors(tiny_runs, tmp_path):
    out, run_id = tiny_runs
    proc = nnlab("analyze", "--output-dir", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert shows(proc.stderr, "run `python main.py` first")
    proc = nnlab("analyze", "--output-dir", str(out), "--run", "no-such-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown run id 'no-such-run'" in proc.stderr and run_id in proc.stderr
    proc = nnlab("analyze", "--output-dir", str(out), "--skip", "residuals,bogus")
    assert proc.returncode == 2 and "unknown section(s) bogus" in proc.stderr


def test_notebook_runs_headless(tiny_runs, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    out, run_id = tiny_runs
    analysis_dir = tmp_path / "notebook_analysis"
    for key, value in {"NNLAB_ANALYSIS_OUTPUT_DIR": str(out), "NNLAB_ANALYSIS_RUN": run_id,
                       "NNLAB_ANALYSIS_DIR": str(analysis_dir), "NNLAB_ANALYSIS_SAMPLE_SIZE": "32",
                       "NNLAB_ANALYSIS_JS_SEEDS": "1", "NNLAB_ANALYSIS_JS_EPOCHS": "2",
                       "NNLAB_ANALYSIS_JS_WORKERS": "1",
                       "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)
    path = REPO / "experiment_analysis_framework.ipynb"
    notebook = nbformat.read(path, as_version=4)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code_cells), "commit the notebook with outputs cleared"
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    [summary_path] = summaries(analysis_dir / run_id)
    summary = json.loads(summary_path.read_text())
    assert summary["run_id"] == run_id and summary["failed_sections"] == {}
    assert summary["james_stein_comparison"]["seeds"] == [42]  # one seed: statistics degrade, nothing fails
    assert (analysis_dir / run_id / "report.html").is_file()
    images = sum(1 for c in code_cells for o in c.outputs if "image/png" in o.get("data", {}))
    assert images == len(FIGURES)
