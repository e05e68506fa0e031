"""Studies (nnlab.study): cells, parsing, and real studies on a real Optuna journal.

The studies train for real with TensorFlow on tiny data (300 particles, 2
epochs, hidden layers [16, 8]); the command line runs in subprocesses.
"""

from __future__ import annotations

import csv
import doctest
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

from nnlab.errors import ConfigError
from nnlab.study import (
    RUN_COLUMNS,
    Cell,
    StudySpec,
    compare_cells,
    parse_variant,
    precision_cells,
)
import _forked

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "ml_config")
TINY_BASE = {"epochs": 2, "num_particles_default": 300, "hidden_layers": [16, 8], "batch_size": 32,
             "jit_compile": False}  # XLA compilation costs more than 2 epochs on 300 particles
TINY_ARGS = ("--epochs", "2", "--num-particles", "300", "--set", "hidden_layers=[16,8]", "--set", "batch_size=32",
             "--set", "jit_compile=false", "--config-dir", CONFIG_DIR)
PRECISION_KEYS = ["schedule", "rounding", "bits", "policy"]
OFF = ("enable_weight_oscillation_dampener", "use_adaptive_oscillation_dampener", "enable_binary_change_max",
       "enable_james_stein")


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return env


def nnlab(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return _forked.run([sys.executable, "-m", "nnlab", *args], capture_output=True, text=True, cwd=cwd,
                       env=_env(), timeout=timeout)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def training_config(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "training_config.json").read_text())


def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr  # one message (its lines past 120 columns continue, indented)
    message = flat(proc.stderr[proc.stderr.index("error:"):])
    for fragment in fragments:
        assert shows(message, fragment), (fragment, proc.stderr)


# --- cells and parsing -------------------------------------------------------------------


def test_precision_cells_differ_only_in_the_binary_constraint():
    cells = precision_cells(bits="24,8,4,8", rounding="truncate,stochastic", schedule="step",
                            policies="float32,mixed_bfloat16")
    labels = [(c.key["policy"], c.key["rounding"], c.key["bits"]) for c in cells]
    assert labels == [("float32", "none", 24), ("float32", "truncate", 8), ("float32", "truncate", 4),
                      ("float32", "stochastic", 8), ("float32", "stochastic", 4),
                      ("mixed_bfloat16", "none", 24), ("mixed_bfloat16", "truncate", 8),
                      ("mixed_bfloat16", "truncate", 4), ("mixed_bfloat16", "stochastic", 8),
                      ("mixed_bfloat16", "stochastic", 4)]  # 24 bits: only the reference; 8 once
    for cell in cells:
        assert list(cell.key) == PRECISION_KEYS and cell.key["schedule"] == "step"
        o = cell.overrides
        assert all(o[k] is False for k in OFF)
        assert o["constraint_schedule"] == "step" and o["precision_policy"] == cell.key["policy"]
        if cell.key["rounding"] == "none":
            assert o["enable_binary_precision_max"] is False and o["max_binary_digits"] == 24
        else:
            assert o["enable_binary_precision_max"] is True
            assert (o["max_binary_digits"], o["binary_rounding"]) == (cell.key["bits"], cell.key["rounding"])
    spec = StudySpec.precision(bits=[4], rounding=["nearest"], policies=["mixed_float16", "float32"], seeds=3)
    assert spec.reference == {"schedule": "step", "rounding": "none", "bits": 24, "policy": "float32"}
    assert [(c.key["rounding"], s) for c, s in spec.units][:4] == [("none", 0), ("nearest", 0), ("none", 0),
                                                                   ("nearest", 0)]  # seed by seed
    assert len(spec.units) == 12 and spec.seeds == (0, 1, 2)
    only = StudySpec.precision(bits=[4], rounding="truncate", policies="mixed_bfloat16", seeds=1)
    assert only.reference["policy"] == "mixed_bfloat16"


def test_variants_parse_and_validate():
    assert parse_variant("js=enable_james_stein=true 'hidden_layers=[16, 8]' activation=relu") == (
        "js", {"enable_james_stein": True, "hidden_layers": [16, 8], "activation": "relu"})
    assert parse_variant("plain=") == ("plain", {})
    cells = compare_cells(["plain=", "fast=learning_rate=0.01"])
    assert [c.key for c in cells] == [{"variant": "plain"}, {"variant": "fast"}]
    assert cells[1].overrides == {"learning_rate": 0.01}
    assert compare_cells({"a": {}, "b": "epochs=3"})[1].overrides == {"epochs": 3}
    spec = StudySpec.compare({"a": {}, "b": {"epochs": 3}}, seeds=[5, 7])
    assert spec.reference == {"variant": "a"} and spec.keys == ("variant",) and spec.seeds == (5, 7)


@pytest.mark.parametrize("make, fragment", [
    (lambda: precision_cells(bits="4,25"), "--bits: 25 is outside 1..24"),
    (lambda: precision_cells(bits="4,x"), "--bits: 'x' is not an integer"),
    (lambda: precision_cells(bits=[True]), "--bits: True is outside 1..24"),
    (lambda: precision_cells(rounding="round"), "--rounding: unknown rounding 'round'; choose from truncate, "
                                                "nearest, stochastic"),
    (lambda: precision_cells(rounding="none"), "--rounding: unknown rounding 'none'"),
    (lambda: precision_cells(schedule="batch"), "--schedule: unknown schedule 'batch'; choose from epoch, step"),
    (lambda: precision_cells(policies="float64"), "--policy: unknown policy 'float64'"),
    (lambda: StudySpec.precision(seeds=0), "--seeds must be an integer >= 1"),
    (lambda: StudySpec.compare({"a": {}, "b": {}}, seeds=[1, 1]), "repeats a seed"),
    (lambda: compare_cells(["a=", "a=epochs=2"]), "variant name 'a' is given twice"),
    (lambda: compare_cells(["a="]), "needs at least two variants, got 1"),
    (lambda: compare_cells(["=epochs=2", "b="]), "--variant: empty variant name"),
    (lambda: compare_cells(["a=", "b=epochs"]), "--variant b: expected KEY=VALUE items"),
    (lambda: compare_cells(["a=", "b"]), "--variant expects NAME="),
    (lambda: compare_cells(["a=", "b=lerning_rate=0.1"]), "--variant b: unknown key 'lerning_rate'; did you mean "
                                                          "'learning_rate'?"),
    (lambda: compare_cells(["a=", "b=seed=3"]), "--variant b: 'seed' is set by the study"),
    (lambda: StudySpec("hpo", (Cell({"variant": "a"}),)), "study kind must be one of precision, compare"),
    (lambda: StudySpec("compare", (Cell({"variant": "a"}), Cell({"variant": "a"}))), "appears twice"),
])
def test_bad_cells_and_specs_are_config_errors(make, fragment):
    with pytest.raises(ConfigError) as info:
        make()
    assert fragment in str(info.value)


def test_doctests():
    import nnlab.study._cells as cells

    assert doctest.testmod(cells).failed == 0


def test_bad_base_is_refused_before_anything_is_written(tmp_path):
    from nnlab.study import run_study

    for base, fragment in [({"max_binary_digits": 4}, "--set max_binary_digits: a precision study sets it in every "
                                                      "cell (use --bits)"),
                           ({"seed": 3}, "--set seed: the study sets 'seed'"),
                           ({"learning_rate": -1}, "learning_rate = -1 is invalid")]:
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            run_study(StudySpec.precision(bits=[4], rounding="truncate", seeds=1, base=base),
                      output_dir=tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match="--workers must be an integer >= 1"):
        run_study(StudySpec.compare(["a=", "b="], seeds=1), output_dir=tmp_path / "s", workers=0)
    assert not (tmp_path / "s").exists()


# --- a precision study, end to end (in process) ----------------------------------------------


@pytest.fixture(scope="module")
def precision_study(tmp_path_factory):
    from nnlab.study import run_study

    directory = tmp_path_factory.mktemp("precision") / "study"
    spec = StudySpec.precision(bits=[4], rounding="truncate,stochastic", seeds=2, base=TINY_BASE,
                               config_dir=CONFIG_DIR)
    return run_study(spec, output_dir=directory, progress=False), spec


def test_precision_study_runs_table(precision_study):
    result = precision_study[0]
    path = result.study_dir / "precision_runs.csv"
    assert result.paths["runs"] == path
    assert header(path) == [*PRECISION_KEYS, *RUN_COLUMNS]
    assert list(RUN_COLUMNS) == ["seed", "run_id", "run_dir", "status", "test_r2", "best_val_mse", "epoch_time_mean",
                                 "format_r2_bfloat16", "format_r2_float16", "format_r2_float8_e4m3",
                                 "format_r2_float8_e5m2", "format_r2_int8", "format_r2_int4"]
    table = rows(path)
    assert [(r["rounding"], r["bits"], r["seed"]) for r in table] == [
        ("none", "24", "0"), ("none", "24", "1"), ("truncate", "4", "0"), ("truncate", "4", "1"),
        ("stochastic", "4", "0"), ("stochastic", "4", "1")]
    assert {r["status"] for r in table} == {"completed"} and result.complete
    assert len({r["run_id"] for r in table}) == 6
    for r in table:
        assert -10 < float(r["test_r2"]) <= 1 and float(r["best_val_mse"]) > 0 and float(r["epoch_time_mean"]) > 0
        assert Path(r["run_dir"]).parent == result.study_dir / "runs"
    assert list(result.runs.columns) == [*PRECISION_KEYS, *RUN_COLUMNS] and len(result.runs) == 6
    log = rows(result.study_dir / "configuration_log.csv")  # each run is a normal run of the study directory
    assert sorted(r["run_id"] for r in log) == sorted(r["run_id"] for r in table)
    assert {r["status"] for r in log} == {"completed"}


def test_precision_runs_are_paired_by_seed(precision_study):
    result = precision_study[0]
    record = json.loads((result.study_dir / "study_spec.json").read_text())
    data_sha = hashlib.sha256((result.study_dir / "particles.csv").read_bytes()).hexdigest()
    assert record["spec"]["data_sha256"] == data_sha
    arrays = {}
    for r in rows(result.paths["runs"]):
        saved = training_config(r["run_dir"])
        cfg, seed = saved["config"], int(r["seed"])
        assert cfg["seed"] == seed and saved["data"]["random_state"] == seed
        assert saved["data"]["csv_sha256"] == data_sha  # one data file for the whole study
        arrays.setdefault(seed, set()).add(saved["data"]["arrays_sha256"])
        assert all(cfg[k] is False for k in OFF) and cfg["constraint_schedule"] == "step"
        assert cfg["enable_binary_precision_max"] is (r["rounding"] != "none")
        if r["rounding"] != "none":
            assert (cfg["max_binary_digits"], cfg["binary_rounding"]) == (4, r["rounding"])
    # Every cell of a seed trained on the same split; the seeds' splits differ.
    assert all(len(shas) == 1 for shas in arrays.values()) and arrays[0] != arrays[1]


def test_precision_study_summary(precision_study):
    result, spec = precision_study
    if result.summary is None:
        pytest.fail("the summary writer (nnlab.study._summary) did not run")
    assert result.summary["reference"] == spec.reference
    for name in ("study_csv", "summary"):
        assert result.paths[name].is_file(), name


def test_rerun_does_nothing_and_other_settings_are_refused(precision_study):
    from nnlab.study import run_study

    result, spec = precision_study
    before = digests(result.study_dir)
    again = run_study(spec, output_dir=result.study_dir, progress=False)
    assert list(again.runs["run_id"]) == list(result.runs["run_id"])  # nothing redone
    assert len(list((result.study_dir / "runs").iterdir())) == 6
    after_rerun = digests(result.study_dir)

    proc = nnlab("study", "precision", "--bits", "4,3", "--rounding", "truncate,stochastic", "--seeds", "2",
                 *TINY_ARGS, "--output-dir", str(result.study_dir), cwd=result.study_dir.parent)
    assert_one_line_error(proc, "study 'nnlab-study-precision'", "was created with other settings",
                          "with schedule=step rounding=truncate bits=3 policy=float32")
    proc = nnlab("study", "precision", "--bits", "4", "--rounding", "truncate,stochastic", "--seeds", "1",
                 *TINY_ARGS, "--output-dir", str(result.study_dir), cwd=result.study_dir.parent)
    assert_one_line_error(proc, "seeds 0..1 (now 0; --seeds may only grow)")
    proc = nnlab("study", "precision", "--bits", "4", "--rounding", "truncate,stochastic", "--seeds", "2",
                 *TINY_ARGS, "--study-name", "other", "--output-dir", str(result.study_dir),
                 cwd=result.study_dir.parent)
    assert_one_line_error(proc, "holds study 'nnlab-study-precision'", "this command runs study 'other'")
    assert digests(result.study_dir) == after_rerun
    changed = {k for k in before if before[k] != after_rerun.get(k)}
    # The rerun rewrote the outputs (same content but for the summary's timestamps, if any) and nothing else.
    assert changed <= {"precision_runs.csv", "precision_study.csv", "precision_summary.json", "precision_study.png",
                       "study_spec.json", "study_journal.log"}


def test_compare_on_existing_data_with_a_config_base_on_sqlite(precision_study, tmp_path):
    # What a caller of the API does: its own particle CSV, a Config, named variants; the runs come back.
    from nnlab.config import load_config
    from nnlab.study import run_study

    result, _ = precision_study
    data = result.study_dir / "particles.csv"
    base = load_config(CONFIG_DIR, overrides={**TINY_BASE, "epochs": 1})
    spec = StudySpec.compare({"plain": {}, "js": {"enable_james_stein": True}}, seeds=1, base=base)
    compared = run_study(spec, output_dir=tmp_path / "js", data=data, storage=f"sqlite:///{tmp_path}/js.db",
                         progress=False)
    assert compared.complete and list(compared.runs["variant"]) == ["plain", "js"]
    assert not (tmp_path / "js" / "particles.csv").exists()  # the given file is used as found
    for _, r in compared.runs.iterrows():
        saved = training_config(r["run_dir"])
        assert saved["data"]["csv_path"] == str(data.resolve()) and saved["config"]["epochs"] == 1
        assert saved["config"]["enable_james_stein"] is (r["variant"] == "js")
        assert (Path(r["run_dir"]) / "training_results.csv").is_file()  # per-epoch curves for the caller
    assert len({training_config(d)["data"]["arrays_sha256"] for d in compared.runs["run_dir"]}) == 1

    # More seeds extend the study: only the new seed's runs are trained.
    spec = StudySpec.compare({"plain": {}, "js": {"enable_james_stein": True}}, seeds=2, base=base)
    extended = run_study(spec, output_dir=tmp_path / "js", data=data, storage=f"sqlite:///{tmp_path}/js.db",
                         progress=False)
    assert extended.complete and len(extended.runs) == 4
    assert set(compared.runs["run_id"]) < set(extended.runs["run_id"])
    assert sorted(extended.runs.loc[~extended.runs["run_id"].isin(compared.runs["run_id"]), "seed"]) == [1, 1]


def test_a_unit_claimed_twice_goes_to_the_first_claim(tmp_path):
    # Machines sharing a database claim under separate locks; two can take one unit at the same moment.
    import optuna

    from nnlab.orchestration import StorageSpec, open_storage
    from nnlab.study._worker import _held_elsewhere

    storage = open_storage(StorageSpec("journal", str(tmp_path / "j.log")))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    first, second = study.ask(), study.ask()
    for trial in (second, first):  # the second claim records its unit first: still the first claim wins
        trial.set_user_attr("cell", "c")
        trial.set_user_attr("seed", 0)
    assert _held_elsewhere(study, first) is None and _held_elsewhere(study, second) == first.number


def test_failed_units_are_retried_by_the_next_command_only(tmp_path):
    import types

    import optuna

    from nnlab.orchestration import StorageSpec, open_storage
    from nnlab.study._worker import _next_unit

    study = optuna.create_study(storage=open_storage(StorageSpec("journal", str(tmp_path / "j.log"))),
                                study_name="s", direction="maximize")
    for cell, outcome in (("a", "completed"), ("b", "failed")):
        trial = study.ask()
        trial.set_user_attr("cell", cell)
        trial.set_user_attr("seed", 0)
        trial.set_user_attr("outcome", outcome)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    trials = study.get_trials()
    plan = types.SimpleNamespace(seeds=(0,), cells=({"id": "a"}, {"id": "b"}), n_existing=2)
    assert _next_unit(plan)(trials) == {"cell": "b", "seed": 0}  # failed before this command: again
    assert _next_unit(types.SimpleNamespace(**{**vars(plan), "n_existing": 0}))(trials) is None


# --- compare: killed mid-way, resumed with two workers, extended ------------------------------


def test_killed_compare_study_resumes_with_two_workers(tmp_path):
    args = [sys.executable, "-m", "nnlab", "study", "compare", "--variant", "relu=activation=relu",
            "--variant", "tanh=activation=tanh", "--seeds", "2", *TINY_ARGS, "--output-dir", "s"]
    runs = tmp_path / "s" / "compare_runs.csv"
    with open(tmp_path / "first.log", "w") as log:
        proc = _forked.Popen(args, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not (runs.exists() and any(r["status"] == "completed" for r in rows(runs))):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no finished run in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = {(r["variant"], r["seed"]): r["run_id"] for r in rows(runs) if r["status"] == "completed"}
    assert 1 <= len(first) <= 3

    again = _forked.run([*args, "--workers", "2"], capture_output=True, text=True, cwd=tmp_path, env=_env(),
                        timeout=240)
    assert again.returncode == 0, again.stderr
    assert "cells × 2 seeds = 4 runs" in again.stdout and "; 2 workers;" in again.stdout
    table = rows(runs)
    assert [(r["variant"], r["seed"]) for r in table] == [("relu", "0"), ("relu", "1"), ("tanh", "0"), ("tanh", "1")]
    assert {r["status"] for r in table} == {"completed"}
    now = {(r["variant"], r["seed"]): r["run_id"] for r in table}
    assert all(now[unit] == run for unit, run in first.items())  # finished runs kept, not redone
    log = rows(tmp_path / "s" / "configuration_log.csv")
    completed = [r for r in log if r["status"] == "completed"]
    assert len(completed) == 4 and {r["run_id"] for r in completed} == {r["run_id"] for r in table}  # none twice
    assert len(log) - len(completed) <= 1  # at most the run the kill cut short
    for r in table:
        assert training_config(r["run_dir"])["config"]["activation"] == r["variant"]
    progress = [line for line in again.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 4 - len(first) and all("test R² " in line for line in progress)
    assert progress[-1].startswith("[4/4] variant=")

    import optuna

    from nnlab.orchestration import open_storage, storage_spec

    study = optuna.load_study(study_name="nnlab-study-compare",
                              storage=open_storage(storage_spec(str(tmp_path / "s" / "study_journal.log"), tmp_path)))
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


# --- the command line: bad inputs --------------------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (["precision", "--seeds", "0"], ["--seeds must be an integer >= 1", "got 0"]),
    (["precision", "--rounding", "round"], ["--rounding: unknown rounding 'round'; choose from truncate, nearest, "
                                            "stochastic"]),
    (["precision", "--bits", "4,30"], ["--bits: 30 is outside 1..24"]),
    (["precision", "--bits", "four"], ["--bits: 'four' is not an integer"]),
    (["compare", "--variant", "a=", "--variant", "a=epochs=3"], ["variant name 'a' is given twice"]),
    (["compare", "--variant", "=epochs=3", "--variant", "b="], ["--variant: empty variant name"]),
    (["compare", "--variant", "a", "--variant", "b="], ["--variant expects NAME=\"KEY=VALUE ...\"", "got 'a'"]),
    (["compare", "--variant", "a=", "--variant", "b=epochs"], ["--variant b: expected KEY=VALUE items", "'epochs'"]),
    (["compare", "--variant", "a=", "--variant", "b=lerning_rate=0.1"],
     ["--variant b: unknown key 'lerning_rate'; did you mean 'learning_rate'?"]),
    (["compare", "--variant", "a="], ["a comparison needs at least two variants, got 1"]),
    (["compare", "--variant", "a=", "--variant", "b=", "--data", "p.csv", "--num-particles", "10"],
     ["--num-particles sets how many particles"]),
])
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, args, fragments):
    proc = nnlab("study", *args, "--output-dir", "s", cwd=tmp_path, timeout=60)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "s").exists()
