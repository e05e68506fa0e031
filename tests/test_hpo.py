"""Hyperparameter search (nnlab.hpo): space, study bookkeeping, and real searches through the CLI.

The searches use a real Optuna journal storage and real TensorFlow training on
tiny data (200 particles, 2-3 epochs, one small hidden layer).
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

import pytest

import optuna  # noqa: E402

from nnlab.config import ALL_KEYS, Config  # noqa: E402
from nnlab.errors import ConfigError  # noqa: E402
from nnlab.hpo import DEFAULT_SEARCH_SPACE, RESULT_COLUMNS, SearchSpace, load_search_space  # noqa: E402
from nnlab.hpo._results import ResultPaths, check_results_owner, write_results  # noqa: E402
from nnlab.orchestration import (  # noqa: E402
    claim_trial,
    counts_towards_budget,
    fail_interrupted_trials,
    open_storage,
    open_study,
    storage_spec,
    worker_identity,
)
from nnlab.hpo._worker import sampler_seed  # noqa: E402
import _forked

REPO = Path(__file__).resolve().parents[1]
TINY_SPACE = {"hidden_layers": [[16], [32, 16]], "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
              "activation": ["relu", "tanh"]}
# XLA compilation (jit_compile, on by default) costs more than 2 epochs on 200 particles; off here.
NO_XLA = ("--set", "jit_compile=false")
TINY = ("--epochs", "2", "--num-particles", "200", "--batch-size", "32", *NO_XLA)


def hpo(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return _forked.run([sys.executable, str(REPO / "hpo_agent.py"), *args], capture_output=True, text=True,
                       cwd=cwd, env=_env(), timeout=timeout)


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return env


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_space(directory: Path, space: dict, name: str = "space.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(space))
    return path


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


# --- search space --------------------------------------------------------------


def test_default_space_is_the_issue_space():
    space = load_search_space()
    assert space.to_dict() == DEFAULT_SEARCH_SPACE
    assert set(space.keys) == {
        "activation", "optimizer", "learning_rate", "dropout_rate", "use_batch_norm", "batch_norm_momentum",
        "l2_regularization", "constraint_interval", "enable_weight_oscillation_dampener",
        "use_adaptive_oscillation_dampener", "loss_weighting_strategy", "hidden_layers"}
    assert DEFAULT_SEARCH_SPACE["learning_rate"] == {"low": 3e-4, "high": 1e-3, "log": True}


def test_sampled_values_are_valid_config_values():
    space = load_search_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = space.sample(study.ask())
        assert set(values) == set(space.keys)
        assert values["hidden_layers"] in DEFAULT_SEARCH_SPACE["hidden_layers"]  # lists, decoded
        assert 3e-4 <= values["learning_rate"] <= 1e-3
        assert values["constraint_interval"] in (1, 2, 3, 5)
        Config.from_flat(values)  # validates


def test_integer_range_and_fixed_values():
    space = SearchSpace({"constraint_interval": {"low": 1, "high": 4}, "epochs": 3, "hidden_layers": [[8]]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    values = [space.sample(study.ask()) for _ in range(10)]
    assert all(isinstance(v["constraint_interval"], int) and 1 <= v["constraint_interval"] <= 4 for v in values)
    assert all(v["epochs"] == 3 and v["hidden_layers"] == [8] for v in values)


def test_unknown_space_key_names_the_closest(tmp_path):
    path = write_space(tmp_path, {"learing_rate": [0.001]})
    with pytest.raises(ConfigError, match=r"--space .*space.json: unknown key 'learing_rate'; did you mean "
                                          r"'learning_rate'\?"):
        load_search_space(path)


@pytest.mark.parametrize("spec, fragment", [
    ({"activation": ["relu", "sigmoid"]}, "activation = \"sigmoid\" is invalid"),
    ({"learning_rate": {"low": 1e-3, "high": 20}}, "learning_rate = 20 is invalid"),
    ({"dropout_rate": {"low": 0.2, "high": 0.1}}, "low must be <= high"),
    ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"constraint_interval": {"low": 1.5, "high": 3}}, "integer key needs integer bounds"),
    ({"activation": {"low": 1, "high": 2}}, "not a numeric key"),
    ({"hidden_layers": [64, 32]}, "hidden_layers = 64 is invalid"),
    ({"optimizer": []}, "list of choices is empty"),
    ({"dropout_rate": {"low": 0, "high": 0.1, "lo": 1}}, "a range is"),
    ({"num_particles_default": [100, 200]}, "changes the data"),
])
def test_bad_space_is_a_config_error_naming_the_key(spec, fragment):
    with pytest.raises(ConfigError) as info:
        SearchSpace(spec, source="--space s.json")
    assert "--space s.json" in str(info.value) and fragment in str(info.value)


def test_all_space_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        SearchSpace({"activation": ["sigmoid"], "dropout_rate": {"low": 0.5, "high": 0.1}})
    assert "activation" in str(info.value) and "dropout_rate" in str(info.value)


# --- storage, study, budget ------------------------------------------------------


def test_storage_spec(tmp_path):
    assert storage_spec(None, tmp_path).location == str(tmp_path / "analysis" / "hpo_journal.log")
    assert storage_spec("j.log", tmp_path).kind == "journal"
    assert storage_spec("sqlite:///x.db", tmp_path).kind == "rdb"
    spec = storage_spec("postgresql+psycopg2://me:secret@db/hpo", tmp_path)
    assert spec.kind == "rdb" and "secret" not in spec.label and "me:***@db" in spec.label
    with pytest.raises(ConfigError, match="unsupported database 'redis'"):
        storage_spec("redis://localhost", tmp_path)


def _journal_study(tmp_path: Path, settings: dict | None = None):
    storage = open_storage(storage_spec(None, tmp_path))
    return open_study(storage, "s", settings or {"epochs": 2}, label="test")


def test_study_with_other_settings_is_refused(tmp_path):
    _journal_study(tmp_path, {"epochs": 2, "seed": 1})
    assert _journal_study(tmp_path, {"epochs": 2, "seed": 1}).study_name == "s"  # same settings: continues
    with pytest.raises(ConfigError, match=r"created with epochs=2; this command has epochs=5"):
        _journal_study(tmp_path, {"epochs": 5, "seed": 1})


def _dead_owner() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: its pid names no process now
    return {**worker_identity(), "pid": proc.pid}


def test_interrupted_trials_are_failed_and_not_counted(tmp_path):
    study = _journal_study(tmp_path)
    owners = {"dead": _dead_owner(), "alive": worker_identity(),
              "remote": {"host": "another-machine", "pid": 1, "started": 0.0}}
    trials = {}
    for name, owner in owners.items():
        trials[name] = study.ask()
        trials[name].set_user_attr("worker", owner)
    failed = fail_interrupted_trials(study)
    assert [number for number, _ in failed] == [trials["dead"].number]
    states = {t.number: t for t in study.get_trials()}
    dead = states[trials["dead"].number]
    assert dead.state == optuna.trial.TrialState.FAIL and "interrupted" in dead.user_attrs["error"]
    assert not counts_towards_budget(dead)
    for name in ("alive", "remote"):
        assert states[trials[name].number].state == optuna.trial.TrialState.RUNNING


def test_budget_counts_running_and_finished_trials(tmp_path):
    study = _journal_study(tmp_path)
    lock = tmp_path / "analysis" / ".lock"
    me = worker_identity()
    first = claim_trial(study, budget=2, lock_path=lock, owner=me)
    second = claim_trial(study, budget=2, lock_path=lock, owner=me)
    assert claim_trial(study, budget=2, lock_path=lock, owner=me) is None  # two running fill the budget
    second.set_user_attr("outcome", "failed")
    study.tell(second, state=optuna.trial.TrialState.FAIL)
    assert claim_trial(study, budget=2, lock_path=lock, owner=me) is None  # failed by nnlab: counted
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # no outcome: interrupted
    assert claim_trial(study, budget=2, lock_path=lock, owner=me) is not None


def test_results_rebuilt_from_study_and_guarded(tmp_path):
    study = _journal_study(tmp_path)
    for number, value in enumerate([0.2, 0.5]):
        trial = study.ask()
        config = Config.from_flat({"learning_rate": 0.001 * (number + 1)}).to_flat()
        for key, attr in {"preset": "baseline", "overrides": {"learning_rate": 0.001}, "config": config,
                          "metrics": {"best_r2": value, "test_r2": value - 0.1, "total_epochs": 2},
                          "duration_s": 1.0, "run_id": f"r{number}", "outcome": "complete"}.items():
            trial.set_user_attr(key, attr)
        study.tell(trial, value)
    paths = ResultPaths(tmp_path / "analysis" / "hpo_results.csv")
    best = write_results(study, paths, storage_label="test")
    assert best.number == 1
    table = rows(paths.results)
    assert list(table[0]) == list(RESULT_COLUMNS) and [r["run_id"] for r in table] == ["r0", "r1"]
    assert json.loads(paths.best_config.read_text())["learning_rate"] == 0.002
    assert json.loads(paths.study_file.read_text())["best_trial"]["number"] == 1
    check_results_owner(paths, "s", "test")
    with pytest.raises(ConfigError, match="holds the results of study 's'"):
        check_results_owner(paths, "other", "test")


def test_sampler_seeds_differ_per_worker_and_continuation():
    seeds = {sampler_seed(42, w, n) for w in range(3) for n in (0, 4)}
    assert len(seeds) == 6 and sampler_seed(42, 1, 4) == sampler_seed(42, 1, 4)


# --- command line: errors before any training ------------------------------------


def test_cli_bad_space_exits_2(tmp_path):
    write_space(tmp_path, {"learing_rate": [0.001]})
    proc = hpo("--space", "space.json", "--output-dir", "out", cwd=tmp_path)
    assert_clean_error(proc, "unknown key 'learing_rate'", "did you mean 'learning_rate'")
    assert not (tmp_path / "out" / "runs").exists()


def test_cli_bad_preset_and_storage_exit_2(tmp_path):
    assert_clean_error(hpo("--presets", "baseline,nope", cwd=tmp_path), "unknown preset 'nope'", "fast_debug")
    assert_clean_error(hpo("--storage", "redis://x", cwd=tmp_path), "unsupported database 'redis'")
    proc = hpo("--max-trials", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "positive integer" in proc.stderr


def test_cli_show_space(tmp_path):
    proc = hpo("--show-space", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == DEFAULT_SEARCH_SPACE


# --- real searches -----------------------------------------------------------------


def test_tiny_study_results_and_best_config(tmp_path):
    write_space(tmp_path, TINY_SPACE)
    proc = hpo("--max-trials", "3", *TINY, "--space", "space.json", "--output-dir", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = rows(tmp_path / "out" / "analysis" / "hpo_results.csv")
    assert list(table[0]) == list(RESULT_COLUMNS)
    assert [r["trial_number"] for r in table] == ["0", "1", "2"]
    for row in table:
        assert row["state"] == "complete" and row["preset"] in ("baseline", "deep_regularized")
        assert set(json.loads(row["overrides"])) == set(TINY_SPACE)
        assert row["total_epochs"] == "2" and float(row["duration_s"]) > 0
        assert (tmp_path / "out" / "runs" / row["run_id"] / "training_results.csv").exists()
        assert -10 < float(row["best_r2"]) <= 1 and float(row["test_mse"]) >= 0
    # Every trial records its data source, so resume and the analysis rebuild it without inferring anything.
    sources = [json.loads((tmp_path / "out" / "runs" / r["run_id"] / "training_config.json").read_text())["data"]
               for r in table]
    for source in sources:
        assert source["kind"] == "simulated" and source["num_particles"] == 200 and source["n_rows"] == 200
        assert source["seed"] == source["random_state"]
    assert len({s["arrays_sha256"] for s in sources}) == 1  # every trial trains on the same split
    assert sum(line.startswith("trial ") for line in proc.stdout.splitlines()) == 3  # one progress line each
    best = max(table, key=lambda r: float(r["best_r2"]))
    assert f"best trial {best['trial_number']}" in proc.stdout

    best_config = json.loads((tmp_path / "out" / "analysis" / "best_config.json").read_text())
    assert set(best_config) <= set(ALL_KEYS)  # only configuration keys
    assert best_config["hidden_layers"] == json.loads(best["overrides"])["hidden_layers"]
    assert best_config["epochs"] == 2 and best_config["num_particles_default"] == 200
    study_info = json.loads((tmp_path / "out" / "analysis" / "hpo_study.json").read_text())
    assert study_info["best_trial"]["number"] == int(best["trial_number"])

    main = _forked.run([sys.executable, str(REPO / "main.py"), "--config", "out/analysis/best_config.json",
                        "--epochs", "1", "--output-dir", "retrain", "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert main.returncode == 0, main.stderr
    retrained = json.loads(next((tmp_path / "retrain" / "runs").iterdir()).joinpath("training_config.json")
                           .read_text())["config"]
    assert retrained["hidden_layers"] == best_config["hidden_layers"]
    assert retrained["learning_rate"] == best_config["learning_rate"]


def test_benchmarking_trains_exactly_the_presets(tmp_path):
    proc = hpo("--benchmarking", "--presets", "fast_debug,baseline", *TINY, "--set", "hidden_layers=[16]",
               "--output-dir", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = rows(tmp_path / "out" / "analysis" / "hpo_results.csv")
    assert sorted(r["preset"] for r in table) == ["baseline", "fast_debug"]
    assert all(r["overrides"] == "{}" and r["state"] == "complete" for r in table)
    log = rows(tmp_path / "out" / "configuration_log.csv")
    assert sorted(r["preset"] for r in log) == ["baseline", "fast_debug"]
    assert {r["activation"] for r in log} == {"relu"} and {r["loss_weighting_strategy"] for r in log} == {
        "combined", "r2_based"}  # the presets' own values


def test_killed_study_resumes_to_the_requested_total(tmp_path):
    write_space(tmp_path, TINY_SPACE)
    args = [sys.executable, str(REPO / "hpo_agent.py"), "--max-trials", "4", *TINY, "--space", "space.json",
            "--output-dir", "out"]
    results = tmp_path / "out" / "analysis" / "hpo_results.csv"
    with open(tmp_path / "first.log", "w") as log:
        proc = _forked.Popen(args, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not (results.exists() and len(rows(results)) >= 2):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no 2 finished trials in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = rows(results)
    assert len(before) in (2, 3)

    again = _forked.run(args, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=240)
    assert again.returncode == 0, again.stderr
    after = rows(results)
    numbers = [int(r["trial_number"]) for r in after]
    assert len(after) == 4 and len(set(numbers)) == 4 and numbers == sorted(numbers)
    assert all(r["state"] in ("complete", "pruned", "failed") for r in after)
    assert [r["run_id"] for r in after[: len(before)]] == [r["run_id"] for r in before]  # finished trials kept
    storage = open_storage(storage_spec(None, tmp_path / "out"))
    study = optuna.load_study(study_name="nnlab-hpo", storage=storage)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_ctrl_c_stops_cleanly_and_the_rerun_continues(tmp_path):
    write_space(tmp_path, TINY_SPACE)
    args = [sys.executable, str(REPO / "hpo_agent.py"), "--max-trials", "3", *TINY, "--space", "space.json",
            "--output-dir", "out"]
    results = tmp_path / "out" / "analysis" / "hpo_results.csv"
    proc = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not (results.exists() and rows(results)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(0.5)  # into the next trial
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err

    again = _forked.run(args, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=240)
    assert again.returncode == 0, again.stderr
    numbers = [int(r["trial_number"]) for r in rows(results)]
    assert len(numbers) == 3 and len(set(numbers)) == 3


def test_two_workers_share_the_default_journal(tmp_path):
    write_space(tmp_path, TINY_SPACE)
    proc = hpo("--max-trials", "3", "--workers", "2", *TINY, "--space", "space.json", "--output-dir", "out",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = rows(tmp_path / "out" / "analysis" / "hpo_results.csv")
    assert sorted(int(r["trial_number"]) for r in table) == [0, 1, 2]
    assert len({r["run_id"] for r in table}) == 3
    assert {line.split("]")[0] for line in proc.stdout.splitlines() if line.startswith("[worker")} == {
        "[worker 0", "[worker 1"}  # both worked
    assert (tmp_path / "out" / "analysis" / "hpo_journal.log").exists()


def test_median_pruner_prunes_clearly_worse_trials(tmp_path):
    # Learning rates from 1e-6 (no progress in 3 epochs) to 3e-2: the slow ones fall below the median.
    write_space(tmp_path, {"hidden_layers": [[16]], "learning_rate": {"low": 1e-6, "high": 3e-2, "log": True}})
    proc = hpo("--max-trials", "5", "--epochs", "3", "--num-particles", "200", "--presets", "fast_debug", *NO_XLA,
               "--pruner", "median", "--startup-trials", "2", "--space", "space.json", "--output-dir", "out",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = rows(tmp_path / "out" / "analysis" / "hpo_results.csv")
    assert len(table) == 5
    pruned = [r for r in table if r["state"] == "pruned"]
    assert pruned, table
    log = {r["run_id"]: r for r in rows(tmp_path / "out" / "configuration_log.csv")}
    assert all(log[r["run_id"]]["status"] == "pruned" for r in pruned)


def test_failing_trial_is_recorded_and_the_search_goes_on(tmp_path):
    # learning_rate 10 with plain SGD on MSE blows the loss up; seed 3 samples it first.
    write_space(tmp_path, {"hidden_layers": [[64, 64]], "optimizer": "sgd", "loss_weighting_strategy": "none",
                           "learning_rate": [10.0, 0.001]})
    proc = hpo("--max-trials", "3", "--seed", "3", *TINY, "--presets", "fast_debug", "--space", "space.json",
               "--output-dir", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = rows(tmp_path / "out" / "analysis" / "hpo_results.csv")
    assert len(table) == 3
    failed = [r for r in table if r["state"] == "failed"]
    assert failed and all(r["error"] and json.loads(r["overrides"])["learning_rate"] == 10.0 for r in failed)
    assert any(r["state"] == "complete" for r in table)
    assert "failed" in proc.stdout


def test_python_api_on_sqlite_storage(tmp_path):
    from nnlab.hpo import run_search

    summary = run_search(max_trials=2, epochs=1, num_particles=200, batch_size=32, presets=["fast_debug"],
                         space={"hidden_layers": [[8], [16]]}, storage=f"sqlite:///{tmp_path}/hpo.db",
                         overrides={"jit_compile": False}, output_dir=str(tmp_path / "out"), verbose=False)
    assert summary.counts == {"complete": 2, "pruned": 0, "failed": 0}
    assert summary.best_trial in (0, 1) and summary.best_overrides["hidden_layers"] in ([8], [16])
    assert len(rows(summary.results_path)) == 2 and (tmp_path / "hpo.db").exists()
