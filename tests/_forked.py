"""Run end-to-end command lines as forked children of a runner that imported their modules once.

``run`` and ``Popen`` take what ``subprocess.run`` and ``subprocess.Popen`` take and return what
they return. A command line ``[sys.executable, script | -m module | -c code, ...]`` runs as a
forked child of tests/_fork_runner.py (see that file: still a process of its own, with its own
pid, working directory, environment, stdin, stdout, stderr and exit status), which saves the 5 s
of TensorFlow's import per run. Anything else runs in a fresh interpreter, as ``subprocess``
would run it:

- an environment whose TensorFlow, Keras, thread-pool, CUDA or Python start-up settings differ from
  the runner's (TensorFlow and Python read those at start-up, not per command), or that asks for
  TensorFlow's own log output;
- interpreter options (``-X``, ``-W``, ``-u``, ...), a ``preexec_fn``, or options these do not mimic.

``NNLAB_TESTS_NO_FORK=1 python -m pytest`` runs every command in a fresh interpreter (for comparing
the two, or when a failure might be the runner's).

Use them where a test checks what a command does, not how a fresh interpreter starts or what it
imports (tests/test_cli.py, tests/test_console.py, tests/test_refusals_without_tensorflow.py, and
the tests asserting that TensorFlow is not imported keep real processes).
"""

from __future__ import annotations

import atexit
import io
import json
import locale
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).with_name("_fork_runner.py")
# Environment variables read at interpreter or TensorFlow start-up: a request must agree with the
# runner on every one of them (TF_CPP_MIN_LOG_LEVEL absent means nnlab's default, 2). Not KMP_*: an
# in-process ONNX Runtime import sets KMP_DUPLICATE_LIB_OK and KMP_INIT_AT_FORK in the test process's
# environment, and TensorFlow does not read them.
_START_UP_PREFIXES = ("TF_", "KERAS_", "CUDA", "XLA_", "OMP_", "MKL_", "PYTHON", "LD_", "NNLAB_TF_LOG",
                      "MALLOC", "OPENBLAS", "TMPDIR", "HOME")
_TF_LOG_DEFAULT = {"TF_CPP_MIN_LOG_LEVEL": "2"}
_ENCODING = locale.getpreferredencoding(False)  # what subprocess decodes text with


class ForkRunner:
    """tests/_fork_runner.py in a subprocess; its children run concurrently. ``tensorflow=True``
    preloads TensorFlow and nnlab's third-party libraries, otherwise nnlab's CLI modules without
    TensorFlow."""

    def __init__(self, env: dict[str, str], *, tensorflow: bool = False):
        self.env = dict(env)
        command = [sys.executable, str(RUNNER), *(["--tensorflow"] if tensorflow else [])]
        self.proc = subprocess.Popen(command, cwd=RUNNER.parent.parent, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._lock = threading.Lock()
        self._next_id = 0
        self._children: dict[int, _Child] = {}
        self._reader = threading.Thread(target=self._read, name="fork-runner-replies", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            reply = json.loads(line)
            child = self._children[reply["id"]]
            if "errno" in reply:
                child.error = OSError(reply["errno"], reply["error"], reply["path"])
                self._children.pop(reply["id"], None)
                child.started.set()
            elif "pid" in reply:
                child.pid = reply["pid"]
                child.started.set()
            else:
                child.returncode = reply["returncode"]
                child.ended.set()
                self._children.pop(reply["id"], None)
        for child in list(self._children.values()):  # the runner died: nothing will end them now
            child.returncode = child.returncode if child.returncode is not None else -signal.SIGKILL
            child.started.set()
            child.ended.set()

    def start(self, argv: list[str], cwd: Path | str, env: dict[str, str], *, stdout: str, stderr: str,
              stdin: str | None = None, new_session: bool = False) -> _Child:
        child = _Child()
        with self._lock:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tests/_fork_runner.py exited with status {self.proc.returncode}")
            self._next_id += 1
            self._children[self._next_id] = child
            request = {"id": self._next_id, "argv": [str(a) for a in argv], "cwd": str(cwd), "env": env,
                       "stdin": stdin, "stdout": stdout, "stderr": stderr, "new_session": new_session}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        child.started.wait()
        if child.error is not None:  # as subprocess raises it (FileNotFoundError for a missing cwd)
            raise child.error
        if child.pid is None:
            raise RuntimeError(f"tests/_fork_runner.py exited with status {self.proc.wait()}")
        return child

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], scratch: Path, timeout: float,
            stdin: Path | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` to its end (killed after ``timeout``: ``returncode`` -9); its stdout and
        stderr are also left in ``scratch/stdout`` and ``scratch/stderr``."""
        out, err = scratch / "stdout", scratch / "stderr"
        out.write_bytes(b"")
        err.write_bytes(b"")
        child = self.start(argv, cwd, env, stdout=str(out), stderr=str(err), stdin=str(stdin) if stdin else None)
        if not child.ended.wait(timeout):
            child.kill()
            child.ended.wait()
        return subprocess.CompletedProcess(argv, child.returncode, out.read_text(_ENCODING), err.read_text(_ENCODING))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=600)


class _Child:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.error: OSError | None = None
        self.returncode: int | None = None
        self.started, self.ended = threading.Event(), threading.Event()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if not self.ended.is_set():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # ended; the runner's reply is on its way
                pass


def _start_up(env: dict[str, str]) -> dict[str, str]:
    settings = {k: v for k, v in env.items() if k.startswith(_START_UP_PREFIXES)}
    return {**_TF_LOG_DEFAULT, **settings}


_runner: ForkRunner | None = None
_runner_lock = threading.Lock()


def _tensorflow_runner() -> ForkRunner:
    global _runner
    with _runner_lock:
        if _runner is None or _runner.proc.poll() is not None:
            _runner = ForkRunner({**os.environ, **_TF_LOG_DEFAULT}, tensorflow=True)
            atexit.register(_runner.close)
        return _runner


_POPEN_OPTIONS = {"cwd", "env", "stdin", "stdout", "stderr", "text", "encoding", "start_new_session",
                  "universal_newlines"}


def fresh_because(args: Any, kwargs: dict[str, Any], allowed: set[str] = _POPEN_OPTIONS) -> str:
    """Why ``args`` with ``kwargs`` gets a fresh interpreter ("" when it runs as a forked child)."""
    reason = _fresh_because(args, kwargs, allowed)
    log = os.environ.get("NNLAB_TESTS_FORK_LOG")  # a file: every decision, to find what stays fresh
    if log:
        argv = [str(a) for a in args][:3] if isinstance(args, (list, tuple)) else str(args)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""), "fresh": reason,
                                     "argv": argv}) + "\n")
    return reason


def _fresh_because(args: Any, kwargs: dict[str, Any], allowed: set[str]) -> str:
    if os.environ.get("NNLAB_TESTS_NO_FORK"):
        return "NNLAB_TESTS_NO_FORK is set"
    if not isinstance(args, (list, tuple)) or len(args) < 2 or args[0] != sys.executable:
        return f"not a command line of this interpreter ({sys.executable})"
    if str(args[1]).startswith("-") and str(args[1]) not in ("-m", "-c"):
        return f"interpreter option {args[1]}"
    if set(kwargs) - allowed or kwargs.get("stdin") not in (None, subprocess.DEVNULL, subprocess.PIPE):
        return f"options {sorted(set(kwargs) - allowed)} or stdin {kwargs.get('stdin')!r}"
    if kwargs.get("encoding") not in (None, _ENCODING):
        return f"encoding {kwargs['encoding']}"
    for stream in ("stdout", "stderr"):
        target = kwargs.get(stream)
        if not (target in (None, subprocess.PIPE, subprocess.DEVNULL) or (stream == "stderr" and target == subprocess.STDOUT)
                or hasattr(target, "fileno")):
            return f"{stream} {target!r}"
    env = kwargs.get("env") if kwargs.get("env") is not None else dict(os.environ)
    wanted, runner = _start_up(env), _start_up(_tensorflow_runner().env)
    differ = sorted(k for k in set(wanted) | set(runner) if wanted.get(k) != runner.get(k))
    return f"start-up settings {differ} differ from the runner's" if differ else ""


class ForkedPopen:
    """What ``subprocess.Popen`` gives for a command run as a forked child of the TensorFlow runner:
    ``pid``, ``returncode``, ``stdin``/``stdout``/``stderr`` (pipes where PIPE was asked for),
    ``poll``, ``wait``, ``communicate``, ``send_signal``, ``terminate``, ``kill``; a context manager."""

    def __init__(self, args: list[str], *, cwd=None, env=None, stdin=None, stdout=None, stderr=None,
                 text=False, encoding=None, universal_newlines=None, start_new_session=False,
                 input_file: Path | None = None):
        self.args = args
        self.returncode: int | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="nnlab-forked-"))
        self._text = bool(text or encoding or universal_newlines)
        self.stdin = None
        self.stdout = self.stderr = None
        self._readers: dict[str, threading.Thread] = {}
        self._output: dict[str, Any] = {}
        targets: dict[str, str] = {}
        for name, target in (("stdout", stdout), ("stderr", stderr)):
            if target == subprocess.PIPE:
                fifo = self._scratch / name
                os.mkfifo(fifo, 0o600)
                fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open before the child opens its end
                os.set_blocking(fd, True)
                stream = open(fd, "rb")  # noqa: SIM115 - closed by communicate/__exit__
                setattr(self, name, io.TextIOWrapper(stream, encoding=_ENCODING) if self._text else stream)
                targets[name] = str(fifo)
            elif target == subprocess.STDOUT:
                targets[name] = "STDOUT"
            elif target is None:  # inherited: this process's own stream
                targets[name] = f"/proc/{os.getpid()}/fd/{1 if name == 'stdout' else 2}"
            elif target == subprocess.DEVNULL:
                targets[name] = os.devnull
            else:  # an open file
                targets[name] = f"/proc/{os.getpid()}/fd/{target.fileno()}"
        child_env = dict(env if env is not None else os.environ)
        try:
            self._child = _tensorflow_runner().start(
                list(args), cwd or os.getcwd(), child_env, stdout=targets["stdout"], stderr=targets["stderr"],
                stdin=str(input_file) if input_file else None, new_session=start_new_session)
        except BaseException:
            for name in ("stdout", "stderr"):
                if getattr(self, name) is not None:
                    getattr(self, name).close()
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise
        self.pid = self._child.pid

    def poll(self) -> int | None:
        if self._child.ended.is_set():
            self.returncode = self._child.returncode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._child.ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.returncode = self._child.returncode
        return self.returncode

    def _drain(self, name: str) -> None:
        stream = getattr(self, name)
        self._output[name] = stream.read()
        stream.close()

    def communicate(self, input=None, timeout: float | None = None) -> tuple[Any, Any]:  # noqa: A002
        for name in ("stdout", "stderr"):
            if getattr(self, name) is not None and name not in self._readers:
                self._readers[name] = threading.Thread(target=self._drain, args=(name,), daemon=True)
                self._readers[name].start()
        for thread in self._readers.values():
            thread.join(timeout)
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        return self._output.get("stdout"), self._output.get("stderr")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            self._child.kill(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> ForkedPopen:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                stream.close()
        self.wait()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __del__(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)


def Popen(args: Any, **kwargs: Any) -> subprocess.Popen | ForkedPopen:  # noqa: N802 - subprocess's name
    """``subprocess.Popen(args, **kwargs)``, as a forked child of the TensorFlow runner where it can be
    (see the module's docstring)."""
    if fresh_because(args, kwargs) or kwargs.get("stdin") == subprocess.PIPE:
        return subprocess.Popen(args, **kwargs)
    kwargs.pop("stdin", None)
    return ForkedPopen(list(args), **kwargs)


def run(args: Any, *, input=None, timeout: float | None = None, check: bool = False,  # noqa: A002
        capture_output: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(args, ...)``, as a forked child of the TensorFlow runner where it can be (see the
    module's docstring); on ``timeout`` the child is killed and ``TimeoutExpired`` raised, as there."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if fresh_because(args, kwargs):
        return subprocess.run(args, input=input, timeout=timeout, check=check, **kwargs)
    input_file = None
    if input is not None:
        handle, name = tempfile.mkstemp(prefix="nnlab-forked-stdin-")
        os.write(handle, input.encode(_ENCODING) if isinstance(input, str) else input)
        os.close(handle)
        input_file = Path(name)
    kwargs.pop("stdin", None)
    try:
        with ForkedPopen(list(args), input_file=input_file, **kwargs) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
    finally:
        if input_file is not None:
            input_file.unlink()
    done = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done
