"""Run command lines in forked children of one process that has imported nnlab's CLI once.

Used by the bad-input catalogue (tests/test_bad_inputs.py): 273 refusals, each a
separate process that used to spend most of its time starting Python and importing
the same modules. This runner imports them once (never TensorFlow: no refusal needs
it) and forks a child per command line. The child is a process of its own, as a
fresh ``python main.py ...`` would be: its own working directory, environment,
stdin (/dev/null), stdout and stderr (files), exit status, and exit handlers; it runs
the entry point as ``__main__`` (``runpy``), so ``if __name__ == "__main__"`` paths
run. What it shares is only the imported modules. The start-up from a fresh
interpreter is covered by the tests that spawn real processes (tests/test_cli.py,
tests/test_refusals_without_tensorflow.py).

Protocol: one JSON request per line on stdin,
``{"argv": [...], "cwd": ..., "env": {...}, "stdout": PATH, "stderr": PATH, "timeout": S}``;
one JSON reply per line on stdout, ``{"returncode": N}`` (-9 after a timeout).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib  # noqa: E402

# What the refusals import (measured: the modules most of the 273 children imported themselves).
PRELOAD = (
    "nnlab.cli", "nnlab.config._models", "nnlab.config._sources", "nnlab.data._io", "nnlab.data._simulate",
    "nnlab.data._validate", "nnlab.runs._lock", "nnlab.runs._runs", "nnlab.runs._source", "nnlab.runs._status",
    "nnlab.integrations._databases", "nnlab.integrations._uri", "nnlab.hpo._search", "nnlab.hpo._results",
    "nnlab.hpo._space", "nnlab.export._cli", "nnlab.export._export", "nnlab.export._run", "nnlab.analysis.base",
    "nnlab.analysis.cli", "nnlab.study._cli", "nnlab.study._engine", "nnlab.study._plan", "nnlab.study._worker",
    "nnlab._numbers", "nnlab._plots", "nnlab._tflog", "optuna", "pandas", "psutil", "sqlalchemy",
)
for _name in PRELOAD:
    importlib.import_module(_name)

assert "tensorflow" not in sys.modules, "the runner must not import TensorFlow (fork after it is unsafe)"


def _child(request: dict) -> None:
    """Become the command: never returns."""
    import atexit
    import runpy
    import traceback

    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - the child's whole life
        argv = request["argv"][1:]  # without the interpreter
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                # `python -m nnlab.cli` runs the module as __main__ without importing it first.
                sys.modules.pop(argv[1], None)
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = argv
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # what the interpreter would print and exit 1 with
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run(request: dict) -> int:
    pid = os.fork()
    if pid == 0:
        _child(request)
    deadline = time.monotonic() + float(request.get("timeout", 180))
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.002)


def main() -> None:
    for line in sys.stdin:
        reply = {"returncode": _run(json.loads(line))}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
