"""Searches on a real PostgreSQL server: independent worker processes, one budget, no password written.

The server is the session fixture of tests/conftest.py (the machine's PostgreSQL
binaries in a temporary directory); each test gets its own database.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
import _forked

REPO = Path(__file__).resolve().parents[1]
SPACE = {"hidden_layers": [[16], [32, 16]], "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}
TINY = ["--epochs", "2", "--num-particles", "200", "--batch-size", "32", "--presets", "fast_debug",
        "--set", "jit_compile=false", "--set", "tensorboard=false"]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    env.pop("NNLAB_CONFIG_DIR", None)
    return env


def hpo(cwd: Path, *args: str, **env: str) -> subprocess.Popen:
    return _forked.Popen([sys.executable, str(REPO / "hpo_agent.py"), *TINY, "--space", "space.json", *args],
                         cwd=cwd, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def every_file_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


def test_two_independent_processes_share_one_budget(tmp_path, postgres_db, postgres_server):
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    # Two shells, as on two machines: own output directories, one study by name on one database.
    procs = [hpo(tmp_path, "--storage", postgres_db, "--study-name", "shared", "--max-trials", "4",
                 "--output-dir", f"machine{i}") for i in (1, 2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        # The password is never shown, written or recorded (the URL is masked everywhere).
        assert postgres_server.password not in out + err
    for machine in ("machine1", "machine2"):
        assert postgres_server.password not in every_file_text(tmp_path / machine)
    study = optuna.load_study(study_name="shared", storage=postgres_db)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE or t.state == TrialState.PRUNED
                or (t.state == TrialState.FAIL and "outcome" in t.user_attrs)]
    assert len(finished) == 4 and len({t.number for t in finished}) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # Both machines end with the same results, read from the shared storage.
    first, second = (tmp_path / m / "analysis" / "hpo_results.csv" for m in ("machine1", "machine2"))
    assert first.read_bytes() == second.read_bytes()
    assert sorted(int(r["trial_number"]) for r in rows(first)) == sorted(t.number for t in finished)
    assert {r["run_id"] for r in rows(first)} == {t.user_attrs["run_id"] for t in finished}
    assert "***" in json.loads((tmp_path / "machine1" / "analysis" / "hpo_study.json").read_text())["storage"]
    # A third machine that ran nothing rebuilds the same results from the storage alone.
    export = _forked.run([sys.executable, str(REPO / "hpo_agent.py"), "--export", "exported", "--storage",
                          postgres_db, "--study-name", "shared"], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "exported" / "hpo_results.csv").read_bytes() == first.read_bytes()
    assert json.loads((tmp_path / "exported" / "best_config.json").read_text()) == json.loads(
        (tmp_path / "machine1" / "analysis" / "best_config.json").read_text())
    assert postgres_server.password not in every_file_text(tmp_path / "exported") + export.stdout + export.stderr


def test_password_from_the_environment(tmp_path, postgres_db, postgres_server):
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    url = postgres_db.replace(f":{postgres_server.password}@", "@")
    assert postgres_server.password not in url
    proc = hpo(tmp_path, "--storage", url, "--max-trials", "1", "--output-dir", "out",
               PGPASSWORD=postgres_server.password)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert len(rows(tmp_path / "out" / "analysis" / "hpo_results.csv")) == 1
    # Without it: a clear error naming the storage (password-less), exit 2, no traceback.
    proc = hpo(tmp_path, "--storage", url, "--max-trials", "2", "--output-dir", "out2", PGPASSWORD="wrong")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err
    assert f"error: --storage: cannot open '{url}'" in err and "password authentication failed" in err


def _running_on(url: str, study_name: str, host: str) -> list:
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
    except KeyError:
        return []  # not created yet
    return [t for t in study.get_trials(states=(TrialState.RUNNING,))  # sampled: training
            if (t.user_attrs.get("worker") or {}).get("host") == host and t.params]


def test_killed_worker_trial_failed_by_heartbeat_and_retried(tmp_path, postgres_db):
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    common = ["--storage", postgres_db, "--study-name", "ft", "--max-trials", "3", "--heartbeat", "1",
              "--grace-period", "4", "--retries", "1"]
    # Two "machines": host names differ, so only the heartbeat can tell that a worker died.
    doomed = hpo(tmp_path, *common, "--output-dir", "a", NNLAB_WORKER_HOST="machine-a")
    deadline = time.monotonic() + 120
    while not _running_on(postgres_db, "ft", "machine-a"):
        assert doomed.poll() is None and time.monotonic() < deadline, doomed.communicate()
        time.sleep(0.2)
    survivor = hpo(tmp_path, *common, "--output-dir", "b", NNLAB_WORKER_HOST="machine-b")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    study = optuna.load_study(study_name="ft", storage=postgres_db)
    # Failed by the survivor once its heartbeat stopped (no outcome: not counted, not listed).
    killed = [t for t in study.trials if t.state == TrialState.FAIL and "outcome" not in t.user_attrs]
    assert len(killed) == 1 and killed[0].user_attrs["worker"]["host"] == "machine-a"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed[0].params  # the same trial, run again
    finished = [t for t in study.trials if "outcome" in t.user_attrs and t.state.is_finished()]
    assert len(finished) == 3  # the budget, exactly
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(rows(tmp_path / "b" / "analysis" / "hpo_results.csv")) == 3


def _finished(url: str, name: str) -> list:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return []
    return [t for t in study.trials if t.state.is_finished() and "outcome" in t.user_attrs]


def _stop_database_after_first_unit(proc: subprocess.Popen, db: str, study_name: str, server) -> None:
    """Stop the server once the command finished a unit; it must end with one message, exit 1, no password."""
    deadline = time.monotonic() + 120
    while not _finished(db, study_name):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    server.stop()
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        server.start()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and server.password not in out + err
    assert "lost the connection to the storage postgresql+psycopg://postgres:***@127.0.0.1" in err
    assert "Rerun the same command when the database is back" in err, err


def test_database_stopped_mid_search_then_rerun(tmp_path, postgres_db, postgres_server):
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    args = ["--storage", postgres_db, "--max-trials", "3", "--output-dir", "out"]
    _stop_database_after_first_unit(hpo(tmp_path, *args), postgres_db, "nnlab-hpo", postgres_server)
    # Back up: the same command completes the study, no trial twice.
    again = hpo(tmp_path, *args)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    finished = _finished(postgres_db, "nnlab-hpo")
    assert len(finished) == 3 and len({t.number for t in finished}) == 3
    assert len({t.user_attrs["run_id"] for t in finished}) == 3
    assert len(rows(tmp_path / "out" / "analysis" / "hpo_results.csv")) == 3


STUDY_TINY = ["--epochs", "2", "--num-particles", "200", "--set", "hidden_layers=[8]", "--set", "batch_size=32",
              "--set", "jit_compile=false", "--set", "tensorboard=false", "--config-dir", str(REPO / "ml_config")]


def study(cwd: Path, *args: str) -> subprocess.Popen:
    return _forked.Popen([sys.executable, "-m", "nnlab", "study", "compare", "--variant", "relu=activation=relu",
                          "--variant", "tanh=activation=tanh", *STUDY_TINY, *args],
                         cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_database_stopped_mid_study_then_rerun(tmp_path, postgres_db, postgres_server):
    # The study worker handles a lost database as the search's does: retried, then one message and exit 1.
    args = ["--seeds", "2", "--storage", postgres_db, "--output-dir", "s"]
    _stop_database_after_first_unit(study(tmp_path, *args), postgres_db, "nnlab-study-compare", postgres_server)
    # Back up: the same command finishes the study, every unit once.
    again = study(tmp_path, *args)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    done = [t for t in _finished(postgres_db, "nnlab-study-compare") if t.user_attrs["outcome"] == "completed"]
    units = sorted((t.user_attrs["cell"], t.user_attrs["seed"]) for t in done)
    assert len(units) == 4 and len(set(units)) == 4
    table = rows(tmp_path / "s" / "compare_runs.csv")
    assert {r["status"] for r in table} == {"completed"} and len({r["run_id"] for r in table}) == 4
    assert not optuna.load_study(study_name="nnlab-study-compare", storage=postgres_db).get_trials(
        states=(TrialState.RUNNING,))


def test_study_runs_on_postgres(tmp_path, postgres_db, postgres_server):
    from nnlab.config import load_config
    from nnlab.study import StudySpec, run_study

    base = load_config(str(REPO / "ml_config"), overrides={
        "epochs": 1, "num_particles_default": 200, "hidden_layers": [8], "batch_size": 32, "jit_compile": False,
        "tensorboard": False})
    spec = StudySpec.compare({"plain": {}, "js": {"enable_james_stein": True}}, seeds=1, base=base)
    result = run_study(spec, output_dir=tmp_path / "s", storage=postgres_db, progress=False)
    assert result.complete and sorted(result.runs["variant"]) == ["js", "plain"]
    assert postgres_server.password not in every_file_text(tmp_path / "s")
    again = run_study(spec, output_dir=tmp_path / "s", storage=postgres_db, progress=False)  # nothing redone
    assert list(again.runs["run_id"]) == list(result.runs["run_id"])
