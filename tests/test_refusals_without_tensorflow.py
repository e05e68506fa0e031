"""Refusals that need no network answer without importing TensorFlow or Keras (issue 27).

Each refusal runs in-process through ``nnlab.cli.main``, one after another in one fresh
interpreter; afterwards neither ``tensorflow`` nor ``keras`` may be in ``sys.modules``.
Every refusal must still exit 2 with its own message. Their times are measured by
``benchmarks/bench_refusals.py`` (docs/performance.md), never asserted here.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from console_text import shows

from nnlab.data import DATA_FORMAT_VERSION

RUN = "20260101-000000-000000-p1"
LOCKED = "20260101-000000-000000-p2"
EMPTY = "20260101-000000-000000-p3"

# Runs every argv through nnlab.cli.main in this one interpreter, then says what was imported.
SCRIPT = r"""
import contextlib, io, json, sys
from nnlab.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
    results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps({"results": results, "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


def _status(status: str, **fields) -> str:
    return json.dumps({"status": status, "pid": 1, "hostname": "h", "updated": "2026-01-01T00:00:00+00:00",
                       "epochs": 5, **fields})


def _write(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def _refusals(pid: int) -> list[tuple[list[str], str]]:
    """(argv, a line its error must show)."""
    lock = f"o/runs/{LOCKED}/.lock"
    return [
        (["train", "--resume", "no_such_run", "--output-dir", "o"],
         f"error: unknown run id 'no_such_run' in 'o/runs'; available: {RUN}"),
        (["train", "--resume", RUN, "--output-dir", "o"],
         f"error: run {RUN} completed all 5 epochs (status completed); nothing to resume"),
        (["train", "--resume", LOCKED, "--output-dir", "o"],
         f"error: run {LOCKED} is being trained by process {pid} on host {socket.gethostname()} (lock {lock})"),
        (["train", "--resume", EMPTY, "--output-dir", "o"],
         f"error: run directory 'o/runs/{EMPTY}' has no checkpoint to resume from"),
        (["train", "--set", "dropout_rate=1.5"], "dropout_rate = 1.5 is invalid: Input should be less than 1"),
        (["train", "--set", "no_such_key=1"], "error: --set: unknown key 'no_such_key'"),
        (["train", "--epochs", "0"], "nnlab train: error: argument --epochs: expected a positive integer, got 0"),
        (["train", "--data", "nope.csv"], "error: --data: particle data file not found: nope.csv"),
        (["train", "--data", "header_only.csv", "--output-dir", "fresh"], "has a header but no data rows"),
        (["predict", "nope.csv", "--out", "p.csv"], "error: INPUT: input file not found: nope.csv"),
        (["analyze", "--run", "nope", "--output-dir", "o"], "error: unknown run id 'nope'"),
        (["export", "--format", "onnx", "--out", "m.onnx", "--output-dir", "fresh"],
         "error: no runs in 'fresh/runs'"),
        (["export", "--format", "onnx", "--out", "m.onnx", "--output-dir", "x", "--mlflow", "sqlite:///none.db"],
         f"error: --mlflow: sqlite:///none.db holds no MLflow store, so run {RUN} was not logged there"),
        (["hpo", "--max-trials", "0"], "nnlab hpo: error: argument --max-trials: expected a positive integer, got 0"),
        (["study", "precision", "--bits", "24,8,30"], "error: --bits: 30 is outside 1..24"),
    ]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> tuple[list[tuple[list[str], str]], dict]:
    """Every refusal run in one interpreter while this process holds the lock of run LOCKED."""
    root = tmp_path_factory.mktemp("refusals")
    header = "particle_id,mass,initial_velocity_x,initial_velocity_y\n"
    _write(root, {
        f"o/runs/{RUN}/training_config.json": "{}",
        f"o/runs/{RUN}/run_status.json": _status("completed", epochs_run=5),
        f"o/runs/{LOCKED}/training_config.json": "{}",
        f"o/runs/{LOCKED}/run_status.json": _status("running", epochs_run=2),
        f"o/runs/{LOCKED}/.lock": json.dumps({"pid": os.getpid(), "hostname": socket.gethostname()}),
        f"o/runs/{EMPTY}/training_config.json": '{"config": {"epochs": 5}}',
        f"o/runs/{EMPTY}/run_status.json": _status("interrupted", epochs_run=2),
        "header_only.csv": header,
        # A finished run to export (its weights file is never read: the MLflow store is checked first).
        f"x/runs/{RUN}/training_config.json": '{"config": {}}',
        f"x/runs/{RUN}/run_status.json": _status("completed", epochs_run=5),
        f"x/runs/{RUN}/weights/final.weights.h5": "",
        f"x/runs/{RUN}/scalers.json": json.dumps({
            "format_version": DATA_FORMAT_VERSION, "feature_names": ["mass"], "target_names": ["displacement"],
            **{key: {"mean_": [0.0], "scale_": [1.0], "var_": [1.0], "n_samples_seen_": 10}
               for key in ("x_scaler", "y_scaler")}}),
    })
    refusals = _refusals(os.getpid())
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    with open(root / "o" / "runs" / LOCKED / ".lock") as held:  # this process "trains" run LOCKED
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([argv for argv, _ in refusals])],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return refusals, json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_refusal_exits_2_with_its_message(outcome):
    refusals, report = outcome
    assert [r["argv"] for r in report["results"]] == [argv for argv, _ in refusals]
    for (argv, expected), result in zip(refusals, report["results"]):
        assert result["code"] == 2, (argv, result)
        assert "Traceback" not in result["stderr"], (argv, result["stderr"])
        assert shows(result["stderr"], expected), (argv, expected, result["stderr"])


def test_no_refusal_imports_tensorflow_or_keras(outcome):
    _, report = outcome
    assert report["loaded"] == [], f"imported by a refusal: {report['loaded']}"

