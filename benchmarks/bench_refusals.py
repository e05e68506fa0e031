"""Refusals that need no network: wall time of each, as a user's shell sees it, against the 1 s bound.

Usage:
    python benchmarks/bench_refusals.py [--repeats 5] [--no-tensorflow-baseline]

Each refusal (an unknown, completed or locked run to resume, a bad configuration,
a missing file, a bad study option) runs ``--repeats`` times as its own
subprocess (``python -m nnlab ...``, ``python main.py ...``) in a scratch
directory holding the runs it refers to; this process holds the lock of the
"locked" run. Every run must exit 2. Side by side in the same process, the
baselines: a bare ``python -c pass`` (the interpreter's own start-up) and
``python -c "import tensorflow"`` (what a refusal cost when TensorFlow loaded
first).

Prints one JSON line: {"bound_s": 1.0, "repeats", "refusals": {name: {"median_s",
"ratio_to_bound"}}, "max_median_s", "max_ratio_to_bound", "python_startup_s",
"import_tensorflow_s", "cpus"}.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOUND_S = 1.0
RUN = "20260101-000000-000000-p1"
LOCKED = "20260101-000000-000000-p2"
NNLAB = [sys.executable, "-m", "nnlab"]

REFUSALS = {
    "train --resume no_such_run": [*NNLAB, "train", "--resume", "no_such_run", "--output-dir", "o"],
    "python main.py --resume <completed run>": [sys.executable, str(REPO / "main.py"), "--resume", RUN,
                                                "--output-dir", "o"],
    "train --resume <locked run>": [*NNLAB, "train", "--resume", LOCKED, "--output-dir", "o"],
    "train --set dropout_rate=1.5": [*NNLAB, "train", "--set", "dropout_rate=1.5"],
    "train --set no_such_key=1": [*NNLAB, "train", "--set", "no_such_key=1"],
    "train --data nope.csv": [*NNLAB, "train", "--data", "nope.csv"],
    "predict nope.csv": [*NNLAB, "predict", "nope.csv", "--out", "p.csv"],
    "analyze --run nope": [*NNLAB, "analyze", "--run", "nope", "--output-dir", "o"],
    "study precision --bits 24,8,30": [*NNLAB, "study", "precision", "--bits", "24,8,30"],
}


def _status(status: str, **fields) -> str:
    return json.dumps({"status": status, "pid": 1, "hostname": "h", "updated": "2026-01-01T00:00:00+00:00",
                       "epochs": 5, **fields})


def _make_runs(root: Path) -> Path:
    """A completed run and a running one; returns the running one's lock file."""
    files = {
        f"o/runs/{RUN}/training_config.json": "{}",
        f"o/runs/{RUN}/run_status.json": _status("completed", epochs_run=5),
        f"o/runs/{LOCKED}/training_config.json": "{}",
        f"o/runs/{LOCKED}/run_status.json": _status("running", epochs_run=2),
        f"o/runs/{LOCKED}/.lock": json.dumps({"pid": os.getpid(), "hostname": socket.gethostname()}),
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root / f"o/runs/{LOCKED}/.lock"


def _timed(argv: list[str], cwd: Path, env: dict[str, str], *, status: int) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if proc.returncode != status or "Traceback" in proc.stderr:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}, expected {status}:\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each refusal (median reported)")
    parser.add_argument("--no-tensorflow-baseline", action="store_true",
                        help="skip timing `python -c 'import tensorflow'`")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    with tempfile.TemporaryDirectory(prefix="bench_refusals_") as scratch:
        root = Path(scratch)
        with open(_make_runs(root)) as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # this process "trains" the locked run
            times = {name: [] for name in REFUSALS}
            for _ in range(args.repeats):  # round by round: a passing load spreads over every refusal
                for name, argv in REFUSALS.items():
                    times[name].append(_timed(argv, root, env, status=2))
        startup = statistics.median(_timed([sys.executable, "-c", "pass"], root, env, status=0)
                                    for _ in range(args.repeats))
        tf_s = None if args.no_tensorflow_baseline else statistics.median(
            _timed([sys.executable, "-c", "import tensorflow"], root, env, status=0) for _ in range(2))
    refusals = {name: {"median_s": round(statistics.median(t), 3),
                       "ratio_to_bound": round(statistics.median(t) / BOUND_S, 3)} for name, t in times.items()}
    worst = max(r["median_s"] for r in refusals.values())
    print(json.dumps({"bound_s": BOUND_S, "repeats": args.repeats, "refusals": refusals, "max_median_s": worst,
                      "max_ratio_to_bound": round(worst / BOUND_S, 3), "python_startup_s": round(startup, 3),
                      "import_tensorflow_s": None if tf_s is None else round(tf_s, 3), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
