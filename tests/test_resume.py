"""Crash resume, interruption, checkpoint integrity and concurrent runs — real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from nnlab.data import complete_data_pipeline
from nnlab.integrations.mlflow import run_record
from nnlab.integrations.tensorboard import read_events
from nnlab.model import AdvancedNeuralNetwork
from nnlab.runs import (
    CheckpointError,
    RunLockedError,
    list_checkpoints,
    load_latest_checkpoint,
    resume_training,
    train_with_tracking,
)
import _forked

REPO = Path(__file__).resolve().parents[1]
# Small but convergent: the final R² is stable enough to compare runs. With the physics loss term
# on: a resume must rebuild it as configured.
RUN = ["--num-particles", "400", "--epochs", "24", "--seed", "3", "--quiet",
       "--set", "hidden_layers=[64,32]", "--set", "learning_rate=0.003", "--set", "checkpoint_every=4",
       "--set", "jit_compile=false", "--set", "physics_loss_weight=0.1", "--set", "physics_collocation_points=2000",
       "--set", "physics_collocation_batch_size=64",
       "--set", 'physics_loss_terms=["speed", "energy"]']


def main_py(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return _forked.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_rows(out: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list((out / "runs").glob("*/training_results.csv")) if (out / "runs").exists() else []
        if runs and sum(1 for _ in open(runs[0])) - 1 >= n:
            return runs[0].parent
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no {n} epochs within {timeout}s")


def final_test_r2(run_dir: Path) -> float:
    return json.loads((run_dir / "test_metrics.json").read_text())["scaled"]["r2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    code, stdout, stderr = finish(main_py(*RUN, "--output-dir", str(out / "o"), cwd=out))
    assert code == 0, stderr
    return next((out / "o" / "runs").iterdir())


def test_sigkill_then_resume(tmp_path, uninterrupted):
    out = tmp_path / "o"
    proc = main_py(*RUN, "--output-dir", str(out), "--mlflow", cwd=tmp_path)
    run_dir = wait_for_rows(out, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list_checkpoints(run_dir), "a checkpoint every 4 epochs"
    log = pd.read_csv(out / "configuration_log.csv")
    assert log["status"].tolist() == ["running"]
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["status"] == "running" and status["pid"] == proc.pid
    assert json.loads((run_dir / ".lock").read_text())["pid"] == proc.pid  # a stale lock: taken over
    written = [step for step, _ in read_events(run_dir / "tensorboard" / "validation")["scalars"]["epoch_loss"]]
    assert written[-1] > load_latest_checkpoint(run_dir).epoch  # epochs the resume redoes

    resume = main_py("--resume", "latest", "--quiet", "--output-dir", str(out), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while json.loads((run_dir / ".lock").read_text() or "{}").get("pid") != resume.pid:
        assert resume.poll() is None and time.monotonic() < deadline, resume.communicate()
        time.sleep(0.1)
    # A second resume while the first one trains: refused, naming the first.
    with pytest.raises(RunLockedError, match=f"run {run_dir.name} is being trained by process {resume.pid}"):
        resume_training(run_dir.name, output_dir=out)
    code, stdout, stderr = finish(resume)
    assert code == 0, stderr
    assert "resuming run" in stderr and "completed" in stdout
    rows = pd.read_csv(run_dir / "training_results.csv")
    assert rows["epoch"].tolist() == list(range(1, 25))  # one row per epoch, none duplicated or missing
    assert pd.read_csv(run_dir / "loss_history.csv")["epoch"].tolist() == list(range(24))
    # The resumed epochs trained with the same physics term: logged, and part of the loss.
    assert np.isfinite(rows[["physics_loss", "val_physics_loss"]].to_numpy()).all()
    # The weight's warm-up ramp (30 epochs by default) continues where the killed process left it.
    np.testing.assert_allclose(rows["physics_loss_weight"], [0.1 * e / 31 for e in range(1, 25)], rtol=1e-6)
    assert "+ physics term 0.1 x (speed, energy)" in stdout
    assert json.loads((run_dir / "test_metrics.json").read_text())["physics"]["speed_violation"] > 0
    log = pd.read_csv(out / "configuration_log.csv")
    assert len(log) == 1 and log["status"].iloc[0] == "completed" and log["epochs_run"].iloc[0] == 24
    assert abs(final_test_r2(run_dir) - final_test_r2(uninterrupted)) < 0.01
    # TensorBoard: the epochs redone after the checkpoint replace the killed attempt's, none twice.
    for writer, column in (("train", "train_loss"), ("validation", "val_loss")):  # both writers cut back
        scalars = read_events(run_dir / "tensorboard" / writer)["scalars"]
        assert [step for step, _ in scalars["epoch_loss"]] == list(range(1, 25)), writer
        np.testing.assert_allclose([float(v) for _, v in scalars["epoch_loss"]], rows[column], rtol=1e-6)
    # MLflow: the same run, reopened; each epoch logged once (in batches at the checkpoints).
    record = run_record(run_dir)
    client = MlflowClient(record["tracking_uri"])
    assert [r.info.run_id for r in client.search_runs([record["experiment_id"]])] == [record["run_id"]]
    history = client.get_metric_history(record["run_id"], "val_loss")
    assert [m.step for m in history] == list(range(1, 25))
    np.testing.assert_allclose([m.value for m in history], rows["val_loss"], rtol=1e-9)
    assert client.get_run(record["run_id"]).info.status == "FINISHED"


def test_completed_run_is_not_resumed(uninterrupted):
    out = uninterrupted.parents[1]
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    code, stdout, stderr = finish(main_py("--resume", uninterrupted.name, "--output-dir", str(out), cwd=out.parent))
    assert code == 2 and "Traceback" not in stderr
    assert (f"error: run {uninterrupted.name} completed all 24 epochs (status completed); nothing to resume"
            in stderr)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_sigterm_marks_interrupted_and_resumes(tmp_path):
    out = tmp_path / "o"
    proc = main_py(*RUN, "--output-dir", str(out), "--mlflow", cwd=tmp_path)
    run_dir = wait_for_rows(out, 6, proc)
    proc.send_signal(signal.SIGTERM)
    code, stdout, stderr = finish(proc)
    assert code == 130, stderr
    assert "interrupted" in stdout and f"--resume {run_dir.name}" in stderr
    assert "Traceback" not in stderr
    log = pd.read_csv(out / "configuration_log.csv")
    assert log["status"].tolist() == ["interrupted"]
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "interrupted"
    done = int(pd.read_csv(run_dir / "training_results.csv")["epoch"].iloc[-1])
    assert load_latest_checkpoint(run_dir).epoch == done  # the interrupted epoch was checkpointed
    record = run_record(run_dir)
    client = MlflowClient(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["nnlab.status"] == "interrupted"
    assert [m.step for m in client.get_metric_history(record["run_id"], "val_loss")] == list(range(1, done + 1))

    code, stdout, stderr = finish(main_py("--resume", run_dir.name, "--quiet", "--output-dir", str(out),
                                          cwd=tmp_path))
    assert code == 0, stderr
    assert f"from ckpt_{done:04d}" in stderr
    assert pd.read_csv(run_dir / "training_results.csv")["epoch"].tolist() == list(range(1, 25))
    assert pd.read_csv(run_dir / "loss_history.csv")["epoch"].tolist() == list(range(24))
    assert pd.read_csv(out / "configuration_log.csv")["status"].tolist() == ["completed"]
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(record["run_id"], "val_loss")] == list(range(1, 25))


# --- integrity, through the API -----------------------------------------------------------

CONFIG = {"hidden_layers": [16], "epochs": 4, "batch_size": 64, "checkpoint_every": 2, "seed": 1,
          "jit_compile": False, "constraint_interval": 1}


class StopAfter(keras.callbacks.Callback):
    """Ends training after ``epochs`` epochs the way an interruption does (status ``interrupted``)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs, self.run_status = epochs, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True
            self.run_status = "interrupted"


@pytest.fixture
def finished_run(tmp_path):
    """A run of 6 epochs interrupted after 4 (checkpoints at 2 and 4): something to resume."""
    config = {**CONFIG, "epochs": 6}
    data = complete_data_pipeline(num_particles=200, seed=2)
    model = AdvancedNeuralNetwork((23,), 6, config)
    results = train_with_tracking(model, *data, config, data=data, output_dir=tmp_path, verbose=0,
                                  data_source={"num_particles": 200, "seed": 2, "random_state": 42},
                                  callbacks=[StopAfter(4)])
    assert results["status"] == "interrupted"
    return tmp_path, Path(results["run_dir"])


def test_checkpoint_restores_every_component(finished_run):
    _, run_dir = finished_run
    state = load_latest_checkpoint(run_dir)
    assert state.epoch == 4
    assert {"model", "loss", "best_weights", "constraints", "reduce_lr"} <= set(state.meta)
    assert len(state.meta["loss"]["history"]) == 4
    assert any(k.startswith("o") for k in state.arrays["model"])  # optimizer moments
    assert any("|previous" in k or "|" in k for k in state.arrays["constraints"])
    final = AdvancedNeuralNetwork((23,), 6, CONFIG)
    final.model.load_weights(run_dir / "weights" / "final.weights.h5")
    for a, b in zip(final.model.get_weights(), [state.arrays["model"][k] for k in sorted(state.arrays["model"])
                                                if k.startswith("w")]):
        np.testing.assert_array_equal(a, b)


def test_corrupt_latest_checkpoint_falls_back_with_warning(finished_run):
    out, run_dir = finished_run
    latest = run_dir / "checkpoints" / "ckpt_0004.npz"
    payload = bytearray(latest.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    latest.write_bytes(bytes(payload))
    with pytest.warns(RuntimeWarning, match=r"ckpt_0004 is unusable: .*SHA-256 \(corrupt\)"):
        state = load_latest_checkpoint(run_dir)
    assert state.epoch == 2
    with pytest.warns(RuntimeWarning, match="ckpt_0004"):
        results = resume_training(run_dir.name, output_dir=out, verbose=0)
    assert results["status"] == "completed"
    assert pd.read_csv(run_dir / "training_results.csv")["epoch"].tolist() == [1, 2, 3, 4, 5, 6]


def test_truncated_checkpoint_is_detected(finished_run):
    _, run_dir = finished_run
    for npz in (run_dir / "checkpoints").glob("*.npz"):
        npz.write_bytes(npz.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="truncated"):
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            load_latest_checkpoint(run_dir)


def test_resume_errors_are_clear(finished_run, tmp_path_factory):
    out, run_dir = finished_run
    with pytest.raises(Exception, match="unknown run id 'nope'.*available: " + run_dir.name):
        resume_training("nope", output_dir=out)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(Exception, match=r"run `python main.py` first"):
        resume_training("latest", output_dir=empty)


# --- concurrency ----------------------------------------------------------------------------


def test_two_processes_same_output_dir(tmp_path):
    out = tmp_path / "o"
    args = ["--num-particles", "200", "--epochs", "2", "--quiet", "--set", "hidden_layers=[8]",
            "--set", "jit_compile=false", "--output-dir", str(out)]
    procs = [main_py(*args, cwd=tmp_path) for _ in range(2)]
    for proc in procs:
        code, _, stderr = finish(proc)
        assert code == 0, stderr
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2
    log = pd.read_csv(out / "configuration_log.csv")
    assert sorted(log["run_id"]) == runs and log["status"].tolist() == ["completed", "completed"]
    assert log["test_r2"].notna().all()


def test_unwritable_checkpoints_mid_run_warn_and_training_finishes(tmp_path, monkeypatch):
    import nnlab.runs._state as state_module

    def disk_full(*args, **kwargs):
        raise OSError(13, "Permission denied")  # (a full disk stops the run instead)

    monkeypatch.setattr(state_module, "atomic_write", disk_full)
    data = complete_data_pipeline(num_particles=200, seed=2)
    model = AdvancedNeuralNetwork((23,), 6, CONFIG)
    with pytest.warns(RuntimeWarning, match="training checkpoint: .*Permission denied"):
        results = train_with_tracking(model, *data, CONFIG, data=data, output_dir=tmp_path, verbose=0)
    assert results["status"] == "completed" and results["training"]["epochs_run"] == 4
    # epochs 2 and 4, and the retry at the end of training (epoch 4 was never saved)
    assert results["error_summary"]["by_component"]["training checkpoint"] == 3
    assert "training checkpoint" in Path(results["run_dir"], "training_log.txt").read_text()
