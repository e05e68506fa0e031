"""Studies that must not do what they cannot (issue 23): bounded sizes, one command per study directory,
workers that die with their command, a data file checked before each unit, a dead worker whose units the
others finished. Real studies on tiny data; faults are real signals and real file edits.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

from nnlab.errors import ConfigError, NnlabError
from nnlab.study import StudySpec, parse_variant
import _forked

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "ml_config")
TINY_BASE = {"epochs": 1, "num_particles_default": 200, "hidden_layers": [8], "batch_size": 32,
             "jit_compile": False, "tensorboard": False}
TINY_ARGS = ("--epochs", "1", "--num-particles", "200", "--set", "hidden_layers=[8]", "--set", "batch_size=32",
             "--set", "jit_compile=false", "--set", "tensorboard=false", "--config-dir", CONFIG_DIR)


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return env


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _wait(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the study ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.1)


def _workers(pid: int) -> list:
    """The command's worker processes: the children of its fork server (nnlab.orchestration._pool), or its
    own spawned children where there is none; never multiprocessing's resource tracker or the server."""
    import psutil

    found = []
    for child in psutil.Process(pid).children():
        try:
            command = " ".join(child.cmdline())
            if "multiprocessing.forkserver" in command:
                found += child.children()
            elif "resource_tracker" not in command:
                found.append(child)
        except psutil.NoSuchProcess:  # ended while listed
            continue
    return found


# --- sizes and messages: refused before anything is allocated or written ----------------------


def test_seeds_and_runs_are_bounded_before_anything_is_allocated():
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"--seeds 4294967295: a study runs at most 1000 seeds"):
        StudySpec.compare({"a": {}, "b": {}}, seeds=4294967295)
    with pytest.raises(ConfigError, match=r"seeds: more than 1000 seeds given"):
        StudySpec.compare({"a": {}, "b": {}}, seeds=range(10**12))
    with pytest.raises(ConfigError, match=r"--seeds 100 × 210 cells = 21000 runs; a study runs at most 10000"):
        StudySpec.precision(bits=list(range(1, 25)), policies="float32,mixed_bfloat16,mixed_float16", seeds=100)
    assert time.perf_counter() - started < 5
    assert len(StudySpec.compare({"a": {}, "b": {}}, seeds=1000).units) == 2000


def test_variant_errors_name_the_variant():
    with pytest.raises(ConfigError) as info:
        parse_variant("b=physics_loss_weight=NaN")
    assert str(info.value).startswith("--variant b: physics_loss_weight = NaN is invalid") and "--set" not in str(
        info.value)


# --- one command per study directory; workers die with their command ---------------------------


def _report_parent(path: str) -> None:
    """A worker's task: which process started it, and whether that process had TensorFlow loaded."""
    parent = os.getppid()
    maps = Path(f"/proc/{parent}/maps").read_text()
    Path(path).write_text(f"{parent} {'_pywrap_tensorflow' in maps or 'libtensorflow' in maps}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_are_forked_from_one_server_that_imported_tensorflow_once(tmp_path):
    """Each spawned worker would import TensorFlow again (5 s of CPU each): they are forked from one fork
    server that imported it before any of them started, never from the command itself."""
    from nnlab.orchestration import run_processes

    paths = [str(tmp_path / f"w{i}") for i in range(2)]
    assert run_processes(_report_parent, [(p,) for p in paths], name="nnlab-test") == []
    reports = [Path(p).read_text().split() for p in paths]
    assert reports[0][0] == reports[1][0] != str(os.getpid())  # one server, not this process
    assert reports[0][1] == reports[1][1] == "True"


def _report_variable(path: str, name: str) -> None:
    Path(path).write_text(os.environ.get(name, "<unset>"))


def test_workers_see_the_commands_environment_as_it_is_when_they_start(tmp_path, monkeypatch):
    """The fork server keeps the environment it started with; a worker still gets its command's current one
    (a notebook that sets PGPASSWORD between two studies)."""
    from nnlab.orchestration import run_processes

    monkeypatch.setenv("NNLAB_TEST_VALUE", "first")
    assert run_processes(_report_variable, [(str(tmp_path / "a"), "NNLAB_TEST_VALUE")], name="nnlab-test") == []
    monkeypatch.setenv("NNLAB_TEST_VALUE", "second")
    monkeypatch.setenv("NNLAB_TEST_OTHER", "new")
    assert run_processes(_report_variable, [(str(tmp_path / "b"), "NNLAB_TEST_VALUE"),
                                            (str(tmp_path / "c"), "NNLAB_TEST_OTHER")], name="nnlab-test") == []
    assert [(tmp_path / n).read_text() for n in "abc"] == ["first", "second", "new"]


def test_a_study_directory_holds_one_command_and_its_workers_die_with_it(tmp_path):
    """A running study's directory refuses a second command (the same study or another), and a
    SIGKILL of the study's main process stops its workers within seconds."""
    import psutil

    from nnlab.study import run_study

    args = [sys.executable, "-m", "nnlab", "study", "compare", "--variant", "a=", "--variant", "b=activation=tanh",
            "--seeds", "3", "--workers", "2", *TINY_ARGS, "--output-dir", "s"]
    study_dir = tmp_path / "s"
    with open(tmp_path / "first.log", "w") as log:
        proc = _forked.Popen(args, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: (study_dir / "study_spec.json").exists(), "study record", proc)
            same = StudySpec.compare({"a": {}, "b": {"activation": "tanh"}}, seeds=3, base=TINY_BASE,
                                     config_dir=CONFIG_DIR)
            with pytest.raises(ConfigError, match=r"--output-dir: '.*s' is in use: another nnlab study command is "
                                                  r"running study 'nnlab-study-compare' there; wait for it to end "
                                                  r"and rerun"):
                run_study(same, output_dir=study_dir, progress=False)
            with pytest.raises(ConfigError, match=r"holds study 'nnlab-study-compare'.*this command runs study "
                                                  r"'other'"):
                run_study(same, output_dir=study_dir, study_name="other", progress=False)

            _wait(lambda: len(_workers(proc.pid)) == 2 and (study_dir / "runs").is_dir()
                  and any((study_dir / "runs").iterdir()), "training worker", proc)
            workers = _workers(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            started = time.monotonic()
            gone, alive = psutil.wait_procs(workers, timeout=20)
            assert not alive, f"workers still running 20 s after their command was killed: {alive}"
            assert time.monotonic() - started < 20
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_another_study_is_refused_while_a_command_holds_the_directory(tmp_path):
    """Two different studies started into one empty directory at once: the one that holds the directory
    runs, the other is refused before it writes anything (here the holder is between its checks and its record)."""
    import fcntl

    from nnlab.study import run_study

    study_dir = tmp_path / "s"
    study_dir.mkdir()
    fd = os.open(study_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running `nnlab study` holds for its lifetime
        spec = StudySpec.compare({"a": {}, "b": {}}, seeds=1, base=TINY_BASE, config_dir=CONFIG_DIR)
        with pytest.raises(ConfigError, match=r"--output-dir: '.*s' is in use: another nnlab study command is "
                                              r"running a study there; wait for it to end, or choose another "
                                              r"--output-dir"):
            run_study(spec, output_dir=study_dir, study_name="other", progress=False)
    finally:
        os.close(fd)
    assert not any(study_dir.iterdir())  # nothing written


# --- the data file, checked before and after each unit -----------------------------------------


def test_data_replaced_mid_study_stops_it_and_is_never_trained_on(tmp_path):
    from nnlab.data import generate_particle_data, save_particle_data
    from nnlab.study import run_study

    original = generate_particle_data(200, seed=3)
    data = save_particle_data(original, tmp_path / "p.csv")
    other = generate_particle_data(200, seed=4)
    spec = StudySpec.compare({"a": {}, "b": {"activation": "tanh"}}, seeds=2, base=TINY_BASE, config_dir=CONFIG_DIR)

    def progress(line: str) -> None:
        if line.startswith("[1/4]"):
            save_particle_data(other, data)  # a valid particle file, but not the study's

    with pytest.raises(NnlabError) as info:
        run_study(spec, output_dir=tmp_path / "s", data=data, progress=progress)
    message = str(info.value)
    assert "changed since the study was created" in message and "nothing was trained on the changed file" in message
    assert "1 of 4 runs had finished before" in message and "Restore the file and rerun" in message
    table = _rows(tmp_path / "s" / "compare_runs.csv")
    assert [r["status"] for r in table].count("completed") == 1
    table.sort(key=lambda r: r["status"])  # the completed run first
    assert {r["status"] for r in table} == {"completed", "pending"}
    log = _rows(tmp_path / "s" / "configuration_log.csv")
    assert len(log) == 1  # no run started on the changed file

    # The file restored, the same command finishes the study; the run before the change is kept.
    save_particle_data(original, data)
    finished = run_study(spec, output_dir=tmp_path / "s", data=data, progress=False)
    assert finished.complete and table[0]["run_id"] in set(finished.runs["run_id"])
    assert len(_rows(tmp_path / "s" / "configuration_log.csv")) == 4


# --- a worker killed: the others finish its units ------------------------------------------------


def test_a_killed_worker_whose_units_the_others_ran_is_a_warning(tmp_path):
    args = [sys.executable, "-m", "nnlab", "study", "compare", "--variant", "a=", "--variant", "b=activation=tanh",
            "--seeds", "2", "--workers", "2", *TINY_ARGS, "--output-dir", "s"]
    study_dir = tmp_path / "s"
    proc = _forked.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        _wait(lambda: len(_workers(proc.pid)) == 2 and (study_dir / "runs").is_dir()
              and any((study_dir / "runs").iterdir()), "training worker", proc)
        victim = sorted(_workers(proc.pid), key=lambda p: p.pid)[-1]
        victim.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "4 of 4 runs finished" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: study worker")]
    assert len(warnings) == 1 and "was killed by signal 9" in warnings[0] and "every run finished" in warnings[0]
    assert not [line for line in err.splitlines() if line.startswith("error:")]
    assert {r["status"] for r in _rows(study_dir / "compare_runs.csv")} == {"completed"}


def test_a_non_utf8_output_dir_is_refused_naming_the_option(tmp_path):
    proc = _forked.run([sys.executable, "-m", "nnlab", "study", "compare", "--variant", "a=", "--variant", "b=",
                        "--output-dir", os.fsdecode(b"d\xff"), "--config-dir", CONFIG_DIR],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert flat(proc.stderr) == ("error: --output-dir: 'd\\xff' is not a UTF-8 path (the study's files record it); "
                                 "choose a directory whose full path is UTF-8")
    assert not any(tmp_path.iterdir())
