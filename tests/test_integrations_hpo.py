"""MLflow parent and child runs of searches and studies, the analysis report in MLflow, Optuna dashboard storage.

Real searches and studies on tiny data (300 particles, 1-3 epochs, one hidden
layer of 8), run in-process through ``nnlab.cli.main``; a real MLflow store
(sqlite under the output directory, read back with ``MlflowClient``); the
search's journal read back with the storage API ``optuna-dashboard`` opens it with.
"""

from __future__ import annotations

import csv
import json
import math
import socket
import warnings
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from nnlab.cli import main
from nnlab.integrations.mlflow import RUN_RECORD, run_record

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "ml_config")
EPOCHS = 3
# jit_compile off: XLA compilation costs more than these epochs; TensorBoard off: not what is tested here.
TINY = ["--num-particles", "300", "--config-dir", CONFIG_DIR, "--set", "batch_size=32",
        "--set", "jit_compile=false", "--set", "tensorboard=false"]
# Learning rates from 1e-6 (no progress) to 3e-2: the median pruner may prune the slow ones.
SPACE = {"hidden_layers": [[8]], "learning_rate": {"low": 1e-6, "high": 3e-2, "log": True}}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def mlflow_runs(out: Path) -> tuple[MlflowClient, list]:
    """The client of the bare --mlflow store of ``out`` and every run of experiment nnlab in it."""
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("nnlab")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def parents_and_children(runs: list) -> tuple[list, list]:
    parents = [r for r in runs if r.data.tags.get("nnlab.parent") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def tree(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hpo(out: Path, space: Path, max_trials: int, *extra: str) -> int:
    return main(["hpo", "--max-trials", str(max_trials), "--epochs", str(EPOCHS), "--presets", "fast_debug",
                 "--pruner", "median", "--startup-trials", "2", "--space", str(space), "--output-dir", str(out),
                 *TINY, *extra])


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 3-trial search with a bare --mlflow, continued to 4 trials with it and to 5 without it.

    Returns the output directory and the MLflow runs after the first command and after the second.
    """
    root = tmp_path_factory.mktemp("hpo_mlflow")
    space = root / "space.json"
    space.write_text(json.dumps(SPACE))
    out = root / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _hpo(out, space, 3, "--mlflow") == 0
        first = mlflow_runs(out)[1]
        assert _hpo(out, space, 4, "--mlflow") == 0
        second = mlflow_runs(out)[1]
        assert _hpo(out, space, 5) == 0  # without --mlflow: the same study goes on, nothing more in MLflow
    assert not [str(w.message) for w in caught if "mlflow" in str(w.message).lower()]
    return out, first, second


def test_hpo_parent_run_with_a_child_per_trial(search):
    out, first, second = search
    table = {r["run_id"]: r for r in rows(out / "analysis" / "hpo_results.csv")}
    assert len(table) == 5
    parents, children = parents_and_children(first)
    assert len(parents) == 1 and len(children) == 3 and len(first) == 4
    parent = parents[0]
    assert parent.data.tags["nnlab.hpo"].startswith("nnlab-hpo@")
    assert parent.data.tags["nnlab.preset"] == "fast_debug"  # every run has a preset tag: the presets sampled
    assert parent.info.run_name == f"hpo: {parent.data.tags['nnlab.hpo']}"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["nnlab.trial"]) for c in children) == [0, 1, 2]

    # The rerun with --max-trials 4 reopened the same parent and added trial 3's child.
    parents2, children2 = parents_and_children(second)
    assert [p.info.run_id for p in parents2] == [parent.info.run_id]
    assert {c.data.tags["mlflow.parentRunId"] for c in children2} == {parent.info.run_id}
    assert sorted(int(c.data.tags["nnlab.trial"]) for c in children2) == [0, 1, 2, 3]

    # The third command had no --mlflow: its trial is in the study, not in MLflow.
    client, final = mlflow_runs(out)
    assert sorted(r.info.run_id for r in final) == sorted(r.info.run_id for r in second)

    for child in children2:
        row = table[child.data.tags["nnlab.run_id"]]  # each child is one trial's run
        assert row["trial_number"] == child.data.tags["nnlab.trial"]
        assert child.data.tags["nnlab.hpo_study"] == "nnlab-hpo" and child.data.tags["nnlab.preset"] == "fast_debug"
        assert child.info.status == "FINISHED"
        # Pruned trials are tagged so: nnlab.status is the run's own status.
        assert child.data.tags["nnlab.status"] == {"complete": "completed", "pruned": "pruned"}[row["state"]]
        history = client.get_metric_history(child.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(1, int(row["total_epochs"]) + 1))
        assert row["state"] == "pruned" or int(row["total_epochs"]) == EPOCHS
        assert (out / "runs" / row["run_id"] / RUN_RECORD).is_file()

    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["study_name"] == "nnlab-hpo" and parent.data.params["pruner"] == "median"
    assert parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"] == 4
    logged = [r for r in table.values() if r["state"] == "complete" and int(r["trial_number"]) < 4]
    best = max(logged, key=lambda r: float(r["best_r2"]))  # as the second command finished it
    assert parent.data.metrics["best_trial"] == int(best["trial_number"])
    assert parent.data.metrics["best_value"] == pytest.approx(float(best["best_r2"]))
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"hpo_results.csv", "best_config.json", "hpo_study.json"} <= artifacts
    # The tracking store is the runs' only: best_config.json retrains without it.
    assert json.loads((out / "analysis" / "best_config.json").read_text())["mlflow_tracking_uri"] is None


def test_optuna_dashboard_storage_has_the_trials_and_their_epochs(search):
    # optuna-dashboard opens a journal file as JournalStorage(JournalFileBackend(path)).
    out, _, _ = search
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "analysis" / "hpo_journal.log")))
    studies = storage.get_all_studies()
    assert [s.study_name for s in studies] == ["nnlab-hpo"]
    assert optuna.load_study(study_name="nnlab-hpo", storage=storage).metric_names == ["val_r2"]
    trials = storage.get_all_trials(studies[0]._study_id)
    table = {int(r["trial_number"]): r for r in rows(out / "analysis" / "hpo_results.csv")}
    assert sorted(t.number for t in trials) == sorted(table) == [0, 1, 2, 3, 4]
    for trial in trials:
        row = table[trial.number]
        assert trial.state == {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}[row["state"]]
        # One validation R² per epoch trained, reported to the pruner at steps 1, 2, ... (the epoch numbers)
        assert sorted(trial.intermediate_values) == list(range(1, int(row["total_epochs"]) + 1))
        assert all(math.isfinite(v) for v in trial.intermediate_values.values())
        assert trial.params["learning_rate"] == json.loads(row["overrides"])["learning_rate"]
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(float(row["best_r2"]))


def test_analyze_logs_its_report_to_the_runs_mlflow_run(search, tmp_path):
    out, _, _ = search
    run_dir = next(p for p in sorted((out / "runs").iterdir()) if (p / RUN_RECORD).exists())
    record = run_record(run_dir)
    skip = "dynamics,learning_rate,residuals,predictions,baselines,james_stein,recommendations,heatmap"
    client = MlflowClient(record["tracking_uri"])
    experiment = client.get_run(record["run_id"]).info.experiment_id
    before = len(client.search_runs([experiment]))
    assert main(["analyze", "--output-dir", str(out), "--run", run_dir.name, "--analysis-dir", str(tmp_path),
                 "--skip", skip, "--quiet"]) == 0
    # The analysis's own folder, logged under analysis/<folder>/ of the run's own MLflow run: no new run.
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    logged = {Path(a.path).name: a.file_size
              for a in client.list_artifacts(record["run_id"], f"analysis/{folder.name}")}
    assert logged == {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    assert "report.html" in logged and any(name.startswith("analysis_summary") for name in logged)
    assert len(client.search_runs([experiment])) == before


def test_analyze_with_mlflow_unreachable_warns_and_succeeds(search, tmp_path, monkeypatch, capsys):
    out, _, _ = search
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_dir = next(p for p in sorted((out / "runs").iterdir()) if not (p / RUN_RECORD).exists())  # trial 4's
    uri = f"http://127.0.0.1:{_free_port()}"
    (run_dir / RUN_RECORD).write_text(json.dumps({"tracking_uri": uri, "experiment_id": "1", "run_id": "abc"}))
    skip = "dynamics,learning_rate,residuals,predictions,baselines,james_stein,recommendations,heatmap"
    assert main(["analyze", "--output-dir", str(out), "--run", run_dir.name, "--analysis-dir", str(tmp_path),
                 "--skip", f"{skip},loss_and_constraints", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: MLflow: the analysis was not logged to run abc") == 1
    assert len(list(tmp_path.glob("*/report.html"))) == 1


def test_unreachable_mlflow_costs_a_search_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.warns(RuntimeWarning, match=r"mlflow \(hpo parent run\): MlflowException") as caught:
        assert main(["hpo", "--max-trials", "2", "--epochs", "1", "--presets", "fast_debug", "--space", str(space),
                     "--output-dir", str(tmp_path / "out"), *TINY, "--mlflow", uri]) == 0
    assert sum("mlflow" in str(w.message) for w in caught) == 1  # not one more per trial
    table = rows(tmp_path / "out" / "analysis" / "hpo_results.csv")
    assert [r["state"] for r in table] == ["complete", "complete"]
    assert not list((tmp_path / "out" / "runs").glob(f"*/{RUN_RECORD}"))


def test_study_parent_run_with_a_child_per_cell_and_seed(tmp_path):
    study = tmp_path / "study"
    argv = ["study", "compare", "--variant", "a=", "--variant", "b=learning_rate=0.01", "--seeds", "1",
            "--epochs", "2", "--set", "hidden_layers=[8]", "--output-dir", str(study), "--mlflow", *TINY]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
        assert main(argv) == 0  # nothing left to run: the same parent is reopened, its outputs logged again
    assert not [str(w.message) for w in caught if "mlflow" in str(w.message).lower()]
    client, runs = mlflow_runs(study)
    parents, children = parents_and_children(runs)
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    parent = parents[0]
    assert parent.data.tags["nnlab.study"].startswith("nnlab-study-compare@")
    assert parent.data.tags["nnlab.preset"] == "default"  # and its children's
    assert {c.data.tags["nnlab.preset"] for c in children} == {"default"}
    assert parent.info.status == "FINISHED" and parent.data.metrics["runs_finished"] == 2
    assert parent.data.params["study_kind"] == "compare"
    table = {r["run_id"]: r for r in rows(study / "compare_runs.csv")}
    assert len(table) == 2
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        row = table[child.data.tags["nnlab.run_id"]]
        assert child.data.tags["nnlab.cell.variant"] == row["variant"] and child.data.tags["nnlab.seed"] == "0"
        assert child.data.tags["nnlab.cell"] == f"variant={row['variant']}"
        assert child.data.tags["nnlab.study_name"] == "nnlab-study-compare"
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) == 2
    assert {c.data.tags["nnlab.cell.variant"] for c in children} == {"a", "b"}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    expected = {"compare_runs.csv", "compare_study.csv", "compare_summary.json", "study_spec.json"}
    expected |= {"compare_study.png"} if (study / "compare_study.png").exists() else set()
    assert artifacts == expected  # the particle data is not logged
    # The study's record has no MLflow in it: a rerun without --mlflow continues the same study.
    assert json.loads((study / "study_spec.json").read_text())["spec"]["base"]["mlflow_tracking_uri"] is None


@pytest.mark.parametrize("argv, shown", [
    (["hpo", "--mlflow", "foo://x"], "error: --mlflow: 'foo://x' is not an MLflow tracking URI: unknown scheme 'foo'"),
    (["hpo", "--mlflow", "sqlite:///no/such/dir/m.db"], "error: --mlflow: 'sqlite:///no/such/dir/m.db' is in"),
    (["study", "compare", "--variant", "a=", "--variant", "b=learning_rate=0.01", "--mlflow", "http://"],
     "error: --mlflow: 'http://' is not an MLflow tracking URI: it names no host"),
])
def test_bad_mlflow_uri_exits_2_before_anything_is_written(argv, shown, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main([*argv, "--output-dir", str(out), "--config-dir", CONFIG_DIR]) == 2
    err = capsys.readouterr().err
    assert shown in err and "Traceback" not in err
    assert tree(out) == ["keep.txt"]
