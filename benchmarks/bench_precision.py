"""Benchmark: the precision study on the default task -- how many significant bits
do the default network's weights need, and which rounding keeps accuracy?

Runs ``nnlab study precision`` with the per-step schedule (rounding after every
optimizer step) on the default network and data (12,000 particles), 6 seeds,
both cores (``--workers 2``), every rounding at 8, 4, 3, 2 and 1 bits, 50
epochs per run, then checks the issue's acceptance figures from
the study's own outputs:

* stochastic rounding at 4 and 3 significant bits vs float32 (paired mean
  difference of test R², same seeds);
* truncation and round-to-nearest at 4 bits vs stochastic at 4 bits (paired
  two-sided exact Wilcoxon across seeds; 6 seeds is the smallest number at
  which p < 0.05 is attainable);
* the 2- and 1-bit points;
* the epoch time of each per-step cell relative to float32 (the same runs).

Prints one JSON line. A rerun with the same ``--output-dir`` resumes the study
(finished runs are not redone).

    python benchmarks/bench_precision.py [--output-dir DIR] [--seeds 6] [--epochs 50] [--workers 2] [--bits 8,4,3,2,1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
BITS = "8,4,3,2,1"
ROUNDINGS = "truncate,nearest,stochastic"


def run_study(out: Path, args) -> float:
    """``nnlab study precision`` with every rounding at every bit count, the per-step schedule."""
    start = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = ["--schedule", "step", "--seeds", str(args.seeds), "--epochs", str(args.epochs),
              "--workers", str(args.workers), "--output-dir", str(out)]
    command = [sys.executable, "-m", "nnlab", "study", "precision", "--bits", args.bits,
               "--rounding", ROUNDINGS, *common]
    proc = subprocess.run(command, cwd=REPO, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"nnlab study precision failed with exit status {proc.returncode}")
    return time.perf_counter() - start


def paired(runs: pd.DataFrame, a: dict, b: dict) -> dict:
    """Paired comparison of test R² between two cells (a − b), matched by seed."""
    def cell(keys: dict) -> pd.Series:
        mask = np.ones(len(runs), bool)
        for key, value in keys.items():
            mask &= runs[key].astype(str) == str(value)
        rows = runs[mask & (runs["status"] == "completed")]
        return rows.set_index("seed")["test_r2"]

    x, y = cell(a), cell(b)
    seeds = sorted(set(x.index) & set(y.index))
    diff = x.loc[seeds].to_numpy() - y.loc[seeds].to_numpy()
    p = float(stats.wilcoxon(diff, alternative="two-sided").pvalue) if len(seeds) >= 2 and np.any(diff) else 1.0
    return {"n": len(seeds), "mean_diff": round(float(np.mean(diff)), 5), "min_diff": round(float(np.min(diff)), 5),
            "max_diff": round(float(np.max(diff)), 5), "wilcoxon_p": round(p, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=None, help="study directory (default: a temporary one)")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--bits", default=BITS, help=f"significant bits (default {BITS}; 24 = float32 is always in)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="bench_precision_"))
    seconds = run_study(out, args)
    runs = pd.read_csv(out / "precision_runs.csv")
    study = pd.read_csv(out / "precision_study.csv")
    ref = {"rounding": "none", "bits": 24}

    def cell(rounding: str, bits: int) -> dict:
        return {"rounding": rounding, "bits": bits}

    table = {f"{r.rounding}_{r.bits}": {"test_r2_mean": round(float(r.test_r2_mean), 5),
                                        "ci": [round(float(r.test_r2_ci_low), 5), round(float(r.test_r2_ci_high), 5)],
                                        "epoch_time_ratio": round(float(r.epoch_time_ratio), 3)}
             for r in study.itertuples()}
    stochastic_4 = paired(runs, cell("stochastic", 4), ref)
    stochastic_3 = paired(runs, cell("stochastic", 3), ref)
    truncate_4 = paired(runs, cell("truncate", 4), cell("stochastic", 4))
    nearest_4 = paired(runs, cell("nearest", 4), cell("stochastic", 4))
    ratios = {k: v["epoch_time_ratio"] for k, v in table.items() if not k.startswith("none")}
    result = {
        "benchmark": "precision_study",
        "task": "default network (512-384-256-128-64 prelu), default data (12000 particles), "
                f"{args.epochs} epochs, constraint_schedule=step",
        "seeds": args.seeds, "workers": args.workers, "study_dir": str(out), "wall_s": round(seconds, 1),
        "cells": table,
        "stochastic_4_vs_float32": stochastic_4,
        "stochastic_3_vs_float32": stochastic_3,
        "truncate_4_vs_stochastic_4": truncate_4,
        "nearest_4_vs_stochastic_4": nearest_4,
        "acceptance": {
            "stochastic_4_within_0.002": abs(stochastic_4["mean_diff"]) <= 0.002,
            "stochastic_3_within_0.005": abs(stochastic_3["mean_diff"]) <= 0.005,
            "truncate_4_significantly_worse": truncate_4["mean_diff"] < 0 and truncate_4["wilcoxon_p"] < 0.05,
            "nearest_4_significantly_worse": nearest_4["mean_diff"] < 0 and nearest_4["wilcoxon_p"] < 0.05,
            "max_epoch_time_ratio": max(ratios.values()) if ratios else None,
        },
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
