"""tests/_forked.py: a command run as a forked child of the TensorFlow runner behaves as the same
command run by ``subprocess`` in a fresh interpreter (what the end-to-end tests rely on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _forked

SCRIPT = """\
import atexit, os, sys, threading, time
print("argv", sys.argv[1:], "cwd", os.path.basename(os.getcwd()), "var", os.environ.get("FORKED_CHECK"))
print("name", __name__, "path0", repr(sys.path[0]))
print("to stderr", file=sys.stderr)
def late():
    time.sleep(0.2)
    print("thread done", flush=True)
threading.Thread(target=late).start()      # not a daemon: the interpreter waits for it at exit
atexit.register(lambda: print("atexit ran"))
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture()
def script(tmp_path) -> Path:
    (tmp_path / "work").mkdir()
    path = tmp_path / "prog.py"
    path.write_text(SCRIPT)
    return path


def _both(args, **kwargs):
    return _forked.run(args, **kwargs), subprocess.run(args, **kwargs)


def test_a_script_runs_as_in_a_fresh_interpreter(script, tmp_path):
    env = {**os.environ, "FORKED_CHECK": "yes"}
    forked, fresh = _both([sys.executable, str(script), "3", "x"], cwd=tmp_path / "work", env=env,
                          capture_output=True, text=True, timeout=120)
    assert forked.returncode == fresh.returncode == 3
    assert forked.stdout == fresh.stdout
    assert forked.stderr == fresh.stderr == "to stderr\n"
    assert f"path0 {str(script.parent)!r}" in forked.stdout and "name __main__" in forked.stdout
    assert forked.stdout.endswith("thread done\natexit ran\n")


def test_minus_c_minus_m_input_and_bytes(tmp_path):
    code = "import sys; data = sys.stdin.read(); print(data.upper(), sys.argv[1:], repr(sys.path[0]))"
    forked, fresh = _both([sys.executable, "-c", code, "a"], input="abc", capture_output=True, text=True,
                          cwd=tmp_path)
    assert forked.stdout == fresh.stdout == "ABC ['a'] ''\n"
    forked, fresh = _both([sys.executable, "-c", "print('x')"], capture_output=True)
    assert forked.stdout == fresh.stdout == b"x\n"
    forked, fresh = _both([sys.executable, "-m", "nnlab.cli", "config", "presets"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert forked.returncode == fresh.returncode == 0 and forked.stdout == fresh.stdout


def test_an_uncaught_exception_prints_the_traceback_and_exits_1(tmp_path):
    forked, fresh = _both([sys.executable, "-c", "raise ValueError('boom')"], capture_output=True, text=True)
    assert forked.returncode == fresh.returncode == 1
    assert forked.stderr == fresh.stderr
    assert forked.stderr.startswith("Traceback") and "_fork_runner" not in forked.stderr


def test_timeout_kills_the_child_and_a_missing_cwd_raises(tmp_path):
    marker = tmp_path / "still-running"
    code = f"import time; time.sleep(2); open({str(marker)!r}, 'w').close()"
    with pytest.raises(subprocess.TimeoutExpired):
        _forked.run([sys.executable, "-c", code], capture_output=True, timeout=0.5)
    time.sleep(2.5)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        _forked.run([sys.executable, "-c", "pass"], cwd=tmp_path / "missing", capture_output=True)


def test_popen_pid_signals_pipes_and_sessions(tmp_path):
    code = "import sys, time\nprint('ready', flush=True)\nprint('err', file=sys.stderr, flush=True)\ntime.sleep(60)"
    proc = _forked.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    assert isinstance(proc, _forked.ForkedPopen), _forked.fresh_because(proc.args, {})
    assert proc.pid != os.getpid()
    assert proc.stdout.readline() == "ready\n" and proc.stdout.readline() == "err\n"  # streamed, not at exit
    assert proc.poll() is None and os.getsid(proc.pid) == proc.pid
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM and out == "" and err is None
    with open(tmp_path / "log", "w") as log:
        _forked.Popen([sys.executable, "-c", "print('logged')"], stdout=log, stderr=subprocess.STDOUT).wait(30)
    assert (tmp_path / "log").read_text() == "logged\n"


def test_start_up_settings_that_differ_get_a_fresh_interpreter():
    code = "import sys; print('tensorflow' in sys.modules)"
    forked = _forked.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert forked.stdout == "True\n", _forked.fresh_because([sys.executable, "-c", code], {})  # the runner's child
    for changed in ({"TF_CPP_MIN_LOG_LEVEL": "0"}, {"NNLAB_TF_LOG": "1"}, {"PYTHONWARNINGS": "error"}):
        fresh = _forked.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **changed})
        assert fresh.stdout == "False\n", changed
    assert _forked.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                       text=True).stdout == "False\n"
    real = _forked.Popen([sys.executable, "-c", "pass"], preexec_fn=lambda: None)
    assert isinstance(real, subprocess.Popen) and real.wait(60) == 0


# -- the order files are handed to the workers (tests/_schedule.py) --------------------------------

def test_files_run_longest_first_and_unknown_files_before_them():
    import _schedule

    durations = {"tests/a.py": 10.0, "tests/b.py": 300.0, "tests/c.py": 40.0}
    files = ["tests/a.py", "tests/new.py", "tests/b.py", "tests/c.py", "tests/newer.py"]
    assert _schedule.file_order(files, durations) == ["tests/new.py", "tests/newer.py", "tests/b.py", "tests/c.py",
                                                       "tests/a.py"]


def test_the_hook_moves_whole_files_and_keeps_each_files_test_order(tmp_path, monkeypatch):
    import json
    import types

    import _schedule

    (tmp_path / "durations.json").write_text(json.dumps({"tests/short.py": 1.0, "tests/long.py": 99.0}))
    monkeypatch.setattr(_schedule, "DURATIONS", tmp_path / "durations.json")
    ids = ["tests/short.py::t1", "tests/short.py::t2", "tests/long.py::t1", "tests/long.py::t2[x]",
           "tests/long.py::t2[y]"]
    items = [types.SimpleNamespace(nodeid=i) for i in ids]
    _schedule.pytest_collection_modifyitems(None, None, items)
    assert [i.nodeid for i in items] == ids[2:] + ids[:2]


def test_the_recorded_durations_name_test_files_that_exist():
    import json

    import _schedule

    recorded = json.loads(_schedule.DURATIONS.read_text())
    assert recorded and all(v > 0 for v in recorded.values())
    missing = [name for name in recorded if not (Path(__file__).parents[1] / name).is_file()]
    assert not missing, f"tests/file_durations.json names files that are gone: {missing}"
