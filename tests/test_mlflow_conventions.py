"""MLflow as ``mlflow.start_run()`` behaves: the environment's store and experiment for a bare ``--mlflow``,
artifacts beside the store (never in the working directory), physics and format metrics, a preset tag,
the data set as a dataset input, one store per output directory, ``analyze`` in the run's own MLflow run.

A real run (subprocess, as a user types it) read back with ``mlflow.MlflowClient``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nnlab.config import Config, check_tracking_uri
from nnlab.errors import ConfigError
from nnlab.integrations import artifact_location, experiment_name, mlflow_option
from nnlab.integrations import mlflow as nnlab_mlflow
from nnlab.integrations.mlflow import RUN_RECORD, run_record
from nnlab.orchestration import resolve_mlflow
import _forked

REPO = Path(__file__).resolve().parents[1]
_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def env_run(tmp_path_factory):
    """A bare ``--mlflow`` with MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME set, run from an empty cwd:
    (cwd, store dir, output dir, run dir)."""
    root = tmp_path_factory.mktemp("env_run")
    cwd, store, out = root / "cwd", root / "store", root / "o"
    cwd.mkdir(), store.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'shared.db'}")
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "lab-wide")
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = _forked.run([sys.executable, str(REPO / "main.py"), "--num-particles", "200", "--epochs", "2",
                            "--seed", "3", "--set", "hidden_layers=[8]", "--set", "jit_compile=false",
                            "--output-dir", str(out), "--quiet", "--mlflow"],
                           cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return cwd, store, out, next((out / "runs").iterdir())


def _client_run(run_dir: Path):
    record = run_record(run_dir)
    client = MlflowClient(record["tracking_uri"])
    return client, client.get_run(record["run_id"])


def test_bare_mlflow_uses_the_environment_store_and_experiment(env_run):
    cwd, store, out, run_dir = env_run
    assert run_record(run_dir)["tracking_uri"] == f"sqlite:///{store / 'shared.db'}"
    assert not (out / "mlflow.db").exists()
    client, run = _client_run(run_dir)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "lab-wide"
    # Artifacts beside the store; nothing at all in the working directory (no ./mlruns).
    assert experiment.artifact_location == (store / "mlartifacts").as_uri()
    assert list(cwd.iterdir()) == []
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"test_metrics.json", "training_config.json", RUN_RECORD} <= listed
    assert run.info.artifact_uri.startswith((store / "mlartifacts").as_uri() + "/")


def test_run_has_physics_and_format_metrics_preset_tag_and_dataset_input(env_run):
    _, _, _, run_dir = env_run
    _, run = _client_run(run_dir)
    test = json.loads((run_dir / "test_metrics.json").read_text())
    metrics = run.data.metrics
    assert metrics["test_physics_energy_violation"] == pytest.approx(test["physics"]["energy_violation"])
    assert metrics["test_physics_true_data_speed_violation"] == pytest.approx(
        test["physics"]["true_data"]["speed_violation"])
    for fmt in ("bfloat16", "float16", "int8", "int4"):
        assert metrics[f"test_format_{fmt}_r2"] == pytest.approx(test["formats"][fmt]["r2"])
    assert run.data.tags["nnlab.preset"] == "default"
    sha = json.loads((run_dir / "training_config.json").read_text())["data"]["arrays_sha256"]
    [entry] = run.inputs.dataset_inputs
    assert entry.dataset.name == "particles-200-seed3" and entry.dataset.digest == sha[:16]
    assert json.loads(entry.dataset.source)["tags"]["num_particles"] == "200"
    assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": "training", "nnlab.sha256": sha}


def test_analysis_is_logged_into_the_runs_own_mlflow_run(env_run, tmp_path, capsys):
    from nnlab.analysis.cli import _log_to_mlflow

    _, _, _, run_dir = env_run
    client, run = _client_run(run_dir)
    before = client.search_runs([run.info.experiment_id])
    folder = tmp_path / "run-analysis-2"
    folder.mkdir()
    (folder / "report.html").write_text("<html></html>")
    (folder / "summary.json").write_text("{}")
    _log_to_mlflow(run_dir, [], print, folder=folder)
    assert "2 file(s) logged to run" in capsys.readouterr().out
    assert len(client.search_runs([run.info.experiment_id])) == len(before)  # no new run
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "analysis/run-analysis-2")) == [
        "analysis/run-analysis-2/report.html", "analysis/run-analysis-2/summary.json"]


def test_the_james_stein_study_of_an_analysis_makes_no_mlflow_runs():
    from nnlab.analysis.james_stein import _study_base

    cfg = Config.from_flat({"mlflow_tracking_uri": "sqlite:///o/mlflow.db"})
    assert _study_base(cfg, 3).training.mlflow_tracking_uri is None


def test_store_and_experiment_resolution(tmp_path, monkeypatch):
    default = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert mlflow_option("", tmp_path) == default and experiment_name("nnlab") == "nnlab"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lab-wide")
    assert mlflow_option("", tmp_path) == "http://mlflow.example:5000"
    assert mlflow_option("http://other:1", tmp_path) == "http://other:1"  # an explicit URI wins
    assert experiment_name("nnlab") == "lab-wide" and experiment_name("mine") == "mine"
    target = resolve_mlflow("", tmp_path, [{"mlflow_experiment": "nnlab"}])
    assert (target.uri, target.experiment) == ("http://mlflow.example:5000", "lab-wide")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    with pytest.raises(ConfigError, match=r"--mlflow \(from the environment's MLFLOW_TRACKING_URI\): 'mlruns'"):
        mlflow_option("", tmp_path)


def test_a_study_logs_to_its_output_directorys_store(tmp_path):
    from nnlab.study._plan import mlflow_home

    assert mlflow_home(tmp_path / "training_output" / "studies" / "bits") == tmp_path / "training_output"
    assert mlflow_home(tmp_path / "mine") == tmp_path / "mine"
    target = resolve_mlflow("", mlflow_home(tmp_path / "studies" / "bits"), [{}])
    assert target.uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"


def test_artifacts_never_default_to_the_working_directory(tmp_path):
    assert artifact_location(f"sqlite:///{tmp_path}/m.db") == (tmp_path / "mlartifacts").as_uri()
    assert artifact_location("postgresql://u@db/mlflow", tmp_path / "o" / "mlartifacts") == \
        (tmp_path / "o" / "mlartifacts").as_uri()
    assert artifact_location("http://mlflow.example:5000", tmp_path) is None  # the server's own root


def test_file_store_is_refused_unless_mlflow_allows_it(monkeypatch):
    with pytest.raises(ValueError, match=r"'file:///tmp/mlruns' is not an MLflow tracking URI: MLflow's file store "
                                         r"is in maintenance mode .* use sqlite:///DIR/mlflow.db"):
        check_tracking_uri("file:///tmp/mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert check_tracking_uri("file:///tmp/mlruns") == "file:///tmp/mlruns"


def test_test_metrics_leave_out_what_is_not_a_number():
    report = {"scaled": {"r2": 0.5}, "physics": {"speed_violation": 0.2, "not_applicable": {}},
              "formats": {"int8": {"r2": 0.4, "r2_drop": 0.1, "quantizer": "keras", "bits": 8}}}
    assert nnlab_mlflow.test_metrics(report) == {"test_r2": 0.5, "test_physics_speed_violation": 0.2,
                                    "test_format_int8_r2": 0.4, "test_format_int8_r2_drop": 0.1}
