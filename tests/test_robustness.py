"""Nothing lost, nothing overwritten, no traceback: shared logs, killed writes, full disks,
memory, tiny data splits, spreadsheet formulas in CSV logs."""

from __future__ import annotations

import csv
import errno
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines
from conftest import mounted_tmpfs

from nnlab import _files
from nnlab._files import (
    atomic_write_text,
    clean_orphan_temp_files,
    neutralise_csv_value,
    read_csv_rows,
    upsert_csv_row,
    write_csv_rows,
    writer_tag,
)
from nnlab._memory import check_memory, check_network_fits, network_parameters
from nnlab.config import Config
from nnlab.data import complete_data_pipeline
from nnlab.errors import ConfigError
from nnlab.model import AdvancedNeuralNetwork, regression_metrics
from nnlab.tracking import CSVRowWriter, ErrorRecorder
from nnlab.runs import CONFIG_LOG_NAME, format_summary, load_latest_checkpoint, train_with_tracking
import _forked

REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden_layers": [16], "epochs": 2, "batch_size": 64, "checkpoint_every": 1, "jit_compile": False,
        "seed": 5}


@pytest.fixture(scope="module")
def data():
    return complete_data_pipeline(num_particles=300, seed=4)


def train(data, output_dir, arrays=None, preset=None, **overrides):
    config = {**TINY, **overrides}
    model = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], config)
    arrays = tuple(data) if arrays is None else arrays
    return train_with_tracking(model, *arrays, config, data=data, output_dir=output_dir, verbose=0, preset=preset)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- 1. a symlinked configuration log stays a link --------------------------------------


def test_atomic_write_through_a_symlink_updates_the_target(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "log.csv").write_text("old\n")
    link = tmp_path / "out" / "log.csv"
    link.parent.mkdir()
    link.symlink_to(shared / "log.csv")
    atomic_write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(shared / "log.csv")
    assert (shared / "log.csv").read_text() == "new\n"
    # No temporary file left beside the link or the target.
    assert sorted(p.name for p in link.parent.iterdir()) == ["log.csv"]
    assert sorted(p.name for p in shared.iterdir()) == ["log.csv"]


def test_symlinked_configuration_log_survives_a_run_and_orphans_are_cleaned(data, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    upsert_csv_row(shared / "log.csv", {"run_id": "from-another-lab", "status": "completed"}, key="run_id")
    out = tmp_path / "training_output"
    out.mkdir()
    (out / CONFIG_LOG_NAME).symlink_to(shared / "log.csv")
    # Orphans of a killed process: an atomic_write temp file in the output dir and one beside the
    # shared log's target; a live writer's temp file and an ordinary hidden file are left alone.
    dead = _dead_pid()
    host = writer_tag().rsplit("-p", 1)[0]
    orphan = out / f".{CONFIG_LOG_NAME}.{host}-p{dead}.abcd1234.tmp"
    orphan_shared = shared / f".log.csv.{host}-p{dead}.efgh5678.tmp"
    alive = out / f".{CONFIG_LOG_NAME}.{writer_tag()}.ijkl9012.tmp"
    keep = out / ".notes.tmp"
    for path in (orphan, orphan_shared, alive, keep):
        path.write_text("partial")

    results = train(data, out)

    assert results["status"] == "completed"
    log = out / CONFIG_LOG_NAME
    assert log.is_symlink() and Path(os.path.realpath(log)) == shared / "log.csv"
    rows = list(csv.DictReader(open(shared / "log.csv", newline="")))
    assert [r["run_id"] for r in rows] == ["from-another-lab", results["run_id"]]
    assert rows[1]["status"] == "completed"
    assert not orphan.exists() and not orphan_shared.exists()
    assert alive.exists() and keep.exists()
    # The lock of a shared log is taken at its target, so every link to it shares one lock.
    assert (shared / "log.csv.lock").exists()


# --- 2. orphan temporary files of killed writes ------------------------------------------


def test_a_killed_atomic_write_leaves_an_orphan_that_the_next_run_removes(tmp_path):
    script = (
        "import os, signal, sys\n"
        "from nnlab._files import atomic_write\n"
        "def write(fh):\n"
        "    fh.write('half a row'); fh.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    target = tmp_path / "results.csv"
    target.write_text("intact\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
    assert proc.wait(timeout=120) == -9
    orphans = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and f"-p{proc.pid}." in orphans[0].name
    assert target.read_text() == "intact\n"
    assert clean_orphan_temp_files(tmp_path) == orphans
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_orphan_cleanup_removes_only_dead_writers_files(tmp_path):
    host = writer_tag().rsplit("-p", 1)[0]
    dead = _dead_pid()
    files = {
        "dead_atomic": f".training_results.csv.{host}-p{dead}.a1b2c3d4.tmp",
        "dead_weights": f".tmp-{host}-p{dead}-epoch_0010.weights.h5",
        "old_style_dead_weights": f".tmp-{dead}-final.weights.h5",
        "own": f".loss_history.csv.{writer_tag()}.zzzz0000.tmp",
        "live_parent": f".tmp-{host}-p{os.getppid()}-best.weights.h5",
        "other_host_fresh": f".x.csv.otherhost-p{dead}.q1w2e3r4.tmp",
        "other_host_stale": f".y.csv.otherhost-p{dead}.t5y6u7i8.tmp",
        "no_owner_fresh": ".z.csv.abcd1234.tmp",
        "no_owner_stale": ".w.csv.efgh5678.tmp",
        "pid_reused": f".v.csv.{host}-p{os.getppid()}.jjjj1111.tmp",
        "artifact": "epoch_0010.weights.h5",
    }
    for name in files.values():
        (tmp_path / name).write_text("x")
    long_ago = time.time() - 3 * 24 * 3600
    for key in ("other_host_stale", "no_owner_stale"):
        os.utime(tmp_path / files[key], (long_ago, long_ago))
    # A live process that started after the file was last written cannot be its writer.
    os.utime(tmp_path / files["pid_reused"], (0, 0))

    removed = {p.name for p in clean_orphan_temp_files(tmp_path)}

    assert removed == {files[k] for k in ("dead_atomic", "dead_weights", "old_style_dead_weights",
                                          "other_host_stale", "no_owner_stale", "pid_reused")}
    assert clean_orphan_temp_files(tmp_path / "missing") == []


def test_temporary_names_carry_the_writer(tmp_path):
    seen = []
    _files.atomic_write(tmp_path / "a.json", lambda fh: seen.extend(os.listdir(tmp_path)) or fh.write("{}"))
    assert len(seen) == 1 and seen[0].startswith(f".a.json.{writer_tag()}.") and seen[0].endswith(".tmp")


# --- 3. a full disk ends the run cleanly ------------------------------------------------------


def test_disk_full_in_any_writer_stops_the_run(data, tmp_path, monkeypatch):
    import nnlab.tracking

    real_append = nnlab.tracking._append_whole
    calls = {"results": 0}

    def fill_up(path, payload):
        if Path(path).name == "training_results.csv":
            calls["results"] += 1
            if calls["results"] >= 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(path, payload)

    monkeypatch.setattr(nnlab.tracking, "_append_whole", fill_up)
    with pytest.warns(RuntimeWarning, match="disk full") as warned:
        results = train(data, tmp_path, epochs=6)
    run_dir = Path(results["run_dir"])

    assert results["status"] == "failed: disk full"
    assert results["training"]["epochs_run"] == 2  # stopped at the end of the epoch that hit the full disk
    assert results["test"] is None
    assert results["failure"].startswith(
        f"disk full: could not write training_results.csv in {run_dir} (No space left on device). "
        "Training stopped after epoch 2 of 6; what was written before is intact. Free space and resume with "
        f"`nnlab train --resume {results['run_id']} --output-dir {tmp_path}`.")
    assert sum("disk full" in str(w.message) for w in warned) == 1  # one warning, not one per write
    assert results["error_summary"]["disk_full"]["path"] == str(run_dir / "training_results.csv")
    rows = list(csv.DictReader(open(run_dir / "training_results.csv", newline="")))
    assert [r["epoch"] for r in rows] == ["1"]
    log = list(csv.DictReader(open(tmp_path / CONFIG_LOG_NAME, newline="")))
    assert log[-1]["status"] == "failed: disk full"
    assert "stopped              disk full: could not write training_results.csv" in format_summary(results)
    # What was written before the disk filled up is usable: the checkpoint of epoch 1 and 2 verify.
    assert load_latest_checkpoint(run_dir).epoch == 2


def test_disk_full_before_training_stops_after_the_first_batch(data, tmp_path, monkeypatch):
    import nnlab.runs._pipeline as pipeline

    real = pipeline.atomic_write_json

    def full(path, payload):
        if Path(path).name == "training_config.json":
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(path))
        return real(path, payload)

    monkeypatch.setattr(pipeline, "atomic_write_json", full)
    with pytest.warns(RuntimeWarning, match="disk full"):
        results = train(data, tmp_path, epochs=5)
    assert results["status"] == "failed: disk full"
    assert results["training"]["epochs_run"] == 1
    assert "could not write training_config.json" in results["failure"]
    assert "(Disk quota exceeded)" in results["failure"]


def test_csv_row_cut_off_by_a_full_disk_is_taken_back(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    writer = CSVRowWriter(path, ["epoch", "note"], errors=ErrorRecorder())
    assert writer.write({"epoch": 1, "note": "fine"})

    class HalfFile:
        """Writes half of what it is given, then the disk is full."""

        def __init__(self, fh):
            self.fh = fh

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def write(self, data):
            if len(data) > 4:
                return self.fh.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: HalfFile(real_open(*a, **k)) if "ab" in a else
                        real_open(*a, **k))
    with pytest.warns(RuntimeWarning, match="disk full"):
        assert not writer.write({"epoch": 2, "note": "a long row that does not fit on the disk any more"})
    monkeypatch.undo()
    assert path.read_bytes() == b"epoch,note\r\n1,fine\r\n"
    assert writer.errors.disk_full["path"] == str(path)


@pytest.fixture
def small_disk():
    with mounted_tmpfs("512k", "nnlab-full-disk-") as directory:
        yield directory


def test_main_py_on_a_real_full_disk(small_disk, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    # ~100 kB weight files and ~170 kB checkpoints: epoch 1 fits in 512 kB, epoch 2 does not.
    (cfg / "model_config.json").write_text('{"hidden_layers": [64, 64], "constraint_interval": 1}')
    (cfg / "training_config.json").write_text(
        '{"epochs": 6, "batch_size": 64, "checkpoint_every": 1, "jit_compile": false}')
    (cfg / "particle_generation_config.json").write_text('{"num_particles_default": 300}')
    out = small_disk / "o"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = _forked.run([sys.executable, str(REPO / "main.py"), "--config-dir", str(cfg), "--output-dir", str(out),
                        "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert proc.returncode == 1, proc.stderr
    for noise in ("Traceback", "HDF5-DIAG", "Exception ignored"):
        assert noise not in proc.stderr + proc.stdout, proc.stderr
    run_dir = next((out / "runs").iterdir())
    message = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(message) == 1  # one message; its lines past 120 columns continue, indented
    message = [flat(proc.stderr[proc.stderr.index("error: "):])]
    assert message[0].startswith("error: disk full: could not write ")
    assert f" in {run_dir} (No space left on device). Training stopped after epoch " in message[0]
    assert "what was written before is intact. Free space and resume with `nnlab train --resume " \
           f"{run_dir.name} --output-dir {out}`." in message[0]
    assert "run " + run_dir.name + ": failed: disk full" in proc.stdout
    # What was written before is intact: whole CSV rows, loadable weights, a verified checkpoint.
    results = pd.read_csv(run_dir / "training_results.csv")
    assert len(results) >= 1 and results["epoch"].tolist() == list(range(1, len(results) + 1))
    assert results.notna()["train_loss"].all()
    pd.read_csv(run_dir / "loss_history.csv")
    assert load_latest_checkpoint(run_dir).epoch >= 1
    net = AdvancedNeuralNetwork((23,), 6, Config.from_flat({"hidden_layers": [64, 64]}))
    net.model.load_weights(run_dir / "weights" / "epoch_0001.weights.h5")
    log = list(csv.DictReader(open(out / CONFIG_LOG_NAME, newline="")))
    assert log[0]["run_id"] == run_dir.name  # best effort: "failed: disk full" when the log had room
    assert log[0]["status"] in ("running", "failed: disk full")
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


def test_csv_writer_on_a_real_full_disk_keeps_whole_rows(small_disk):
    filler = small_disk / "filler"
    path = small_disk / "rows.csv"
    writer = CSVRowWriter(path, ["epoch", "payload"], errors=ErrorRecorder())
    with pytest.warns(RuntimeWarning, match="disk full"):
        epoch = 0
        while writer.write({"epoch": epoch, "payload": "x" * 3000}):
            epoch += 1
            if epoch == 10:
                # Leave less than one row of space: the next row is cut off by the disk.
                free = shutil.disk_usage(small_disk).free
                filler.write_bytes(b"\0" * max(0, free - 1500))
    rows = list(csv.DictReader(open(path, newline="")))
    assert [int(r["epoch"]) for r in rows] == list(range(epoch))
    assert all(r["payload"] == "x" * 3000 for r in rows)


# --- 4. memory ------------------------------------------------------------------------------


@pytest.mark.parametrize("flat", [
    {"hidden_layers": [16]},
    {"hidden_layers": [32, 8], "use_batch_norm": True, "activation": "prelu"},
    {"hidden_layers": [12, 12, 4], "activation": "tanh"},
])
def test_parameter_count_is_exact(flat):
    net = AdvancedNeuralNetwork((23,), 6, flat)
    m = net.config.model
    expected = network_parameters(23, m.hidden_layers, 6, use_batch_norm=m.use_batch_norm, activation=m.activation)
    assert expected == net.model.count_params()


def test_network_beyond_memory_is_refused_before_building():
    with pytest.raises(ConfigError) as info:
        AdvancedNeuralNetwork((23,), 6, {"hidden_layers": [200000, 200000]})
    message = str(info.value)
    assert message.startswith("hidden_layers = [200000, 200000] is too large for this machine: the network needs ~")
    assert "GiB (40,006,600,006 parameters: weights, Adam moments, gradients, constraint state) but ~" in message


def test_memory_estimates_and_messages():
    cfg = Config.from_flat({"hidden_layers": [1000, 1000], "optimizer": "sgd"})
    check_network_fits(cfg, available=2**40)
    with pytest.raises(ConfigError, match=r"needs ~0\.0 GiB \(1,033,006 parameters: weights, gradients, "
                                          r"constraint state\) but ~0\.0 GiB is available"):
        check_network_fits(cfg, available=1000)
    with pytest.raises(ConfigError, match=r"^--num-particles = 10000000000 is too large"):
        check_memory(Config.from_flat({}), num_particles=10**10, source="--num-particles")
    # The defaults (and the test sizes) are nowhere near the limit.
    check_memory(Config.from_flat({}), num_particles=Config.from_flat({}).generation.num_particles_default)


# --- 5. metrics of fewer than two rows are unavailable ------------------------------------


def test_regression_metrics_of_fewer_than_two_rows():
    one = regression_metrics(np.array([[1.0, 2.0]]), np.array([[1.5, 2.0]]))
    assert math.isnan(one["r2"]) and all(math.isnan(v) for v in one["r2_per_target"])
    assert one["mse"] == pytest.approx(0.125)  # an error of one row is still an error
    none = regression_metrics(np.zeros((0, 2)), np.zeros((0, 2)))
    assert all(math.isnan(none[k]) for k in ("mse", "mae", "rmse", "r2"))
    two = regression_metrics(np.array([[1.0], [3.0]]), np.array([[1.0], [3.0]]))
    assert two["r2"] == pytest.approx(1.0)


def test_tiny_validation_and_test_sets_report_r2_unavailable(data, tmp_path):
    arrays = (data.X_train, data.X_val[:1], data.X_test[:1], data.y_train, data.y_val[:1], data.y_test[:1])
    results = train(data, tmp_path, arrays=arrays)
    run_dir = Path(results["run_dir"])
    tracker = pd.read_csv(run_dir / "training_results.csv")
    assert tracker["r2_score"].isna().all()  # Keras says 0.0 for one row
    s = results["performance_summary"]
    assert s["current_r2"] is None and s["best_r2"] is None and s["test_r2"] is None

    def no_nan(token):
        raise AssertionError(f"{token} in test_metrics.json")

    metrics = json.loads((run_dir / "test_metrics.json").read_text(), parse_constant=no_nan)
    assert metrics["scaled"]["r2"] is None and metrics["n_samples"] == 1
    assert all(m["r2"] is None for m in metrics["per_target_scaled"].values())
    text = format_summary(results)
    assert "0.0000" not in text.split("test MSE")[0]
    assert "final val R²         n/a" in text and "the test set has 1: unavailable" in text
    log = list(csv.DictReader(open(tmp_path / CONFIG_LOG_NAME, newline="")))
    assert log[-1]["final_val_r2"] == "" and log[-1]["test_r2"] == ""


# --- 6. no spreadsheet formulas in CSV logs ------------------------------------------------

FORMULAS = ["=1+1", "-x", "+cmd|' /C calc'!A0", "-2+3+cmd", "@SUM(A1:A2)", "\t=x", "\r=x", "=HYPERLINK(\"http://x\")"]
NUMBERS = [-2, -0.5, "-0.5", "-1e-3", "+3", "-inf", 0, "12"]


def test_neutralise_csv_value():
    for text in FORMULAS:
        assert neutralise_csv_value(text) == "'" + text
        assert neutralise_csv_value("'" + text) == "'" + text  # never twice
    for value in NUMBERS:
        assert neutralise_csv_value(value) == value
    assert neutralise_csv_value(np.float32(-1.5)) == np.float32(-1.5)
    assert neutralise_csv_value(Path("=cmd|x/runs")) == "'=cmd|x/runs"


def test_csv_writers_neutralise_formulas_and_keep_numbers(tmp_path):
    rows = [{"name": f, "value": n} for f, n in zip(FORMULAS, NUMBERS)]
    write_csv_rows(tmp_path / "a.csv", rows, ["name", "value"])
    writer = CSVRowWriter(tmp_path / "b.csv", ["name", "value"])
    for row in rows:
        writer.write(row)
    for name in ("a.csv", "b.csv"):
        raw = list(csv.reader(open(tmp_path / name, newline="")))[1:]
        assert [r[0] for r in raw] == ["'" + f for f in FORMULAS]
        assert [r[1] for r in raw] == [str(n) for n in NUMBERS]
    # Upserts read the file back and rewrite it: no second quote, numbers as they were.
    log = tmp_path / "log.csv"
    for run in ("r1", "r2", "r1"):
        upsert_csv_row(log, {"run_id": run, "preset": "=evil()", "loss": "-0.5", "delta": -3}, key="run_id")
    raw = list(csv.reader(open(log, newline="")))
    assert raw[1:] == [["r1", "'=evil()", "-0.5", "-3"], ["r2", "'=evil()", "-0.5", "-3"]]
    assert read_csv_rows(log)[0]["preset"] == "=evil()"


def test_formulas_in_run_paths_and_presets_are_neutralised(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = '=HYPERLINK("http://evil.example","click")'
    results = train(data, "=cmd|x", preset=preset)
    assert results["status"] == "completed"
    raw = list(csv.DictReader(open(tmp_path / "=cmd|x" / CONFIG_LOG_NAME, newline="")))
    assert raw[0]["preset"] == "'" + preset
    assert raw[0]["run_dir"] == "'" + results["run_dir"]
    assert raw[0]["learning_rate"] == str(TINY.get("learning_rate", raw[0]["learning_rate"]))
    from nnlab.runs import config_log_row

    assert config_log_row("=cmd|x", results["run_id"])["run_dir"] == results["run_dir"]


# --- 7. the model knows nothing of runs ------------------------------------------------------


def test_model_does_not_import_training():
    import nnlab.model

    assert "nnlab.runs" not in inspect.getsource(nnlab.model)
    net = AdvancedNeuralNetwork((23,), 6, {"hidden_layers": [8], "reduce_lr_on_plateau": True,
                                           "early_stopping_patience": 3})
    states = net.standard_callback_states()
    assert states["reduce_lr"] == (net.reduce_lr, ("wait", "best", "cooldown_counter"))
    assert states["early_stopping"] == (net.early_stopping, ("wait", "best", "best_epoch"))


def test_data_generate_on_a_real_full_disk_leaves_nothing(small_disk, tmp_path):
    # ~2 MB of CSV for a 512 kB disk: the write fails; no traceback, no CSV without its sidecar.
    out = small_disk / "particles.csv"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = _forked.run([sys.executable, "-m", "nnlab.cli", "data", "generate", "--num-particles", "20000",
                        "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: No space left on device ({out})"]
    assert list(small_disk.iterdir()) == []
