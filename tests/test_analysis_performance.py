"""compute_predictions and summarize_run_performance on a tiny real run trained by `python main.py`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import _forked

REPO = Path(__file__).resolve().parents[1]

# The README's example (next to the Basic example), run verbatim in the directory `python main.py` trained into.
README_SNIPPET = """\
from nnlab.analysis import compute_predictions, load_network, load_run, summarize_run_performance
from nnlab.data import generate_particle_data, load_scalers

run = load_run("training_output", run="latest")     # a run trained by `python main.py`
scalers = load_scalers(run.run_dir)                 # fitted on that run's training split
scaler_X, scaler_y = scalers.x_scaler, scalers.y_scaler
model, _ = load_network(run, scaler_X.n_features_in_, scaler_y.n_features_in_)  # its final weights
particle_df = generate_particle_data(2000, seed=7)  # new particles: raw simulator columns

residuals, metrics = compute_predictions(model, scaler_X, scaler_y, particle_df, sample_size=1000)
summary = summarize_run_performance("training_output", run="latest")
metrics["mean"], summary["best_r2_score"], summary["prediction_mae"]
"""


def test_readme_shows_this_example():
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    shown = [b for b in blocks if "compute_predictions(" in b]
    assert shown == [README_SNIPPET]


def env() -> dict[str, str]:
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    e.pop("NNLAB_CONFIG_DIR", None)
    return e


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding training_output/ with one tiny completed run."""
    cwd = tmp_path_factory.mktemp("perf")
    proc = _forked.run([sys.executable, str(REPO / "main.py"), "--num-particles", "300", "--epochs", "3",
                        "--set", "hidden_layers=[16]", "--set", "jit_compile=false", "--quiet",
                        "--output-dir", "training_output"], cwd=cwd, env=env(), capture_output=True, text=True,
                       timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd


@pytest.fixture(scope="module")
def snippet(workdir) -> dict:
    """The namespace left by the README example."""
    namespace: dict = {}
    old = Path.cwd()
    os.chdir(workdir)
    try:
        exec(compile(README_SNIPPET, "README.md", "exec"), namespace)
    finally:
        os.chdir(old)
    return namespace


def _by_hand(ns: dict, index) -> np.ndarray:
    """predicted − true for the rows ``index`` of particle_df, without compute_predictions."""
    from nnlab.data import DEFAULT_TARGETS, FEATURE_COLUMNS, add_derived_features

    rows = add_derived_features(ns["particle_df"].loc[index])
    X = ns["scaler_X"].transform(rows[FEATURE_COLUMNS].to_numpy(np.float64)).astype(np.float32)
    pred = ns["scaler_y"].inverse_transform(np.asarray(ns["model"].model(X, training=False), np.float64))
    return pred - rows[DEFAULT_TARGETS].to_numpy(np.float64)


def test_readme_example_residuals_are_predicted_minus_true(snippet):
    from nnlab.data import DEFAULT_TARGETS

    residuals, particle_df = snippet["residuals"], snippet["particle_df"]
    assert list(residuals.columns) == DEFAULT_TARGETS
    assert len(residuals) == 1000 and residuals.index.is_unique and residuals.index.is_monotonic_increasing
    assert set(residuals.index) <= set(particle_df.index)
    some = residuals.index[[0, 1, 500, 999]]
    np.testing.assert_allclose(residuals.loc[some].to_numpy(), _by_hand(snippet, some), rtol=1e-5, atol=1e-5)


def test_readme_example_metrics_match_sklearn(snippet):
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from nnlab.data import DEFAULT_TARGETS

    residuals, metrics = snippet["residuals"], snippet["metrics"]
    y_true = snippet["particle_df"].loc[residuals.index, DEFAULT_TARGETS].to_numpy(np.float64)
    y_pred = y_true + residuals.to_numpy()
    r2 = r2_score(y_true, y_pred, multioutput="raw_values")
    mae = mean_absolute_error(y_true, y_pred, multioutput="raw_values")
    rmse = np.sqrt(mean_squared_error(y_true, y_pred, multioutput="raw_values"))
    assert metrics["n_samples"] == 1000
    for j, name in enumerate(DEFAULT_TARGETS):
        got = metrics["per_target"][name]
        assert got["r2"] == pytest.approx(r2[j], rel=1e-9)
        assert got["mae"] == pytest.approx(mae[j], rel=1e-9)
        assert got["rmse"] == pytest.approx(rmse[j], rel=1e-9)
    assert metrics["mean"]["r2"] == pytest.approx(r2_score(y_true, y_pred), rel=1e-9)
    assert metrics["mean"]["mae"] == pytest.approx(mean_absolute_error(y_true, y_pred), rel=1e-9)
    assert metrics["mean"]["rmse"] == pytest.approx(rmse.mean(), rel=1e-9)


def test_readme_example_summary_matches_the_run_files(snippet, workdir):
    summary = snippet["summary"]
    run_dir = Path(workdir, summary["run_dir"])
    assert run_dir.parent == Path(workdir, "training_output", "runs") and run_dir.name == summary["run_id"]
    results = pd.read_csv(run_dir / "training_results.csv")
    test = json.loads((run_dir / "test_metrics.json").read_text())
    config = json.loads((run_dir / "training_config.json").read_text())["config"]
    log = pd.read_csv(Path(workdir, "training_output", "configuration_log.csv"), dtype=str).iloc[-1]
    assert summary["status"] == json.loads((run_dir / "run_status.json").read_text())["status"] == "completed"
    assert summary["total_training_epochs"] == len(results) == 3
    assert summary["best_validation_loss"] == pytest.approx(results["val_loss"].min())
    assert summary["best_r2_score"] == pytest.approx(results["r2_score"].max())
    assert summary["avg_epoch_time_s"] == pytest.approx(results["epoch_time"].mean())
    assert summary["total_training_time_s"] == pytest.approx(results["epoch_time"].sum())
    for key in ("r2", "mse", "mae", "rmse"):
        assert summary[f"test_{key}"] == pytest.approx(test["scaled"][key])
    physical_mae = {name: m["mae"] for name, m in test["per_target_physical"].items()}
    assert summary["prediction_mae_per_target"] == pytest.approx(physical_mae)
    assert summary["prediction_mae"] == pytest.approx(np.mean(list(physical_mae.values())))
    assert summary["test_n_samples"] == test["n_samples"]
    assert summary["peak_memory_mb"] == pytest.approx(float(log["peak_memory_mb"]))
    assert summary["total_time_s"] == pytest.approx(float(log["total_time_s"]))
    assert summary["constraints_used"] == log["constraints"].split("+")
    assert summary["loss_weighting_strategy"] == config["loss_weighting_strategy"] == "physics_aware"
    assert summary["problems"] == {}


def test_summary_imports_no_tensorflow(workdir):
    code = ("import sys; from nnlab.analysis import summarize_run_performance as s; "
            "r = s('training_output'); assert r['status'] == 'completed', r; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_summary_of_a_run_with_missing_files_degrades(workdir, tmp_path, snippet):
    out = tmp_path / "out"
    run_id = snippet["summary"]["run_id"]
    shutil.copytree(Path(workdir, "training_output", "runs", run_id), out / "runs" / run_id)
    (out / "runs" / run_id / "test_metrics.json").unlink()
    (out / "runs" / run_id / "run_status.json").unlink()
    from nnlab.analysis import summarize_run_performance

    summary = summarize_run_performance(out, run=run_id)  # no configuration_log.csv either
    assert summary["test_r2"] is None and summary["prediction_mae"] is None and summary["status"] is None
    assert set(summary["problems"]) == {"test_metrics.json", "run_status.json"}
    assert summary["best_r2_score"] == snippet["summary"]["best_r2_score"]
    # Without the log the constraints come from the recorded configuration, named as the chain names them.
    assert summary["constraints_used"] == snippet["summary"]["constraints_used"]


def test_constraint_names_from_config_match_the_chain():
    from nnlab.analysis.performance import _constraints_from_config
    from nnlab.config import resolve_config
    from nnlab.constraints import build_constraints

    flags = ("use_adaptive_oscillation_dampener", "enable_weight_oscillation_dampener", "enable_binary_change_max",
             "enable_binary_precision_max", "enable_james_stein")
    for bits in range(2 ** len(flags)):
        cfg = resolve_config({f: bool(bits >> i & 1) for i, f in enumerate(flags)})
        assert _constraints_from_config(cfg.to_flat()) == [c.name for c in build_constraints(cfg)]


def test_unknown_run_and_no_runs_name_the_directory(workdir, tmp_path, snippet):
    from nnlab.analysis import summarize_run_performance
    from nnlab.errors import NnlabError

    with pytest.raises(NnlabError, match="unknown run id 'nope'") as err:
        summarize_run_performance(Path(workdir, "training_output"), run="nope")
    assert snippet["summary"]["run_id"] in str(err.value) and "runs" in str(err.value)
    with pytest.raises(NnlabError, match="no training runs found in"):
        summarize_run_performance(tmp_path / "empty")


def test_sampling_is_reproducible_and_keeps_the_original_index(snippet):
    from nnlab.analysis import compute_predictions

    args = (snippet["model"], snippet["scaler_X"], snippet["scaler_y"])
    df = snippet["particle_df"].iloc[:300].copy()
    df.index = df.index + 1000  # labels, not positions, come back
    a, ma = compute_predictions(*args, df, sample_size=50, seed=3)
    b, mb = compute_predictions(*args, df, sample_size=50, seed=3)
    c, _ = compute_predictions(*args, df, sample_size=50, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert ma == mb and len(a) == 50 and list(a.index) != list(c.index)
    assert set(a.index) <= set(df.index)
    np.testing.assert_allclose(a.to_numpy(), _by_hand({**snippet, "particle_df": df}, a.index), rtol=1e-5, atol=1e-5)
    every, m = compute_predictions(*args, df, sample_size=1000)  # fewer rows than asked: all of them
    assert list(every.index) == list(df.index) and m["n_samples"] == 300
    everything, _ = compute_predictions(*args, df, sample_size=None)
    pd.testing.assert_frame_equal(every, everything)


def test_keras_model_and_network_give_the_same_residuals(snippet):
    from nnlab.analysis import compute_predictions

    df = snippet["particle_df"].iloc[:64]
    a, _ = compute_predictions(snippet["model"], snippet["scaler_X"], snippet["scaler_y"], df)
    b, _ = compute_predictions(snippet["model"].model, snippet["scaler_X"], snippet["scaler_y"], df)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6, atol=1e-6)


def test_r2_is_unavailable_for_one_row(snippet):
    from nnlab.analysis import compute_predictions

    residuals, metrics = compute_predictions(snippet["model"], snippet["scaler_X"], snippet["scaler_y"],
                                             snippet["particle_df"], sample_size=1)
    assert metrics["n_samples"] == 1 and metrics["mean"]["r2"] is None
    for name, m in metrics["per_target"].items():
        assert m["r2"] is None
        assert m["mae"] == pytest.approx(abs(residuals[name].iloc[0])) == pytest.approx(m["rmse"])


def test_derived_feature_columns_in_the_frame_are_recomputed(snippet):
    from nnlab.analysis import compute_predictions
    from nnlab.data import add_derived_features

    args = (snippet["model"], snippet["scaler_X"], snippet["scaler_y"])
    df = snippet["particle_df"].iloc[:40]
    tampered = add_derived_features(df)
    tampered["initial_speed"] = 1e6
    clean, _ = compute_predictions(*args, df)
    with pytest.warns(UserWarning, match="initial_speed"):
        got, _ = compute_predictions(*args, tampered)
    pd.testing.assert_frame_equal(got, clean)


def test_bad_inputs_are_named(snippet):
    from sklearn.preprocessing import StandardScaler

    from nnlab.analysis import compute_predictions
    from nnlab.errors import ConfigError, DataValidationError

    model, sx, sy, df = snippet["model"], snippet["scaler_X"], snippet["scaler_y"], snippet["particle_df"].iloc[:20]
    narrow = StandardScaler().fit(np.ones((3, 5)))
    with pytest.raises(DataValidationError, match="scaler_X has 5 features, the model takes 23"):
        compute_predictions(model, narrow, sy, df)
    with pytest.raises(DataValidationError, match="scaler_y has 5 targets, the model predicts 6"):
        compute_predictions(model, sx, narrow, df)
    with pytest.raises(ConfigError, match="scaler_X is not fitted"):
        compute_predictions(model, StandardScaler(), sy, df)
    with pytest.raises(DataValidationError, match="mass"):
        compute_predictions(model, sx, sy, df.drop(columns=["mass"]))
    with pytest.raises(DataValidationError, match="targets lists 2"):
        compute_predictions(model, sx, sy, df, targets=["final_velocity_x", "final_velocity_y"])
    with pytest.raises(DataValidationError, match="unknown: \\['mass'\\]"):
        compute_predictions(model, sx, sy, df, targets=["mass"])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="sample_size must be a positive integer"):
            compute_predictions(model, sx, sy, df, sample_size=bad)
    with pytest.raises(ConfigError, match="model must be an AdvancedNeuralNetwork"):
        compute_predictions(object(), sx, sy, df)
