"""TensorBoard and MLflow: what a run writes, read back with the tools' own readers.

Real training, real event files (read with TensorBoard's proto and tensor
readers), a real MLflow store (sqlite, read with ``MlflowClient``). Faults are
injected only where a component must fail: an unreachable server, a missing
package, an event writer that cannot be created.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

from nnlab.cli import main
from nnlab.config import Config
from nnlab.data import complete_data_pipeline
from nnlab.integrations.mlflow import RUN_RECORD, run_record
from nnlab.integrations.tensorboard import (TENSORBOARD_DIR, TRAIN_DIR, VALIDATION_DIR, cut_event_files,
                                            histogram_counts, read_events, write_histograms)
from nnlab.model import AdvancedNeuralNetwork
from nnlab.runs import train_with_tracking

EPOCHS = 6
RUN = ["--num-particles", "300", "--epochs", str(EPOCHS), "--seed", "5", "--quiet",
       "--set", "hidden_layers=[8]", "--set", "constraint_interval=2", "--set", "checkpoint_every=4",
       "--set", "jit_compile=false", "--set", "max_binary_digits=10"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One run with TensorBoard (the default) and MLflow on a bare --mlflow: (output dir, run dir)."""
    out = tmp_path_factory.mktemp("tracked") / "o"
    with pytest.MonkeyPatch.context() as mp:  # a bare --mlflow would take the environment's store and experiment
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        assert main(["train", *RUN, "--output-dir", str(out), "--mlflow"]) == 0
    return out, next((out / "runs").iterdir())


def mlflow_run(out: Path, run_dir: Path):
    record = run_record(run_dir)
    assert record["tracking_uri"] == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    client = MlflowClient(record["tracking_uri"])
    return client, client.get_run(record["run_id"])


# --- TensorBoard -------------------------------------------------------------------------------

def tensorboard_scalars(run_dir: Path, writer: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of one writer of a run, read with TensorBoard's EventAccumulator."""
    accumulator = EventAccumulator(str(run_dir / TENSORBOARD_DIR / writer), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]
            if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


def test_tensorboard_train_and_validation_writers_as_keras_lays_them_out(tracked):
    _, run_dir = tracked
    rows = pd.read_csv(run_dir / "training_results.csv")
    assert sorted(p.name for p in (run_dir / TENSORBOARD_DIR).iterdir()) == ["train", "validation"]
    train, validation = tensorboard_scalars(run_dir, "train"), tensorboard_scalars(run_dir, "validation")
    # The same epoch_* tags in both writers: TensorBoard overlays training and validation on one chart.
    expected = {("train", "epoch_loss"): "train_loss", ("validation", "epoch_loss"): "val_loss",
                ("train", "epoch_mse"): "train_mse", ("validation", "epoch_mse"): "val_mse",
                ("train", "epoch_mae"): "train_mae", ("validation", "epoch_mae"): "val_mae",
                ("validation", "epoch_rmse"): "val_rmse", ("validation", "epoch_r2"): "r2_score",
                ("train", "epoch_learning_rate"): "learning_rate",
                ("train", "loss_weights/mse_weight"): "mse_weight", ("train", "loss_weights/mae_weight"): "mae_weight",
                ("train", "system/epoch_time_s"): "epoch_time", ("train", "system/memory_mb"): "memory_mb",
                ("train", "constraints/applied"): "constraint/applied"}
    written = {"train": train, "validation": validation}
    for (writer, tag), column in expected.items():
        assert [step for step, _ in written[writer][tag]] == list(range(1, EPOCHS + 1)), (writer, tag)
        np.testing.assert_allclose([v for _, v in written[writer][tag]], rows[column], rtol=1e-6, err_msg=tag)
    assert "r2_score" not in validation and "epoch_r2" not in train and "val_loss" not in validation
    # Every other per-epoch cell is in train under a section prefix; no tag left at the CSV's name.
    sections = {tag.split("/")[0] for tag in train if "/" in tag}
    assert sections == {"constraints", "loss_weights", "system"}
    assert {tag for tag in train if "/" not in tag} == {"epoch_loss", "epoch_mse", "epoch_mae", "epoch_learning_rate"}
    metrics = json.loads((run_dir / "test_metrics.json").read_text())["scaled"]
    for key in ("mse", "mae", "rmse", "r2"):
        [(step, value)] = validation[f"test/{key}"]
        assert step == EPOCHS and value == pytest.approx(metrics[key], rel=1e-6)


def test_constraint_statistics_only_on_the_epochs_the_constraints_ran(tracked):
    _, run_dir = tracked
    rows = pd.read_csv(run_dir / "training_results.csv", keep_default_na=False)
    column = "constraint/binary_precision_max/fraction_changed"
    # constraint_interval 2: the CSV's cell is empty on the other epochs (not 0, "ran and changed nothing").
    assert rows["constraint/applied"].tolist() == [0.0, 1.0] * (EPOCHS // 2)
    assert rows[column].tolist()[0::2] == [""] * (EPOCHS // 2)
    assert all(float(v) > 0 for v in rows[column].tolist()[1::2])
    train = tensorboard_scalars(run_dir, "train")
    for tag in [t for t in train if t.startswith("constraints/") and t != "constraints/applied"]:
        assert [step for step, _ in train[tag]] == [2, 4, 6], tag
    assert [v for _, v in train["constraints/binary_precision_max/fraction_changed"]] == pytest.approx(
        [float(v) for v in rows[column].tolist()[1::2]], rel=1e-6)
    assert [step for step, _ in train["constraints/applied"]] == list(range(1, EPOCHS + 1))


def test_tensorboard_lists_each_run_by_its_id(tracked):
    out, run_dir = tracked
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(out / "runs"))  # tensorboard --logdir <output>/runs
    assert sorted(multiplexer.Runs()) == [f"{run_dir.name}/tensorboard/train",
                                          f"{run_dir.name}/tensorboard/validation"]


def test_tensorboard_histograms_at_constraint_epochs(tracked):
    _, run_dir = tracked
    histograms = read_events(run_dir / TENSORBOARD_DIR / TRAIN_DIR)["histograms"]
    assert "histograms" not in read_events(run_dir / TENSORBOARD_DIR / VALIDATION_DIR)
    # hidden_layers [8] with PReLU: dense kernel/bias, the PReLU slope, the output kernel/bias.
    weights = sorted(tag.removeprefix("weights/") for tag in histograms if tag.startswith("weights/"))
    assert weights == ["dense_1/bias", "dense_1/kernel", "prelu_1/alpha", "targets/bias", "targets/kernel"]
    for name in weights:
        for kind in ("weights", "significant_bits"):
            assert [step for step, _ in histograms[f"{kind}/{name}"]] == [2, 4, 6]  # constraint_interval 2
        # max_binary_digits 10, applied at those epochs: no weight has more than 10 significant bits.
        for _, buckets in histograms[f"significant_bits/{name}"]:
            counts = buckets[:, 2]
            assert counts.sum() > 0 and buckets[counts > 0, 0].max() <= 10
        value_counts = [int(b[:, 2].sum()) for _, b in histograms[f"weights/{name}"]]
        bits_counts = [int(b[:, 2].sum()) for _, b in histograms[f"significant_bits/{name}"]]
        assert value_counts == bits_counts  # every element counted in both


@pytest.mark.parametrize("jit", [False, True])
def test_in_graph_histograms_equal_tensorboards_own(tmp_path, jit):
    """histogram_counts + write_histograms give what tf.summary.histogram / histogram_pb give, read live
    (also compiled with XLA, as with jit_compile)."""
    import keras
    from tensorboard.plugins.histogram.summary_v2 import histogram_pb

    from nnlab.constraints.bits import significant_bits

    rng = np.random.default_rng(0)
    spread = keras.Variable(rng.normal(0, 0.1, (40, 25)).astype(np.float32), name="spread")
    constant = keras.Variable(np.full(7, 0.5, np.float32), name="constant")
    with_zeros = keras.Variable(np.float32([0.0, 0.0, 1.0, -3.75, 0.1]), name="with_zeros")
    variables = [spread, constant, with_zeros]
    counts = histogram_counts(variables, jit_compile=jit)
    writer = tf.summary.create_file_writer(str(tmp_path))
    seen = {}
    for step in (1, 2):
        if step == 2:
            spread.assign(spread.numpy() * 4 + 1)  # the function reads the variables' current values
        seen[step] = {v.path: v.numpy().copy() for v in variables}
        with writer.as_default(step=step):
            write_histograms(variables, counts())
    writer.close()
    histograms = read_events(tmp_path)["histograms"]
    for step, values in seen.items():
        for path, current in values.items():
            (got,) = [h for s, h in histograms[f"weights/{path}"] if s == step]
            expected = tf.make_ndarray(histogram_pb("t", current).value[0].tensor)
            np.testing.assert_allclose(got[:, :2], expected[:, :2], rtol=1e-5, atol=1e-7)
            assert got[:, 2].tolist() == expected[:, 2].tolist(), path
            bits = significant_bits(current)
            (got_bits,) = [h for s, h in histograms[f"significant_bits/{path}"] if s == step]
            expected_bits = tf.make_ndarray(
                histogram_pb("t", bits, buckets=int(bits.max() - bits.min()) + 1).value[0].tensor)
            np.testing.assert_allclose(got_bits, expected_bits)
    assert histograms["weights/constant"][0][1][:, 2].tolist() == [0] * 29 + [7]  # one value: the last bucket


def test_a_diverged_weight_gets_a_bits_histogram_and_no_value_histogram(tmp_path):
    import warnings

    import keras

    diverged = keras.Variable(np.float32([1.0, np.nan, 0.5, np.inf]), name="diverged")
    writer = tf.summary.create_file_writer(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy warning about NaN edges
        with writer.as_default(step=1):
            write_histograms([diverged], histogram_counts([diverged])())
    writer.close()
    histograms = read_events(tmp_path)["histograms"]
    assert "weights/diverged" not in histograms
    [(step, bits)] = histograms["significant_bits/diverged"]
    assert step == 1 and bits[:, 2].sum() == 4 and bits[0, 2] == 2  # NaN and inf count 0 significant bits


@pytest.mark.parametrize("freq, steps", [(0, []), (3, [6])])
def test_tensorboard_histogram_freq_counts_constraint_applications(tmp_path, freq, steps):
    # constraint_interval 2: freq 3 writes histograms on every third application (epoch 6); 0 writes none.
    out = tmp_path / "o"
    assert main(["train", *RUN, "--output-dir", str(out), "--set", f"tensorboard_histogram_freq={freq}"]) == 0
    events = read_events(next((out / "runs").iterdir()) / TENSORBOARD_DIR / TRAIN_DIR)
    written = {step for entries in events.get("histograms", {}).values() for step, _ in entries}
    assert sorted(written) == steps
    assert [s for s, _ in events["scalars"]["epoch_loss"]] == list(range(1, EPOCHS + 1))


def test_cut_event_files_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in range(1, 6):
            tf.summary.scalar("loss", float(step), step=step)
    writer.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    path.write_bytes(path.read_bytes() + path.read_bytes()[:20])  # a record cut short by a kill
    assert cut_event_files(tmp_path, 3) == 3  # steps 4, 5 and the broken record
    assert [s for s, _ in read_events(tmp_path)["scalars"]["loss"]] == [1, 2, 3]
    before = path.read_bytes()
    assert cut_event_files(tmp_path, 3) == 0 and path.read_bytes() == before  # nothing more to cut


# --- MLflow ------------------------------------------------------------------------------------

def test_mlflow_run_has_params_metrics_tags_and_files(tracked):
    out, run_dir = tracked
    client, run = mlflow_run(out, run_dir)
    saved = json.loads((run_dir / "training_config.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    expected = {k: v if isinstance(v, str) else json.dumps(v) for k, v in saved["config"].items()}
    assert run.data.params == expected
    assert run.data.tags["nnlab.run_id"] == run_dir.name and run.data.tags["nnlab.status"] == "completed"
    assert run.data.tags["nnlab.data_source"] == "simulated: 300 particles, seed 5"
    assert run.data.tags["nnlab.version"] and run.data.tags["nnlab.preset"] == "default"
    rows = pd.read_csv(run_dir / "training_results.csv")
    for column in ("train_loss", "val_loss", "val_mse", "r2_score", "learning_rate", "epoch_time", "memory_mb",
                   "constraint/applied"):
        history = client.get_metric_history(run.info.run_id, column)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), column
        np.testing.assert_allclose([m.value for m in history], rows[column], rtol=1e-9)
    test = json.loads((run_dir / "test_metrics.json").read_text())
    assert run.data.metrics["test_r2"] == pytest.approx(test["scaled"]["r2"])
    assert run.data.metrics["test_physical/kinetic_energy/rmse"] == pytest.approx(
        test["per_target_physical"]["kinetic_energy"]["rmse"])
    assert run.data.metrics["test_physics_speed_violation"] == pytest.approx(test["physics"]["speed_violation"])
    assert run.data.metrics["test_format_float16_r2"] == pytest.approx(test["formats"]["float16"]["r2"])
    [data_input] = run.inputs.dataset_inputs
    assert data_input.dataset.digest == saved["data"]["arrays_sha256"][:16]
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_results.csv", "loss_history.csv", "training_config.json", "test_metrics.json",
            "run_status.json", "training_log.txt", "scalers.json", "weights"} <= listed
    assert [a.path for a in client.list_artifacts(run.info.run_id, "weights")] == ["weights/final.weights.h5"]
    # A local store keeps its artifacts beside it, not in ./mlruns of the working directory.
    assert client.get_experiment(run.info.experiment_id).artifact_location == (out / "mlartifacts").resolve().as_uri()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def small_data():
    return complete_data_pipeline(num_particles=200, seed=4)


def _train(small_data, tmp_path, **config):
    config = {"hidden_layers": [8], "epochs": 2, "batch_size": 64, "jit_compile": False, **config}
    model = AdvancedNeuralNetwork((small_data.X_train.shape[1],), small_data.y_train.shape[1], Config.from_flat(config))
    return train_with_tracking(model, *small_data, config, data=small_data, output_dir=tmp_path, verbose=0)


def test_unreachable_mlflow_server_costs_one_warning(small_data, tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.warns(RuntimeWarning, match=r"mlflow: MlflowException: API request to http://127\.0\.0\.1") as caught:
        results = _train(small_data, tmp_path, mlflow_tracking_uri=uri, tensorboard=False)
    assert sum("mlflow" in str(w.message) for w in caught) == 1
    assert results["status"] == "completed" and results["test"] is not None
    assert results["error_summary"]["by_component"] == {"mlflow": 1}
    run_dir = Path(results["run_dir"])
    assert not (run_dir / TENSORBOARD_DIR).exists() and not (run_dir / RUN_RECORD).exists()


def test_missing_mlflow_package_costs_one_warning(small_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.warns(RuntimeWarning, match=r"mlflow: ImportError: the mlflow package is not installed: "
                                            r"pip install 'nnlab\[mlflow\]'"):
        results = _train(small_data, tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert results["status"] == "completed" and results["error_summary"]["by_component"] == {"mlflow": 1}
    # TensorBoard unaffected
    assert read_events(Path(results["run_dir"]) / TENSORBOARD_DIR / VALIDATION_DIR)["scalars"]["epoch_loss"]


def test_unwritable_tensorboard_costs_one_warning(small_data, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(tf.summary, "create_file_writer", refuse)
    with pytest.warns(RuntimeWarning, match="tensorboard: PermissionError"):
        results = _train(small_data, tmp_path)
    assert results["status"] == "completed" and results["error_summary"]["by_component"] == {"tensorboard": 1}
