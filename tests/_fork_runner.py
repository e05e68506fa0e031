"""Run command lines in forked children of one process that has imported their modules once.

Most of an end-to-end test's subprocess is start-up: Python, then TensorFlow's import (about
5 s of CPU on the 2-core CI machine), then nnlab's. This runner pays for the imports once and
forks a child per command line. The child is a process of its own, as a fresh
``python main.py ...`` would be: its own pid (signals reach it alone, or its session with
``new_session``), working directory, environment, stdin (/dev/null or a file), stdout and stderr
(files or pipes the client made, opened before the fork), exit status; it runs the entry point as ``__main__``
(``runpy``, or ``exec`` for ``-c``), so ``if __name__ == "__main__"`` paths run, and it ends as
the interpreter ends (threads joined, exit handlers run, output flushed). What it shares is only
the imported modules. tests/_forked.py is the client.

Two preloads:

- ``python tests/_fork_runner.py`` (the bad-input catalogue, tests/test_bad_inputs.py): nnlab's
  CLI modules, never TensorFlow (no refusal needs it, and tests/test_refusals_without_tensorflow.py
  holds nnlab to that).
- ``python tests/_fork_runner.py --tensorflow`` (end-to-end runs): TensorFlow, its first device
  listing, and the third-party libraries nnlab uses; not nnlab itself, so a child imports nnlab as
  a fresh process does (and a script that asserts nnlab is absent still can). TensorFlow reads its
  log and threading settings from the environment at import: the client sends only requests whose
  such settings equal this runner's.

The start-up from a fresh interpreter (TensorFlow's import-time output, what a command imports)
is covered by the tests that still spawn real processes (tests/test_cli.py, tests/test_console.py,
tests/test_refusals_without_tensorflow.py, and every test that checks what is imported).

Protocol, one JSON object per line. Requests on stdin: ``{"id": N, "argv": [...], "cwd": ...,
"env": {...}, "stdin": PATH|null, "stdout": PATH, "stderr": PATH|"STDOUT", "new_session": bool}``.
Replies on stdout: ``{"id": N, "pid": P}`` once the child exists, ``{"id": N, "returncode": R}``
when it has ended (R negative: killed by signal -R), or ``{"id": N, "errno": E, "error": ..., "path": ...}``
when its working directory or streams could not be opened (nothing forked). Children run concurrently.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import sys

TENSORFLOW = "--tensorflow" in sys.argv[1:]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# What the refusals import (measured: the modules most of the 273 children imported themselves).
CLI_PRELOAD = (
    "nnlab.cli", "nnlab.config._models", "nnlab.config._sources", "nnlab.data._io", "nnlab.data._simulate",
    "nnlab.data._validate", "nnlab.runs._lock", "nnlab.runs._runs", "nnlab.runs._source", "nnlab.runs._status",
    "nnlab.integrations._databases", "nnlab.integrations._uri", "nnlab.hpo._search", "nnlab.hpo._results",
    "nnlab.hpo._space", "nnlab.export._cli", "nnlab.export._export", "nnlab.export._run", "nnlab.analysis.base",
    "nnlab.analysis.cli", "nnlab.study._cli", "nnlab.study._engine", "nnlab.study._plan", "nnlab.study._worker",
    "nnlab._numbers", "nnlab._plots", "nnlab._tflog", "optuna", "pandas", "psutil", "sqlalchemy",
    # The refusals found after the data is read (its split and scaling), about 40 of the cases.
    "sklearn.model_selection", "sklearn.preprocessing", "scipy.stats", "rich", "psycopg", "requests",
)
# What a training, search, analysis or export run imports besides nnlab (TensorFlow first).
TENSORFLOW_PRELOAD = (
    "tensorflow", "keras", "numpy", "pandas", "scipy.stats", "sklearn.model_selection", "sklearn.preprocessing",
    "optuna", "sqlalchemy", "psutil", "pydantic", "rich", "matplotlib", "tensorboard",
)


def _preload() -> None:
    if not TENSORFLOW:
        for name in CLI_PRELOAD:
            importlib.import_module(name)
        assert "tensorflow" not in sys.modules, "the CLI runner must not import TensorFlow"
        return
    for name in TENSORFLOW_PRELOAD:
        importlib.import_module(name)
    # The first device use (cuInit's complaint on a machine without a GPU driver) happens here,
    # as nnlab's quiet import does it at start-up; a fresh process would not show it either.
    sys.modules["tensorflow"].config.list_physical_devices()
    assert not any(name == "nnlab" or name.startswith("nnlab.") for name in sys.modules), \
        "the TensorFlow runner must not import nnlab (its children import it as a fresh process does)"


def _child(request: dict, streams: list[int]) -> None:
    """Become the command, with ``streams`` (stdin, stdout, stderr) opened for it: never returns."""
    import atexit
    import runpy
    import threading
    import traceback

    for fd, opened in enumerate(streams):
        os.dup2(opened, fd)
    for opened in set(streams):
        if opened > 2:
            os.close(opened)
    if request.get("new_session"):
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    preloaded = set(sys.modules)
    sys.stdin = open(0, encoding=sys.stdout.encoding, closefd=False)  # noqa: SIM115 - the child's whole life
    if "numpy" in sys.modules:  # a fresh process seeds numpy's global generator from the OS
        sys.modules["numpy"].random.seed()
    argv = request["argv"][1:]  # without the interpreter
    code: int | str | None = 0
    try:
        # sys.path[0] is this runner's directory here; a fresh interpreter puts the working directory
        # there for -m, "" for -c, and the script's directory for a script.
        if argv[0] == "-m":
            sys.path[0] = os.getcwd()
            sys.argv = [argv[1], *argv[2:]]
            # `python -m nnlab.cli` runs the module as __main__ without importing it first.
            sys.modules.pop(argv[1], None)
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.path[0] = ""
            sys.argv = ["-c", *argv[2:]]
            main = type(sys)("__main__")
            sys.modules["__main__"] = main
            exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            sys.argv = argv
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException as exc:  # what the interpreter would print (without this file's frames), exit 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        code = 1
    # What the interpreter does at exit, less tearing down its modules (a fresh process's exit spends
    # about 0.1 s on that; no command's output depends on it): wait for the threads that are not
    # daemons, run the exit handlers, flush.
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        _log_cost(request, preloaded)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stream: as at a real exit, ignored
                pass
        os._exit(code or 0)


def _log_cost(request: dict, preloaded: set[str]) -> None:
    """With NNLAB_TESTS_FORK_LOG (a file) in the command's environment: what the child cost (CPU of it and
    of the processes it waited for) and the packages it imported itself, to find what to preload."""
    log = os.environ.get("NNLAB_TESTS_FORK_LOG")
    if not log:
        return
    import resource

    cpu = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
    imported = sorted({name.split(".")[0] for name in set(sys.modules) - preloaded})
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""), "child_cpu": round(cpu, 2),
                                 "argv": request["argv"][1:30], "imported": imported}) + "\n")


def _open_streams(request: dict) -> list[int]:
    """The child's stdin, stdout and stderr, opened here before the fork: once the client has the
    child's pid, a pipe (a FIFO the client reads) already has its writer, so the client's reads wait
    for the child's output instead of seeing an end of file."""
    os.stat(request["cwd"])  # a missing working directory fails here, as subprocess's does in the parent
    stdin = os.open(request.get("stdin") or os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stderr = stdout if request["stderr"] == "STDOUT" else os.open(request["stderr"],
                                                                    os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return [stdin, stdout, stderr]


def _start(request: dict) -> int:
    streams = _open_streams(request)
    pid = os.fork()
    if pid == 0:
        try:
            _child(request, streams)
        except BaseException:  # a failure before the command started (a missing working directory)
            import traceback

            traceback.print_exc()
        os._exit(70)
    for opened in set(streams):
        os.close(opened)
    return pid


def _reply(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def main() -> None:
    """Serve requests until stdin closes, then wait for the children still running."""
    running: dict[int, int] = {}  # pid -> request id
    pending, open_ = b"", True
    while open_ or running:
        # Plain select on fd 0 (no epoll descriptor for the children to inherit), waking every
        # 10 ms while children run to collect the ones that ended.
        readable, _, _ = select.select([0] if open_ else [], [], [], 0.01 if running else None)
        if readable:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                open_ = False
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                try:
                    pid = _start(request)
                except OSError as exc:  # a stream that cannot be opened: the client raises it
                    _reply({"id": request["id"], "errno": exc.errno, "error": exc.strerror, "path": exc.filename})
                    continue
                running[pid] = request["id"]
                _reply({"id": request["id"], "pid": pid})
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            if pid in running:
                _reply({"id": running.pop(pid), "returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    _preload()
    main()
