"""Model, training pipeline, tracking and artifacts: real TensorFlow training on small data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import keras  # noqa: E402

from nnlab.constraints import significant_bits  # noqa: E402
from nnlab.data import complete_data_pipeline  # noqa: E402
from nnlab.errors import ConfigError, DataValidationError  # noqa: E402
from nnlab.losses import compute_loss_weights  # noqa: E402
from nnlab.model import AdvancedNeuralNetwork  # noqa: E402
from nnlab.tracking import TRACKER_COLUMNS  # noqa: E402
from nnlab.runs import CONFIG_LOG_COLUMNS, train_with_tracking  # noqa: E402

SMALL = {"hidden_layers": [32, 16], "epochs": 3, "batch_size": 64, "checkpoint_every": 2, "jit_compile": False,
         "constraint_interval": 1, "seed": 7}


@pytest.fixture(scope="module")
def data():
    return complete_data_pipeline(num_particles=400, seed=3)


def run(data, tmp_path, **overrides):
    config = {**SMALL, **overrides}
    model = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], config)
    return model, train_with_tracking(model, *data, config, data=data, output_dir=tmp_path, verbose=0)


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    model, results = run(data, out, max_binary_digits=8, loss_weighting_strategy="r2_based")
    return out, model, results


# --- model building ------------------------------------------------------------


def test_architecture_follows_config():
    net = AdvancedNeuralNetwork((23,), 6, {"hidden_layers": [16, 8], "activation": "prelu", "use_batch_norm": True,
                                           "dropout_rate": 0.1, "l2_regularization": 1e-4})
    layers = net.model.layers
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [16, 8, 6]
    assert [d.use_bias for d in dense] == [False, False, True]  # batch norm replaces the bias
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in layers) == 2
    assert sum(isinstance(layer, keras.layers.PReLU) for layer in layers) == 2
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in layers) == 2
    assert dense[0].kernel_regularizer is not None
    assert dense[-1].activation.__name__ == "linear"


@pytest.mark.parametrize("optimizer, cls", [("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD"),
                                            ("rmsprop", "RMSprop")])
def test_optimizers(optimizer, cls):
    net = AdvancedNeuralNetwork((4,), 1, {"hidden_layers": [4], "optimizer": optimizer, "learning_rate": 0.01})
    net.compile_model()
    assert type(net.model.optimizer).__name__ == cls
    assert float(net.model.optimizer.learning_rate) == pytest.approx(0.01)


def test_plain_activation_layers():
    net = AdvancedNeuralNetwork((4,), 2, {"hidden_layers": [4], "activation": "gelu"})
    assert any(isinstance(layer, keras.layers.Activation) for layer in net.model.layers)


def test_bad_shapes_are_clear_errors(data):
    net = AdvancedNeuralNetwork((data.X_train.shape[1],), 6, SMALL)
    with pytest.raises(DataValidationError, match=r"training data: X must have shape \(n, 23\)"):
        net.train_with_custom_constraints(data.X_train[:, :5], data.y_train, data.X_val, data.y_val, epochs=1)
    with pytest.raises(ConfigError, match="output_dim"):
        AdvancedNeuralNetwork((23,), 0, SMALL)


def test_seed_gives_identical_results(data):
    results = []
    for _ in range(2):
        net = AdvancedNeuralNetwork((23,), 6, {**SMALL, "seed": 11})
        net.train_with_custom_constraints(data.X_train, data.y_train, data.X_val, data.y_val, epochs=2,
                                          batch_size=64, verbose=0)
        results.append(net.evaluate_model(data.X_test, data.y_test)["mse"])
    assert results[0] == results[1]


def test_validation_data_is_evaluated_in_large_batches():
    # Validation is only evaluated: batches of max(batch_size, VALIDATION_BATCH_SIZE) rows, so an
    # epoch spends few steps on it; the training batches keep batch_size.
    from nnlab.model import VALIDATION_BATCH_SIZE

    class Counter(keras.callbacks.Callback):
        train = test = 0

        def on_train_batch_end(self, batch, logs=None):
            Counter.train += 1

        def on_test_batch_end(self, batch, logs=None):
            Counter.test += 1

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2 * VALIDATION_BATCH_SIZE + 10, 23)), rng.normal(size=(2 * VALIDATION_BATCH_SIZE + 10, 6))
    net = AdvancedNeuralNetwork((23,), 6, {**SMALL, "steps_per_execution": 1, "jit_compile": False})
    net.train_with_custom_constraints(x[:320], y[:320], x, y, epochs=1, batch_size=32, verbose=0, callbacks=[Counter()])
    assert (Counter.train, Counter.test) == (10, 3)  # 320 / 32 training steps; 2058 rows in 1024-row batches


# --- train_with_tracking: artifacts ----------------------------------------------


def test_result_structure(first_run):
    _, _, results = first_run
    assert set(results) >= {"training", "test", "performance_summary", "error_summary", "run_dir", "status"}
    assert results["status"] == "completed"
    assert results["training"]["epochs_run"] == 3
    assert results["training"]["constraints_used"] == ["adaptive_oscillation_dampener", "binary_change_max",
                                                       "binary_precision_max"]
    assert results["error_summary"]["error_count"] == 0


def test_artifacts_exist(first_run):
    _, _, results = first_run
    run_dir = Path(results["run_dir"])
    for name in ("training_config.json", "training_results.csv", "loss_history.csv", "training_log.txt",
                 "scalers.json", "test_metrics.json"):
        assert (run_dir / name).is_file(), name
    weights = sorted(p.name for p in (run_dir / "weights").iterdir())
    assert weights == ["best.weights.h5", "epoch_0002.weights.h5", "final.weights.h5"]
    cfg = json.loads((run_dir / "training_config.json").read_text())
    assert cfg["config"]["max_binary_digits"] == 8 and cfg["seed"] == 7
    assert {"tensorflow", "keras", "numpy"} <= set(cfg["versions"])


def test_training_results_csv(first_run):
    _, _, results = first_run
    df = pd.read_csv(Path(results["run_dir"]) / "training_results.csv")
    assert list(df.columns[: len(TRACKER_COLUMNS)]) == list(TRACKER_COLUMNS)
    assert list(df["epoch"]) == [1, 2, 3]
    assert "constraint/binary_precision_max/fraction_changed" in df.columns
    assert (df["memory_mb"] > 0).all() and (df["epoch_time"] > 0).all()
    np.testing.assert_allclose(df["val_rmse"], np.sqrt(df["val_mse"]), rtol=1e-6)
    history = results["training"]["history"]
    np.testing.assert_allclose(df["r2_score"], history["val_r2_score"], rtol=1e-6)
    np.testing.assert_allclose(df["train_loss"], history["loss"], rtol=1e-6)


def test_summary_matches_csv(first_run):
    _, _, results = first_run
    df = pd.read_csv(Path(results["run_dir"]) / "training_results.csv")
    s = results["performance_summary"]
    assert s["total_epochs"] == len(df)
    assert s["best_r2"] == pytest.approx(df["r2_score"].max())
    assert s["best_epoch"] == int(df.loc[df["r2_score"].idxmax(), "epoch"])
    assert s["current_r2"] == pytest.approx(df["r2_score"].iloc[-1])
    assert s["avg_epoch_time"] == pytest.approx(df["epoch_time"].mean())
    gains = df["r2_score"].diff()
    assert s["greatest_r2_improvement"] == pytest.approx(gains.max())
    assert s["peak_memory_mb"] >= df["memory_mb"].max()
    assert s["constraint_applications"] == 3
    assert set(s["weight_files"]) == {"best.weights.h5", "epoch_0002.weights.h5", "final.weights.h5"}
    assert s["samples_per_second"] > 0


def test_test_metrics_json(first_run, data):
    _, model, results = first_run
    metrics = json.loads((Path(results["run_dir"]) / "test_metrics.json").read_text())
    assert set(metrics["per_target_physical"]) == set(data.target_names)
    pred = model.predict(data.X_test)
    expected_r2 = np.mean(1 - ((pred - data.y_test) ** 2).mean(0) / data.y_test.var(0))
    assert metrics["scaled"]["r2"] == pytest.approx(expected_r2, rel=1e-4)
    # R² is unit-free: physical and scaled per-target R² agree.
    for name, scaled in metrics["per_target_scaled"].items():
        assert metrics["per_target_physical"][name]["r2"] == pytest.approx(scaled["r2"], abs=1e-4)


def test_configuration_log_row(first_run):
    out, _, results = first_run
    rows = list(csv.DictReader(open(out / "configuration_log.csv")))
    row = next(r for r in rows if r["run_id"] == results["run_id"])
    assert list(rows[0].keys()) == list(CONFIG_LOG_COLUMNS)
    assert row["status"] == "completed" and row["epochs_run"] == "3"
    assert float(row["test_r2"]) == pytest.approx(results["test"]["scaled"]["r2"])
    assert row["constraints"] == "adaptive_oscillation_dampener+binary_change_max+binary_precision_max"


def test_runs_never_overwrite_each_other(data, tmp_path):
    _, a = run(data, tmp_path, epochs=1)
    _, b = run(data, tmp_path, epochs=1)
    assert a["run_dir"] != b["run_dir"]
    assert Path(a["run_dir"], "training_results.csv").is_file()
    rows = list(csv.DictReader(open(tmp_path / "configuration_log.csv")))
    assert [r["run_id"] for r in rows] == [a["run_id"], b["run_id"]]
    assert sorted([a["run_id"], b["run_id"]]) == [a["run_id"], b["run_id"]]  # ids sort by time


# --- the lab features really act during fit ---------------------------------------


def test_binary_precision_holds_after_interval_epoch(first_run):
    model = first_run[1]
    for layer in model.model.layers:
        if isinstance(layer, keras.layers.Dense):
            bits = np.asarray(significant_bits(layer.kernel.numpy()))
            assert bits.max() <= 8


def test_loss_weights_follow_strategy(first_run):
    _, _, results = first_run
    df = pd.read_csv(Path(results["run_dir"]) / "loss_history.csv")
    assert list(df["epoch"]) == [0, 1, 2]
    for i in range(1, len(df)):
        expected = compute_loss_weights("r2_based", prev_r2=df["val_r2"].iloc[i - 1])
        assert df["mse_weight"].iloc[i] == pytest.approx(expected[0], abs=1e-6)
        assert df["mae_weight"].iloc[i] == pytest.approx(expected[1], abs=1e-6)
    tracker = pd.read_csv(Path(results["run_dir"]) / "training_results.csv")
    np.testing.assert_allclose(tracker["mse_weight"], df["mse_weight"], rtol=1e-6)


# --- degradation ------------------------------------------------------------------


def test_unwritable_weights_dir_is_reported_not_fatal(data, tmp_path, monkeypatch):
    import nnlab.runs._weights

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "weights")

    # Weight files are built in memory and written by atomic_write (see WeightCheckpoint).
    monkeypatch.setattr(nnlab.runs._weights, "atomic_write", refuse)
    with pytest.warns(RuntimeWarning, match="checkpoint"):
        _, results = run(data, tmp_path, epochs=2)
    assert results["status"] == "completed"
    assert results["training"]["epochs_run"] == 2
    assert results["error_summary"]["by_component"]["checkpoint"] >= 2
    assert "checkpoint" in Path(results["run_dir"], "training_log.txt").read_text()


def test_tracker_error_is_reported_not_fatal(data, tmp_path, monkeypatch):
    import nnlab.tracking

    def broken():
        raise RuntimeError("psutil exploded")

    monkeypatch.setattr(nnlab.tracking, "process_memory_mb", broken)
    with pytest.warns(RuntimeWarning, match="psutil exploded"):
        _, results = run(data, tmp_path, epochs=2)
    assert results["status"] == "completed"
    # two epoch rows and the final summary could not read the memory
    assert results["error_summary"]["by_component"]["performance_tracker"] == 3


def test_nan_loss_ends_run_as_diverged(data, tmp_path):
    _, results = run(data, tmp_path, epochs=5, optimizer="sgd", learning_rate=10.0, hidden_layers=[64, 64],
                     loss_weighting_strategy="none")
    assert results["status"] == "diverged"
    assert results["training"]["epochs_run"] < 5 or not math.isfinite(results["training"]["history"]["loss"][-1])
    rows = list(csv.DictReader(open(tmp_path / "configuration_log.csv")))
    assert rows[-1]["status"] == "diverged"


def test_issue_example_runs_as_written(tmp_path, monkeypatch):
    # The README/issue example, verbatim apart from the working directory.
    monkeypatch.chdir(tmp_path)
    from nnlab import AdvancedNeuralNetwork, complete_data_pipeline, train_with_tracking

    data_splits = complete_data_pipeline(num_particles=1000)
    X_train, X_val, X_test, y_train, y_val, y_test = data_splits
    config = {'epochs': 50, 'batch_size': 32, 'learning_rate': 0.001, 'dropout_rate': 0.02}
    model = AdvancedNeuralNetwork((X_train.shape[1],), y_train.shape[1], config)
    results = train_with_tracking(model, X_train, X_val, X_test, y_train, y_val, y_test, config)
    assert results["training"]["epochs_run"] == 50
    assert results["test"]["scaled"]["r2"] > 0.8
    assert (tmp_path / "training_output" / "configuration_log.csv").is_file()


def test_steps_per_execution_and_xla_give_the_same_results(data):
    # Exposed in the config because they are faster; they must not change the results.
    finals = []
    for settings in ({"steps_per_execution": 1, "jit_compile": False},
                     {"steps_per_execution": 4, "jit_compile": True}):
        net = AdvancedNeuralNetwork((23,), 6, {**SMALL, **settings, "seed": 13})
        out = net.train_with_custom_constraints(data.X_train, data.y_train, data.X_val, data.y_val, epochs=2,
                                                batch_size=64, verbose=0)
        finals.append(out["history"])
    for key in ("loss", "val_mse", "val_r2_score"):
        np.testing.assert_allclose(finals[0][key], finals[1][key], rtol=1e-3, err_msg=key)


def test_extra_callback_can_stop_and_set_status(data, tmp_path):
    class StopAfterOne(keras.callbacks.Callback):
        run_status = None

        def on_epoch_end(self, epoch, logs=None):
            assert "constraint/applied" in logs and "mse_weight" in logs  # runs after the lab callbacks
            self.model.stop_training = True
            self.run_status = "pruned"

    config = {**SMALL, "epochs": 4}
    model = AdvancedNeuralNetwork((23,), 6, config)
    results = train_with_tracking(model, *data, config, data=data, output_dir=tmp_path, verbose=0,
                                  callbacks=[StopAfterOne()])
    assert results["status"] == "pruned" and results["training"]["epochs_run"] == 1
    rows = list(csv.DictReader(open(tmp_path / "configuration_log.csv")))
    assert rows[-1]["status"] == "pruned"


def test_best_checkpoint_holds_the_best_epoch(data, tmp_path):
    from nnlab.model import regression_metrics

    config = {**SMALL, "epochs": 4, "checkpoint_every": 3, "enable_binary_change_max": False,
              "enable_binary_precision_max": False, "enable_weight_oscillation_dampener": False,
              "use_adaptive_oscillation_dampener": False, "reduce_lr_on_plateau": False}
    model, results = run(data, tmp_path, **config)
    best_epoch = results["performance_summary"]["best_epoch"]
    fresh = AdvancedNeuralNetwork((23,), 6, config)
    fresh.model.load_weights(Path(results["run_dir"], "weights", "best.weights.h5"))
    r2 = regression_metrics(data.y_val, fresh.predict(data.X_val))["r2"]
    assert r2 == pytest.approx(results["performance_summary"]["best_r2"], abs=1e-4)
    fresh.model.load_weights(Path(results["run_dir"], "weights", "final.weights.h5"))
    final = regression_metrics(data.y_val, fresh.predict(data.X_val))["r2"]
    assert final == pytest.approx(results["performance_summary"]["current_r2"], abs=1e-4)
    assert best_epoch is not None


def test_bad_data_fails_loudly_and_records_failed(data, tmp_path):
    X_train = data.X_train.copy()
    X_train[5, 2] = np.nan
    model = AdvancedNeuralNetwork((23,), 6, SMALL)
    with pytest.raises(DataValidationError, match="training data: contains NaN"):
        train_with_tracking(model, X_train, data.X_val, data.X_test, data.y_train, data.y_val, data.y_test,
                            SMALL, output_dir=tmp_path, verbose=0)
    rows = list(csv.DictReader(open(tmp_path / "configuration_log.csv")))
    assert rows[-1]["status"] == "failed"
