"""The analysis, the seed's helpers, TensorBoard and MLflow on a run trained on a user's table.

One tiny real run (`nnlab train --data t.csv --targets y1,y2`, TensorBoard on, MLflow in a
sqlite store), analysed with `nnlab analyze` in a subprocess; the helpers are checked against
the run's own network on its own test rows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnlab.cli import main
from nnlab.errors import ConfigError, DataValidationError
import _forked

EPOCHS = 3
TARGETS = ["y1", "y2"]
COLOURS = {"red": 3.0, "green": -2.0, "blue": 0.0}


def table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """3 numeric features, one text feature (3 categories), two targets nearly linear in them."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=n), rng.uniform(0, 10, size=n), rng.normal(5, 2, size=n)
    colour = rng.choice(list(COLOURS), size=n)
    offset = np.array([COLOURS[k] for k in colour])
    y1 = 100.0 * (2 * a + 0.3 * b + offset) + rng.normal(0, 5, size=n)  # hundreds: not standardised units
    y2 = 3 * c - a + rng.normal(0, 0.1, size=n)
    return pd.DataFrame({"a": a, "b": b, "c": c, "colour": colour, "y1": y1, "y2": y2})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(output dir, run dir, CSV path, mlflow URI) of one table run with TensorBoard and MLflow."""
    root = tmp_path_factory.mktemp("tables")
    csv = root / "t.csv"
    table().to_csv(csv, index=False)
    out, uri = root / "out", f"sqlite:///{root / 'mlflow.db'}"
    assert main(["train", "--data", str(csv), "--targets", ",".join(TARGETS), "--epochs", str(EPOCHS),
                 "--seed", "3", "--quiet", "--set", "hidden_layers=[16]", "--set", "jit_compile=false",
                 "--set", "tensorboard=true", "--output-dir", str(out), "--mlflow", uri]) == 0
    [run_dir] = list((out / "runs").iterdir())
    return out, run_dir, csv, uri


@pytest.fixture(scope="module")
def analyzed(run):
    """``nnlab analyze`` on the run, as a user runs it: (process, summary JSON, report.html text). The
    James-Stein trainings in this process (``--js-workers 1``): worker processes are tests/test_study.py's."""
    out = run[0]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = _forked.run([sys.executable, "-m", "nnlab", "analyze", "--output-dir", str(out), "--quiet",
                        "--js-seeds", "2", "--js-epochs", "3", "--js-workers", "1"],
                       capture_output=True, text=True, env=env, timeout=600)
    folder = out / "analysis" / run[1].name  # each analysis in its own folder, named by the run
    [summary] = sorted(folder.glob("analysis_summary_*.json"))
    return proc, json.loads(summary.read_text()), (folder / "report.html").read_text()


def test_analyze_exits_0_on_a_table_run(analyzed):
    proc, summary, _ = analyzed
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert summary["failed_sections"] == {}
    assert summary["task"] == "table" and summary["targets"] == TARGETS
    source = summary["data_source"]
    assert source["task"] == "table" and source["targets"] == TARGETS and source["verified_against_scalers"]
    assert source["n_train"] + source["n_val"] + source["n_test"] == 240


def test_residuals_are_in_the_targets_names_and_units(analyzed, run):
    _, summary, report = analyzed
    test = json.loads((run[1] / "test_metrics.json").read_text())
    rows = summary["sections"]["residuals"]["summary"]["per_target"]
    assert [r["target"] for r in rows] == TARGETS
    for row in rows:  # the whole test set is under the sample size: the recorded physical-unit errors
        assert row["mae"] == pytest.approx(test["per_target_physical"][row["target"]]["mae"], rel=1e-4)
        assert row["rmse"] == pytest.approx(test["per_target_physical"][row["target"]]["rmse"], rel=1e-4)
    assert set(summary["prediction_mae_per_target"]) == set(TARGETS)
    scatter = summary["sections"]["predictions"]["summary"]["per_target_r2"]
    assert [r["target"] for r in scatter] == TARGETS
    assert "final_x" not in json.dumps(summary) and "final_x" not in report
    assert {"residual_analysis_suite.png", "prediction_scatter_plots.png"} <= set(summary["figures"])


def test_physics_is_skipped_with_its_reason(analyzed):
    _, summary, report = analyzed
    physics = summary["physics_consistency"]
    assert physics["applicable"] is False and "y1, y2" in physics["reason"]
    assert summary["skipped_sections"]["physics"] == f"not applicable: {physics['reason']}"
    assert summary["sections"]["physics"]["status"] == "skipped"
    assert "physics_consistency.png" not in summary["figures"]
    assert "not applicable: the consistency relations are the particle task" in report.replace("&#x27;", "'")

def test_james_stein_variants_train_on_the_runs_table(analyzed, run):
    _, summary, _ = analyzed
    assert summary["sections"]["james_stein"]["status"] == "done"
    js = summary["james_stein_comparison"]
    assert js is not None
    [study_dir] = [p for p in (run[0] / "analysis").iterdir() if p.is_dir() and p.name.startswith("james_stein")]
    configs = [json.loads(p.read_text()) for p in study_dir.glob("runs/*/training_config.json")]
    assert len(configs) == 3 * 2  # three variants, two seeds
    assert {c["data"]["task"] for c in configs} == {"table"}
    assert {tuple(c["data"]["targets"]) for c in configs} == {tuple(TARGETS)}
    assert {c["data"]["csv_path"] for c in configs} == {str(run[2].resolve())}


def test_baselines_are_fitted_on_the_tables_features(analyzed):
    _, summary, _ = analyzed
    baselines = summary["baselines"]
    assert {"mean predictor", "linear regression", "hist gradient boosting", "network (this run)"} <= set(baselines)
    # y1 depends on the text column: a linear fit reaches R² 0.9 only with its one-hot columns.
    assert baselines["linear regression"]["r2"] > 0.9
    assert baselines["mean predictor"]["r2"] < 0.05


def test_baselines_of_a_single_target(tmp_path):
    """scikit-learn's predictors return a flat array for one target: the table has one column per target."""
    from nnlab.analysis.baselines import baseline_comparison

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = (X @ [1.0, -2.0, 0.5])[:, None] + rng.normal(0, 0.1, (200, 1))
    result = baseline_comparison(X[:150], y[:150], X[150:], y[150:], lambda v: v * 10, ["price"], tmp_path,
                                 network_predictions=y[150:] + 0.05)
    assert result.summary["linear regression"]["r2"] > 0.95
    assert abs(result.summary["mean predictor"]["r2"]) < 0.1
    assert set(result.summary) >= {"hist gradient boosting", "network (this run)"}


def _test_rows(run) -> pd.DataFrame:
    from nnlab.data import split_indices

    data = json.loads((run[1] / "training_config.json").read_text())["data"]  # the run's split
    df = pd.read_csv(run[2])
    _, _, test = split_indices(len(df), data["test_size"], data["val_size"], data["random_state"])
    return df.iloc[test]


@pytest.fixture(scope="module")
def network(run):
    """(the run's network, its scalers, its test predictions and targets in physical units)."""
    from nnlab.analysis import ExperimentAnalysis, load_network, load_run
    from nnlab.data import load_scalers

    scalers = load_scalers(run[1])
    model, _ = load_network(load_run(run[0], run="latest"), scalers.x_scaler.n_features_in_,
                            scalers.y_scaler.n_features_in_)
    predictions = ExperimentAnalysis(run[0], run="latest", analysis_dir=run[0] / "a2").network_predictions()
    return model, scalers, predictions


def test_compute_predictions_on_raw_table_rows(run, network):
    from nnlab.analysis import compute_predictions

    model, scalers, predictions = network
    rows = _test_rows(run)
    assert rows["colour"].map(type).eq(str).all()  # the raw text column
    residuals, metrics = compute_predictions(model, scalers.x_scaler, scalers.y_scaler, rows, sample_size=None,
                                             encoding=scalers)
    assert list(residuals.columns) == TARGETS and list(residuals.index) == list(rows.index)
    expected = predictions["physical"] - predictions["actual_physical"]
    np.testing.assert_allclose(residuals.to_numpy(), expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
    test = json.loads((run[1] / "test_metrics.json").read_text())["per_target_physical"]
    for name in TARGETS:
        assert metrics["per_target"][name]["rmse"] == pytest.approx(test[name]["rmse"], rel=1e-4)
    assert metrics["n_samples"] == len(rows)


def test_compute_predictions_samples_rows_with_a_table_encoding(run, network):
    from nnlab.analysis import compute_predictions
    from nnlab.data import TableEncoding

    model, scalers, _ = network
    encoding = TableEncoding(tuple(scalers.columns), {k: tuple(v) for k, v in scalers.encodings.items()})
    df = pd.read_csv(run[2])
    a, _ = compute_predictions(model, scalers.x_scaler, scalers.y_scaler, df, sample_size=50, seed=1,
                               targets=scalers.target_names, encoding=encoding)
    b, _ = compute_predictions(model, scalers.x_scaler, scalers.y_scaler, df, sample_size=50, seed=1,
                               encoding=scalers)
    assert len(a) == 50 and a.index.is_monotonic_increasing
    pd.testing.assert_frame_equal(a, b)


def test_compute_predictions_refuses_an_unseen_category(run, network):
    from nnlab.analysis import compute_predictions

    model, scalers, _ = network
    rows = _test_rows(run).copy()
    rows.loc[rows.index[4], "colour"] = "purple"
    with pytest.raises(DataValidationError, match=r"column 'colour' holds 'purple', not a category seen in "
                                                  r"training \(known: blue, green, red\)"):
        compute_predictions(model, scalers.x_scaler, scalers.y_scaler, rows, encoding=scalers)


def test_compute_predictions_refuses_rows_without_a_target_or_a_particle_encoding(run, network):
    from nnlab.analysis import compute_predictions
    from nnlab.data import Scalers

    model, scalers, _ = network
    rows = _test_rows(run)
    with pytest.raises(DataValidationError, match=r"lack the target column\(s\) \['y2'\]"):
        compute_predictions(model, scalers.x_scaler, scalers.y_scaler, rows.drop(columns="y2"), encoding=scalers)
    with pytest.raises(DataValidationError, match=r"lack the feature column\(s\) \['colour'\]"):
        compute_predictions(model, scalers.x_scaler, scalers.y_scaler, rows.drop(columns="colour"),
                            encoding=scalers)
    particles = Scalers(scalers.x_scaler, scalers.y_scaler, scalers.feature_names, scalers.target_names)
    with pytest.raises(ConfigError, match="encoding must be a TableEncoding or the scalers of a run on a table"):
        compute_predictions(model, scalers.x_scaler, scalers.y_scaler, rows, encoding=particles)


def test_summarize_run_performance_on_a_table_run(run):
    from nnlab.analysis import summarize_run_performance

    summary = summarize_run_performance(run[0], run="latest")
    test = json.loads((run[1] / "test_metrics.json").read_text())
    assert summary["task"] == "table" and summary["status"] == "completed"
    assert summary["total_training_epochs"] == EPOCHS and summary["problems"] == {}
    assert summary["prediction_mae_per_target"] == {t: test["per_target_physical"][t]["mae"] for t in TARGETS}
    assert summary["test_r2"] == pytest.approx(test["scaled"]["r2"])


def test_tensorboard_events_of_a_table_run(run):
    from nnlab.integrations.tensorboard import TENSORBOARD_DIR, read_events

    run_dir = run[1]
    assert list((run_dir / TENSORBOARD_DIR).rglob("events.out.tfevents.*"))
    train = read_events(run_dir / TENSORBOARD_DIR / "train")["scalars"]
    validation = read_events(run_dir / TENSORBOARD_DIR / "validation")["scalars"]
    rows = pd.read_csv(run_dir / "training_results.csv")
    for scalars, tag, column in ((train, "epoch_loss", "train_loss"), (validation, "epoch_loss", "val_loss"),
                                 (validation, "epoch_r2", "r2_score")):
        assert [step for step, _ in scalars[tag]] == list(range(1, EPOCHS + 1))
        np.testing.assert_allclose([float(v) for _, v in scalars[tag]], rows[column], rtol=1e-6)
    [(step, r2)] = validation["test/r2"]
    assert step == EPOCHS
    assert float(r2) == pytest.approx(json.loads((run_dir / "test_metrics.json").read_text())["scaled"]["r2"])


def test_mlflow_run_says_it_is_a_table(run):
    from mlflow import MlflowClient

    from nnlab.integrations.mlflow import run_record

    _, run_dir, csv, uri = run
    record = run_record(run_dir)
    assert record["tracking_uri"] == uri
    client = MlflowClient(uri)
    mlrun = client.get_run(record["run_id"])
    tags = mlrun.data.tags
    assert tags["nnlab.task"] == "table" and tags["nnlab.targets"] == "y1, y2"
    assert tags["nnlab.data_source"].startswith(f"table csv {csv.resolve()} (sha256 ")
    assert tags["nnlab.status"] == "completed"
    assert json.loads(mlrun.data.params["data_targets"]) == TARGETS
    test = json.loads((run_dir / "test_metrics.json").read_text())
    for name in TARGETS:
        assert mlrun.data.metrics[f"test_physical/{name}/rmse"] == pytest.approx(
            test["per_target_physical"][name]["rmse"])


def test_mlflow_metric_keys_of_odd_target_names():
    from nnlab.integrations.mlflow import test_metrics

    report = {"scaled": {"r2": 0.5}, "per_target_physical": {"price ($)": {"mae": 2.0}, "a/b": {"mae": 1.0},
                                                              "..": {"mae": 3.0}}}
    assert test_metrics(report) == {"test_r2": 0.5, "test_physical/price ___/mae": 2.0,
                                    "test_physical/a_b/mae": 1.0, "test_physical/_/mae": 3.0}


def test_physics_table_of_particle_runs_leaves_table_runs_out(run):
    from nnlab.analysis.physics import physics_runs_table

    table, without = physics_runs_table(run[0])
    assert table.empty and without == []
