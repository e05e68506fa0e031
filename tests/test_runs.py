"""The typed run layer: DataSource records, RunStatus, and execute/resume returning a RunResult."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nnlab.config import resolve_config
from nnlab.errors import ConfigError, NnlabError
from nnlab.runs import DataSource, RunResult, RunSpec, RunStatus, execute, resume


# --- RunStatus ---------------------------------------------------------------------------

def test_run_status_is_its_recorded_string():
    assert RunStatus.DISK_FULL == "failed: disk full" and str(RunStatus.COMPLETED) == "completed"
    assert json.dumps({"status": RunStatus.PRUNED}) == '{"status": "pruned"}'
    assert f"{RunStatus.INTERRUPTED}" == "interrupted"
    assert RunStatus.parse("diverged") is RunStatus.DIVERGED and RunStatus.parse("nonsense") is None


def test_run_status_groups():
    assert {s for s in RunStatus if s.failed} == {RunStatus.FAILED, RunStatus.DISK_FULL}
    assert {s for s in RunStatus if s.resumable} == {RunStatus.INTERRUPTED, RunStatus.DISK_FULL}
    assert {s for s in RunStatus if s.finished} == {RunStatus.COMPLETED, RunStatus.DIVERGED}


def test_importing_the_run_layer_types_loads_no_tensorflow():
    code = ("import sys; from nnlab.runs import RunStatus, DataSource, RunSpec; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


# --- DataSource --------------------------------------------------------------------------

def test_simulated_source_round_trips_through_its_record():
    source = DataSource.simulated(300, seed=4, random_state=9, test_size=0.25, val_size=0.1)
    record = source.to_record()
    assert record == {"kind": "simulated", "num_particles": 300, "seed": 4, "csv_path": None,
                      "random_state": 9, "test_size": 0.25, "val_size": 0.1}
    assert DataSource.from_record(record) == source
    assert source.describe() == "simulated: 300 particles, seed 4"


def test_csv_source_records_path_and_digest(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n")
    source = DataSource.from_csv(path, random_state=1)
    assert source.kind == "csv" and source.csv_path == str(path.resolve())
    assert len(source.csv_sha256) == 64
    assert DataSource.from_record(source.to_record()) == source
    assert source.describe().startswith(f"csv {path.resolve()} (sha256 {source.csv_sha256[:12]}")


def test_source_for_config_follows_the_configuration():
    cfg = resolve_config({"random_seed": 11, "num_particles_default": 500, "test_size": 0.3})
    source = DataSource.for_config(cfg)
    assert (source.kind, source.num_particles, source.seed, source.random_state, source.test_size) == \
        ("simulated", 500, 11, 11, 0.3)
    assert DataSource.for_config(resolve_config({"random_seed": None})).random_state == 42


def test_from_record_defaults_the_split_from_the_configuration():
    cfg = resolve_config({"test_size": 0.3, "val_size": 0.15})
    source = DataSource.from_record({"num_particles": 200, "seed": 1}, cfg)
    assert (source.test_size, source.val_size, source.random_state) == (0.3, 0.15, 42)


@pytest.mark.parametrize("record, message", [
    ([1, 2], "must be an object, got list"),
    ({"num_particles": "many"}, "data.num_particles = \"many\" is invalid: expected int"),
    ({"num_particles": 10, "test_size": True}, "data.test_size = true is invalid: expected float"),
    ({"seed": 3}, "records neither a csv_path nor num_particles"),
    ({"num_particles": 10, "targets": "x"}, "data.targets = \"x\" is invalid: expected a list of column names"),
])
def test_bad_records_are_refused_with_the_key(record, message):
    with pytest.raises(ConfigError, match="training_config.json: data") as info:
        DataSource.from_record(record)
    assert message in str(info.value)


def test_prepare_reuses_the_last_split_and_rereads_an_edited_csv(tmp_path):
    source = DataSource.simulated(200, seed=3)
    assert source.prepare() is source.prepare()
    from nnlab.data import generate_particle_data, save_particle_data

    path = tmp_path / "p.csv"
    save_particle_data(generate_particle_data(150, seed=1), path)
    first = DataSource.from_csv(path).prepare()
    save_particle_data(generate_particle_data(180, seed=2), path)
    second = DataSource.from_csv(path).prepare()
    assert len(first.X_train) != len(second.X_train)


def test_check_unchanged_names_a_changed_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("x\n1\n")
    source = DataSource.from_csv(path)
    source.check_unchanged("run-1")
    path.write_text("x\n2\n")
    with pytest.raises(NnlabError, match="run run-1 was trained on .* which has changed since"):
        source.check_unchanged("run-1")
    path.unlink()
    with pytest.raises(NnlabError, match="no longer exists"):
        source.check_unchanged("run-1")


# --- execute / resume ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = resolve_config({"epochs": 2, "batch_size": 64, "hidden_layers": [8], "seed": 3, "tensorboard": False,
                          "jit_compile": False})
    source = DataSource.simulated(240, seed=5, random_state=5)
    return out, source, execute(RunSpec(cfg, source, output_dir=out, preset="unit"))


def test_execute_returns_a_typed_result(executed):
    out, _, result = executed
    assert isinstance(result, RunResult) and result.status is RunStatus.COMPLETED
    assert result.run_dir.parent == out / "runs" and result.run_dir.name == result.run_id
    assert result.failure is None and result.summary["total_epochs"] == 2
    assert result.test_scaled["r2"] == json.loads((result.run_dir / "test_metrics.json").read_text())["scaled"]["r2"]
    assert json.loads((result.run_dir / "run_status.json").read_text())["status"] == "completed"


def test_a_second_run_in_one_process_starts_after_the_first_networks_memory_is_freed(executed, tmp_path):
    """Searches and studies train many networks in one process: the previous network is collected
    before the next is built (execute() frees it then, not after each run, which a one-shot command
    would only pay for at its exit)."""
    import weakref

    import keras

    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append((weakref.ref(self.model), [ref() is None for ref, _ in seen]))

    cfg = resolve_config({"epochs": 1, "batch_size": 64, "hidden_layers": [8], "seed": 3, "tensorboard": False,
                          "jit_compile": False})
    for _ in range(2):
        result = execute(RunSpec(cfg, DataSource.simulated(240, seed=5), output_dir=tmp_path, callbacks=[Watch()]))
        assert result.status is RunStatus.COMPLETED
    assert [freed for _, freed in seen] == [[], [True]]


def test_execute_records_the_data_source(executed):
    _, source, result = executed
    saved = json.loads((result.run_dir / "training_config.json").read_text())
    assert {k: saved["data"][k] for k in source.to_record()} == source.to_record()
    assert saved["data"]["n_rows"] == 240 and len(saved["data"]["arrays_sha256"]) == 64
    assert DataSource.from_record(saved["data"]) == source
    assert saved["preset"] == "unit"


def test_resume_of_a_completed_run_is_refused_before_anything_is_written(executed):
    out, _, result = executed
    before = sorted(p.stat().st_mtime_ns for p in result.run_dir.rglob("*") if p.is_file())
    with pytest.raises(NnlabError, match=f"run {result.run_id} completed all 2 epochs"):
        resume(result.run_id, output_dir=out)
    assert sorted(p.stat().st_mtime_ns for p in result.run_dir.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("policy, expected", [
    ("mixed_float16", "training diverged (the loss became NaN/inf): float16 overflows past 65504 under "
                      "precision_policy mixed_float16; train with --set precision_policy=float32 (or mixed_bfloat16"),
    ("float32", "training diverged (the loss became NaN/inf); try a smaller learning_rate"),
    (None, "training diverged (the loss became NaN/inf); try a smaller learning_rate"),
])
def test_divergence_advice_fits_the_precision_policy(tmp_path, policy, expected):
    """The message `nnlab train` prints and a search or study records for a diverged run."""
    result = RunResult(run_id="r", run_dir=tmp_path, status=RunStatus.DIVERGED,
                       details={"status": "diverged", "precision_policy": policy})
    assert result.divergence_message.startswith(expected)


@pytest.mark.parametrize("name, message", [
    (b"o\xff", r"--output-dir: 'o\\xff' is not a UTF-8 path \(a run's files record it\)"),
    (b"n" * 300, r"--output-dir: 'n+… \(300 characters\)' has a name of 300 bytes .*at most 255"),
    (b"/".join([b"d" * 200] * 20), r"--output-dir: .* bytes long as a full path; a run's files need it under"),
], ids=["non_utf8", "long_name", "long_path"])
def test_an_output_dir_the_runs_files_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch,
                                                                                         name, message):
    import os

    from nnlab.runs import check_output_dir

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_output_dir(os.fsdecode(name), create=True)
    assert os.listdir(tmp_path) == []
