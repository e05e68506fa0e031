"""Candidates for the default run: test R² and wall time of `python main.py`, over seeds.

Usage:
    python benchmarks/default_run.py [--seeds 1,2,3] [--only NAME,...]

Each candidate is `python main.py --quiet --seed S` with a few `--set` overrides on
top of the shipped defaults (every lab feature stays on: constraints every 10
epochs, both dampeners, binary change max, physics_aware loss), run as a fresh
process so the wall time is what a user waits for (TensorFlow import and XLA
compilation included). Prints one JSON line per run, then one summary line per
candidate (mean/min test R², mean/max seconds), then a Markdown table.
Run it on an idle machine: the wall times are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> --set overrides on top of ml_config/ (the shipped defaults).
CANDIDATES: dict[str, dict[str, object]] = {
    "shipped": {},
    "8000p_150e": {"num_particles_default": 8000, "epochs": 150},
    "8000p_150e_es20": {"num_particles_default": 8000, "epochs": 150, "early_stopping_patience": 20},
    "8000p_100e": {"num_particles_default": 8000, "epochs": 100},
    "12000p_100e": {"num_particles_default": 12000, "epochs": 100},
    "12000p_150e": {"num_particles_default": 12000, "epochs": 150},
    "16000p_150e": {"num_particles_default": 16000, "epochs": 150},
    "8000p_150e_bs256": {"num_particles_default": 8000, "epochs": 150, "batch_size": 256},
}


def run(name: str, overrides: dict[str, object], seed: int, out: Path) -> dict[str, object]:
    args = [sys.executable, str(REPO / "main.py"), "--quiet", "--seed", str(seed), "--output-dir", str(out)]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    run_dir = max((out / "runs").iterdir(), key=lambda p: p.name)
    test = json.loads((run_dir / "test_metrics.json").read_text())
    epochs = sum(1 for _ in open(run_dir / "training_results.csv")) - 1
    return {"candidate": name, "seed": seed, "test_r2": round(test["scaled"]["r2"], 5),
            "epochs_run": epochs, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    names = [n for n in CANDIDATES if not args.only or n in args.only.split(",")]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows = []
            for seed in seeds:
                row = run(name, CANDIDATES[name], seed, Path(tmp) / f"{name}-{seed}")
                rows.append(row)
                print(json.dumps(row), flush=True)
            r2 = [r["test_r2"] for r in rows]
            secs = [r["seconds"] for r in rows]
            line = {"candidate": name, "overrides": CANDIDATES[name], "seeds": seeds,
                    "mean_test_r2": round(statistics.mean(r2), 5), "min_test_r2": min(r2),
                    "mean_seconds": round(statistics.mean(secs), 1), "max_seconds": max(secs)}
            summary.append(line)
            print(json.dumps(line), flush=True)
    print("| candidate | overrides | test R² mean (min) | wall s mean (max) |")
    print("|---|---|---|---|")
    for s in summary:
        print(f"| {s['candidate']} | `{json.dumps(s['overrides'])}` | {s['mean_test_r2']:.4f} ({s['min_test_r2']:.4f}) "
              f"| {s['mean_seconds']:.0f} ({s['max_seconds']:.0f}) |")


if __name__ == "__main__":
    main()
