"""Resume safety: only resumable runs, one process per run, every check before any write.

CLI behaviour is tested through real processes; the checks themselves through the API.
A refused resume must leave every file as it was: each test compares the SHA-256 of
every file under the output directory before and after.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

from nnlab.data import complete_data_pipeline, generate_particle_data, prepare_csv, save_particle_data
from nnlab.errors import NnlabError
from nnlab.model import AdvancedNeuralNetwork
from nnlab.runs import (
    CheckpointError,
    RunLock,
    RunLockedError,
    load_latest_checkpoint,
    read_run_status,
    resume_training,
    train_with_tracking,
    write_run_status,
)
from test_resume import StopAfter  # ends training the way an interruption does
import _forked

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"hidden_layers": [16], "epochs": 6, "batch_size": 64, "checkpoint_every": 2, "seed": 1,
          "jit_compile": False, "constraint_interval": 1}
SOURCE = {"num_particles": 200, "seed": 2, "random_state": 42}


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (directories listed too)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def main_py(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return _forked.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(*args: str, cwd: Path) -> tuple[int, str]:
    proc = main_py(*args, cwd=cwd)
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in out + err, err
    return proc.returncode, err


def interrupted_run(out: Path, config: dict | None = None, *, data=None, source: dict | None = None) -> Path:
    """A run of 6 epochs interrupted after 4 (checkpoints ckpt_0002 and ckpt_0004)."""
    config = {**CONFIG, **(config or {})}
    data = data if data is not None else complete_data_pipeline(num_particles=200, seed=2)
    model = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], config)
    results = train_with_tracking(model, *data, config, data=data, output_dir=out, verbose=0,
                                  data_source=source or SOURCE, callbacks=[StopAfter(4)])
    assert results["status"] == "interrupted"
    return Path(results["run_dir"])


def epochs_of(run_dir: Path) -> tuple[list[int], list[int]]:
    return (pd.read_csv(run_dir / "training_results.csv")["epoch"].tolist(),
            pd.read_csv(run_dir / "loss_history.csv")["epoch"].tolist())


# --- status: only interrupted runs (or running ones whose process is gone) -----------------


def test_status_is_recorded_in_the_run(tmp_path):
    run_dir = interrupted_run(tmp_path)
    record = json.loads((run_dir / "run_status.json").read_text())
    assert record["status"] == "interrupted" and record["pid"] == os.getpid()
    assert record["hostname"] == socket.gethostname() and record["epochs"] == 6 and record["epochs_run"] == 4
    saved = json.loads((run_dir / "training_config.json").read_text())
    assert len(saved["settings_sha256"]) == 64 and len(saved["data"]["arrays_sha256"]) == 64
    lock = json.loads((run_dir / ".lock").read_text())
    assert lock["pid"] == os.getpid()

    results = resume_training(run_dir.name, output_dir=tmp_path, verbose=0)
    assert results["status"] == "completed"
    assert epochs_of(run_dir) == ([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5])
    record = read_run_status(run_dir)
    assert record["status"] == "completed" and record["epochs_run"] == 6 and record["resumed_from_epoch"] == 4

    # Completed now: refused, and nothing changes.
    before = digests(tmp_path)
    with pytest.raises(NnlabError, match=rf"run {run_dir.name} completed all 6 epochs \(status completed\); "
                                         "nothing to resume"):
        resume_training(run_dir.name, output_dir=tmp_path)
    with pytest.raises(NnlabError, match=r"no resumable run in '.*runs': 1 run, all completed"):
        resume_training("latest", output_dir=tmp_path)
    assert digests(tmp_path) == before


def test_run_stopped_by_a_full_disk_is_resumable(run_to_edit):
    tmp_path, run_dir = run_to_edit
    write_run_status(run_dir, "failed: disk full", epochs=6, epochs_run=4)
    results = resume_training("latest", output_dir=tmp_path, verbose=0)
    assert results["status"] == "completed" and results["run_id"] == run_dir.name
    assert epochs_of(run_dir) == ([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5])


def test_completed_status_wins_over_a_missing_or_edited_log(run_to_edit):
    tmp_path, run_dir = run_to_edit
    write_run_status(run_dir, "completed", epochs=6, epochs_run=6)
    (tmp_path / "configuration_log.csv").unlink()
    before = digests(tmp_path)
    with pytest.raises(NnlabError, match="completed all 6 epochs"):
        resume_training(run_dir.name, output_dir=tmp_path)
    assert digests(tmp_path) == before


def test_early_stopped_run_is_refused_and_unchanged(tmp_path):
    out = tmp_path / "o"
    code, err = cli("--num-particles", "200", "--epochs", "40", "--seed", "1", "--quiet",
                    "--set", "hidden_layers=[8]", "--set", "learning_rate=0.01",
                    "--set", "early_stopping_patience=1", "--set", "jit_compile=false",
                    "--output-dir", str(out), cwd=tmp_path)
    assert code == 0, err
    run_dir = next((out / "runs").iterdir())
    done = len(pd.read_csv(run_dir / "training_results.csv"))
    assert done < 40, "early stopping should have ended this run"
    (out / "runs" / "notes").mkdir()  # a stray folder must not break --resume latest
    (out / "runs" / "notes" / "todo.txt").write_text("not a run")
    before = digests(out)

    code, err = cli("--resume", run_dir.name, "--output-dir", str(out), cwd=tmp_path)
    assert code == 2
    assert shows(err, f"error: run {run_dir.name} completed after {done} of 40 epochs: early stopping ended it "
                 "(status completed); nothing to resume")
    code, err = cli("--resume", "--output-dir", str(out), cwd=tmp_path)
    assert code == 2
    assert shows(err, f"error: no resumable run in '{out / 'runs'}': 1 run, all completed")
    assert digests(out) == before


def test_diverged_run_is_refused(tmp_path):
    data = complete_data_pipeline(num_particles=200, seed=2)
    config = {**CONFIG, "learning_rate": 10.0, "optimizer": "sgd"}
    model = AdvancedNeuralNetwork((23,), 6, config)
    results = train_with_tracking(model, *data, config, data=data, output_dir=tmp_path, verbose=0,
                                  data_source=SOURCE)
    assert results["status"] == "diverged"
    before = digests(tmp_path)
    with pytest.raises(NnlabError, match=r"diverged \(the loss became NaN/inf\) after \d+ of 6 epochs "
                                         r"\(status diverged\); start a new run with a smaller learning_rate"):
        resume_training(results["run_id"], output_dir=tmp_path)
    assert digests(tmp_path) == before


# --- one process per run ---------------------------------------------------------------------


def test_locked_run_is_refused_by_the_cli_and_a_released_lock_is_taken_over(run_to_edit):
    tmp_path, run_dir = run_to_edit
    # This process plays a trainer that holds the run (a live process, as far as flock knows).
    lock = RunLock(run_dir).acquire()
    lock.label()
    write_run_status(run_dir, "running", epochs=6)
    before = digests(tmp_path)
    expected = f"run {run_dir.name} is being trained by process {os.getpid()} on host {socket.gethostname()} " \
               f"(lock {run_dir / '.lock'})"
    try:
        code, err = cli("--resume", run_dir.name, "--output-dir", str(tmp_path), cwd=tmp_path)
        assert code == 2 and shows(err, f"error: {expected}")
        code, err = cli("--resume", "--output-dir", str(tmp_path), cwd=tmp_path)
        assert code == 2 and shows(err, "1 run, all running (being trained)")
        with pytest.raises(RunLockedError, match="being trained by process"):
            resume_training(run_dir.name, output_dir=tmp_path)
        assert digests(tmp_path) == before
    finally:
        lock.release()
    # The owner is gone (its lock released; the file still names it): the run is resumed.
    results = resume_training("latest", output_dir=tmp_path, verbose=0)
    assert results["status"] == "completed" and results["run_id"] == run_dir.name
    assert epochs_of(run_dir) == ([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5])


def test_resume_racing_the_training_process_is_refused(tmp_path):
    out = tmp_path / "o"
    proc = main_py("--num-particles", "200", "--epochs", "5000", "--seed", "1", "--quiet",
                   "--set", "hidden_layers=[8]", "--set", "checkpoint_every=2", "--set", "jit_compile=false",
                   "--output-dir", str(out), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while True:
            runs = list(out.glob("runs/*/training_results.csv"))
            if runs and len(runs[0].read_text().splitlines()) > 3:
                break
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        run_dir = runs[0].parent
        message = f"run {run_dir.name} is being trained by process {proc.pid} on host {socket.gethostname()}"
        with pytest.raises(RunLockedError, match=message):
            resume_training(run_dir.name, output_dir=out)
        code, err = cli("--resume", run_dir.name, "--output-dir", str(out), cwd=tmp_path)
        assert proc.poll() is None, "the training process should still be running"
        assert code == 2 and shows(err, f"error: {message} (lock {run_dir / '.lock'})")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    epochs, _ = epochs_of(run_dir)
    assert epochs == list(range(1, len(epochs) + 1))  # the refused resumes cut nothing
    record = read_run_status(run_dir)
    assert record["status"] == "running" and record["pid"] == proc.pid


# --- edited training_config.json and changed data: refused before anything is written ----------


def _edit(run_dir: Path, change, *, recompute: bool) -> None:
    """Edit training_config.json; with ``recompute`` also its digest (as a careful forger would)."""
    from nnlab.runs._runs import settings_digest

    path = run_dir / "training_config.json"
    saved = json.loads(path.read_text())
    change(saved)
    if recompute:
        saved["settings_sha256"] = settings_digest(saved)
    path.write_text(json.dumps(saved))


@pytest.fixture(scope="module")
def _interrupted_template(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("interrupted_template")
    return out, interrupted_run(out).name


@pytest.fixture
def run_to_edit(tmp_path, _interrupted_template):
    """An interrupted run of its own for each test to edit: a copy of one trained once for the module
    (what the test edits and resumes is the copy; the output directory's files as training left them)."""
    template, name = _interrupted_template
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return tmp_path, tmp_path / "runs" / name


@pytest.mark.parametrize("change", [
    lambda s: s["config"].update(hidden_layers=[32]),
    lambda s: s["data"].update(num_particles=300),
    lambda s: s["data"].update(seed=3),
    lambda s: s.update(seed=5),
], ids=["hidden_layers", "num_particles", "data_seed", "model_seed"])
def test_edited_training_config_is_refused(run_to_edit, change):
    out, run_dir = run_to_edit
    _edit(run_dir, change, recompute=False)
    before = digests(out)
    with pytest.raises(NnlabError, match="training_config.json: its configuration or data source was edited "
                                         f"after run {run_dir.name} started"):
        resume_training(run_dir.name, output_dir=out)
    assert digests(out) == before


def test_edited_scalers_json_is_refused_and_an_old_run_without_its_digest_resumes(run_to_edit):
    out, run_dir = run_to_edit
    saved = json.loads((run_dir / "training_config.json").read_text())
    assert len(saved["scalers_sha256"]) == 64
    scalers_path = run_dir / "scalers.json"
    original = scalers_path.read_text()
    scalers = json.loads(original)
    scalers["y_scaler"]["mean_"][0] += 1.0
    scalers_path.write_text(json.dumps(scalers, indent=2))
    before = digests(out)
    with pytest.raises(NnlabError, match=f"scalers.json: the scalers were edited after run {run_dir.name} started"):
        resume_training(run_dir.name, output_dir=out)
    assert digests(out) == before
    scalers_path.unlink()
    with pytest.raises(NnlabError, match="scalers.json: cannot be read"):
        resume_training(run_dir.name, output_dir=out)
    # A run of an older nnlab recorded no digest: not checked.
    scalers_path.write_text(original)
    _edit(run_dir, lambda s: s.pop("scalers_sha256"), recompute=False)
    assert resume_training(run_dir.name, output_dir=out, verbose=0)["status"] == "completed"


def test_edited_architecture_with_forged_digest_fails_the_checkpoint_check(run_to_edit):
    out, run_dir = run_to_edit
    _edit(run_dir, lambda s: s["config"].update(hidden_layers=[32]), recompute=True)
    before = digests(out)
    with pytest.warns(RuntimeWarning) as caught:
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            resume_training(run_dir.name, output_dir=out)
    expected = ("is unusable: weight 0 (dense_1/kernel) has shape (23, 16) in the checkpoint, the model built "
                "from the run's configuration expects (23, 32)")
    assert [str(w.message).split(" is unusable")[0] for w in caught] == ["checkpoint ckpt_0004", "checkpoint ckpt_0002"]
    assert all(expected in str(w.message) for w in caught)
    assert digests(out) == before


@pytest.mark.parametrize("change", [
    lambda s: s["data"].update(num_particles=300),
    lambda s: s["data"].update(seed=3),
    lambda s: s["data"].update(random_state=7),
], ids=["num_particles", "data_seed", "split"])
def test_changed_data_source_with_forged_digest_fails_the_data_check(run_to_edit, change):
    out, run_dir = run_to_edit
    _edit(run_dir, change, recompute=True)
    before = digests(out)
    with pytest.raises(NnlabError, match=f"the data rebuilt for run {run_dir.name} .* is not the data it was "
                                         "trained on"):
        resume_training(run_dir.name, output_dir=out)
    assert digests(out) == before


def test_changed_csv_is_refused(tmp_path):
    csv_path = tmp_path / "particles.csv"
    save_particle_data(generate_particle_data(200, seed=4), csv_path)
    data = prepare_csv(csv_path, random_state=42)
    out = tmp_path / "o"
    run_dir = interrupted_run(out, data=data, source={"csv_path": str(csv_path), "random_state": 42})
    assert json.loads((run_dir / "training_config.json").read_text())["data"]["csv_sha256"] == \
        hashlib.sha256(csv_path.read_bytes()).hexdigest()
    text = csv_path.read_text()
    csv_path.write_text(text.replace("\n", "\r\n", 1))  # same rows, different bytes
    before = digests(out)
    with pytest.raises(NnlabError, match=rf"run {run_dir.name} was trained on '{csv_path}' \(SHA-256 \w+\.\.\.\), "
                                         r"which has changed since"):
        resume_training(run_dir.name, output_dir=out)
    assert digests(out) == before
    csv_path.write_text(text)  # put back: resumed on the same data
    assert resume_training(run_dir.name, output_dir=out, verbose=0)["status"] == "completed"


# --- crafted and corrupt checkpoints ------------------------------------------------------------


def _forge(manifest: Path, arrays: dict[str, np.ndarray], *, allow_pickle: bool = False) -> None:
    """Replace a checkpoint's arrays and rewrite its manifest's digest and size to match."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=allow_pickle, **arrays)
    payload = buffer.getvalue()
    npz = manifest.with_suffix(".npz")
    npz.write_bytes(payload)
    meta = json.loads(manifest.read_text())
    meta.update(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    manifest.write_text(json.dumps(meta))


def _arrays(manifest: Path) -> dict[str, np.ndarray]:
    with np.load(manifest.with_suffix(".npz")) as npz:
        return {k: npz[k] for k in npz.files}


def test_object_array_checkpoint_falls_back_to_the_previous_one(run_to_edit):
    out, run_dir = run_to_edit
    latest = run_dir / "checkpoints" / "ckpt_0004.json"
    arrays = _arrays(latest)
    arrays["model/w0000"] = np.array([{"a": 1}], dtype=object)
    _forge(latest, arrays, allow_pickle=True)
    with pytest.warns(RuntimeWarning, match=r"ckpt_0004 is unusable: ckpt_0004.npz: not a checkpoint archive "
                                            r"\(ValueError: Object arrays cannot be loaded"):
        assert load_latest_checkpoint(run_dir).epoch == 2
    with pytest.warns(RuntimeWarning, match="ckpt_0004"):
        results = resume_training(run_dir.name, output_dir=out, verbose=0)
    assert results["status"] == "completed"
    assert epochs_of(run_dir) == ([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("key", ["model/w0000", "model/o0003", "best_weights/b0000", "constraints"])
def test_wrong_shape_checkpoint_falls_back_before_anything_is_cut(run_to_edit, key):
    out, run_dir = run_to_edit
    latest = run_dir / "checkpoints" / "ckpt_0004.json"
    arrays = _arrays(latest)
    if key == "constraints":
        key = next(k for k in arrays if k.startswith("constraints/") and not k.endswith("counter"))
    arrays[key] = np.zeros((3, 5), dtype=np.float32)  # (best weights not yet on disk: added)
    _forge(latest, arrays)
    with pytest.warns(RuntimeWarning, match=r"ckpt_0004 is unusable: .*(shape|fit)"):
        results = resume_training(run_dir.name, output_dir=out, verbose=0)
    assert results["performance_summary"]["resumed_from_epoch"] == 2
    assert epochs_of(run_dir) == ([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5])


def test_no_checkpoint_fits_changes_nothing(run_to_edit):
    out, run_dir = run_to_edit
    for manifest in sorted((run_dir / "checkpoints").glob("*.json")):
        arrays = _arrays(manifest)
        arrays["model/w0001"] = np.zeros(7, dtype=np.float32)
        _forge(manifest, arrays)
    (run_dir / "checkpoints" / "ckpt_0002.json").write_text(
        (run_dir / "checkpoints" / "ckpt_0002.json").read_text().replace('"ckpt_0002.npz"', '"../x.npz"'))
    before = digests(out)
    with pytest.warns(RuntimeWarning) as caught:
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            resume_training(run_dir.name, output_dir=out)
    messages = [str(w.message) for w in caught]
    assert any("ckpt_0004 is unusable: weight 1" in m for m in messages), messages
    assert any("ckpt_0002 is unusable: ckpt_0002.json: names '../x.npz'" in m for m in messages), messages
    assert digests(out) == before


# --- CSVs: one row per epoch, in order ------------------------------------------------------------


def test_half_written_and_repeated_rows_are_cut(run_to_edit):
    out, run_dir = run_to_edit
    results_csv = run_dir / "training_results.csv"
    lines = results_csv.read_text().splitlines(keepends=True)
    results_csv.write_text("".join(lines + [lines[2], lines[4][:5]]))  # epoch 2 again, then a torn row
    with (run_dir / "loss_history.csv").open("a") as fh:
        fh.write("4,0.1")  # torn
    resume_training(run_dir.name, output_dir=out, verbose=0)
    assert epochs_of(run_dir) == ([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5])


def test_resume_seed_stays_in_range(tmp_path):
    run_dir = interrupted_run(tmp_path, {"seed": 2**32 - 1})
    results = resume_training(run_dir.name, output_dir=tmp_path, verbose=0)
    assert results["status"] == "completed"
