"""A user's table at scale: `nnlab.data.prepare_table` against the plain pandas/scikit-learn way.

Usage:
    python benchmarks/table_load.py [--rows 1000000] [--workdir DIR] [--repeat 1]

Writes (once per ``--workdir``; default a temporary directory, removed at the end)
a ``rows`` x 20 CSV: 17 numeric features (one of them a Unix timestamp, a large
offset with a small spread), one text feature with 5 categories and 2 numeric
targets. Then, each in a fresh Python process so that its peak memory is its own:

- **nnlab**: ``prepare_table(path, targets=["y1", "y2"])``: read, check, split,
  one-hot, scale to float32.
- **baseline**, the plain way: ``pd.read_csv``, ``df.isna()`` and ``np.isfinite``
  checks, ``pd.get_dummies`` for the text column, ``train_test_split`` twice (test
  first, then validation, as nnlab does), ``StandardScaler`` fit on the training
  rows (numeric columns; one-hot stays 0/1), transform, ``astype(float32)``.

Wall time is measured around the call alone (after the imports); peak memory is
``ru_maxrss`` after the call minus the resident set size measured right before it.
Prints one JSON line: times, peaks (MiB), the float32 size of the table
(rows x 20 x 4 bytes), peak / float32 ratios, time ratio nnlab / baseline, and
``max_abs_diff``: the largest difference between the two prepared arrays (same
split, same random_state: the same rows in the same order), so the comparison is
of the same work. The issue's target: nnlab <= 10 s and peak <= 3x the float32
array.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["y1", "y2"]
TEXT = "site"
CATEGORIES = ["north", "south", "east", "west", "centre"]
SPLIT = dict(test_size=0.2, val_size=0.2, random_state=42)
ARRAYS = ("X_train", "X_val", "X_test", "y_train", "y_val", "y_test")
MIB = 2 ** 20


def write_table(path: Path, rows: int, seed: int = 0) -> None:
    """17 numeric features (f01..f16 and a timestamp), one text column, two targets."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    data = {}
    for i in range(1, 17):
        scale = 10.0 ** rng.integers(-2, 4)
        data[f"f{i:02d}"] = np.round(rng.normal(rng.uniform(-5, 5) * scale, scale, rows), 4)
    data["timestamp"] = 1_700_000_000 + rng.integers(0, 30 * 86_400, rows)  # a month of seconds
    site = rng.integers(0, len(CATEGORIES), rows)
    data[TEXT] = np.asarray(CATEGORIES)[site]
    z = np.column_stack([data[f"f{i:02d}"] / np.std(data[f"f{i:02d}"]) for i in range(1, 6)])
    hours = (data["timestamp"] - 1_700_000_000) / 3600.0
    data["y1"] = np.round(z @ rng.normal(size=5) + np.sin(hours / 24) + site + rng.normal(0, 0.3, rows), 5)
    data["y2"] = np.round(z[:, 0] * z[:, 1] - 0.5 * site + rng.normal(0, 0.3, rows), 5)
    pd.DataFrame(data).to_csv(path, index=False)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(call):
    """Seconds and peak bytes over the RSS right before the call; the call's result."""
    gc.collect()
    before = _rss()
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return seconds, peak, result


def run_nnlab(path: Path):
    from nnlab.data import prepare_table

    seconds, peak, p = _measure(lambda: prepare_table(path, targets=TARGETS, **SPLIT))
    arrays = dict(zip(ARRAYS, (p.X_train, p.X_val, p.X_test, p.y_train, p.y_val, p.y_test)))
    return seconds, peak, arrays, list(p.feature_names)


def baseline(path: Path):
    """The plain way, as a user would write it."""
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    df = pd.read_csv(path)
    if df.isna().any().any():
        raise ValueError(f"missing values: {df.isna().sum()[lambda s: s > 0].to_dict()}")
    X_df = pd.get_dummies(df.drop(columns=TARGETS), columns=[TEXT], prefix_sep="=", dtype=np.float64)
    numeric = [i for i, c in enumerate(X_df.columns) if not c.startswith(TEXT + "=")]
    X, y = X_df.to_numpy(dtype=np.float64), df[TARGETS].to_numpy(dtype=np.float64)
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("infinite values")
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=SPLIT["test_size"],
                                                      random_state=SPLIT["random_state"])
    X_train, X_val, y_train, y_val = train_test_split(X_rest, y_rest, test_size=SPLIT["val_size"],
                                                      random_state=SPLIT["random_state"])
    x_scaler = StandardScaler().fit(X_train[:, numeric])
    y_scaler = StandardScaler().fit(y_train)
    out = {}
    for name, part in (("train", X_train), ("val", X_val), ("test", X_test)):
        part[:, numeric] = x_scaler.transform(part[:, numeric])
        out[f"X_{name}"] = part.astype(np.float32)
    for name, part in (("train", y_train), ("val", y_val), ("test", y_test)):
        out[f"y_{name}"] = y_scaler.transform(part).astype(np.float32)
    return out, list(X_df.columns)


def run_baseline(path: Path):
    import numpy as np  # noqa: F401  (imported before the measurement, as nnlab's are)
    import pandas as pd  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.preprocessing  # noqa: F401

    seconds, peak, (arrays, names) = _measure(lambda: baseline(path))
    return seconds, peak, arrays, names


def child(which: str, path: Path, out: Path) -> None:
    """Measure one side in this (fresh) process; save its arrays after the measurement."""
    import numpy as np

    if which == "nnlab":
        import nnlab.data  # noqa: F401  (the import is not timed)
    seconds, peak, arrays, names = (run_nnlab if which == "nnlab" else run_baseline)(path)
    np.savez(out, **arrays)
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "feature_names": names}))


def spawn(which: str, path: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", which, "--csv", str(path), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{which} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_abs_diff(a_file: Path, a_names: list[str], b_file: Path, b_names: list[str]) -> dict[str, float]:
    """Largest |nnlab - baseline| per array, the baseline's columns put in nnlab's order."""
    import numpy as np

    order = [b_names.index(n) for n in a_names]
    a, b = np.load(a_file), np.load(b_file)
    diffs = {}
    for name in ARRAYS:
        other = b[name][:, order] if name.startswith("X") else b[name]
        if a[name].shape != other.shape:
            raise SystemExit(f"{name}: nnlab {a[name].shape} vs baseline {other.shape}")
        diffs[name] = float(np.max(np.abs(a[name].astype(np.float64) - other)))
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, help="keep the CSV here (reused when it has --rows rows)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side (fresh processes); best kept")
    parser.add_argument("--child", choices=["nnlab", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.csv, args.out)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nnlab_table_load_"))
    try:
        report(args.rows, workdir, args.repeat)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def report(rows: int, workdir: Path, repeat: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"table_{rows}.csv"
    write_s = 0.0
    if not path.exists():
        start = time.perf_counter()
        write_table(path, rows)
        write_s = time.perf_counter() - start
    runs = {side: [spawn(side, path, workdir / f"{side}.npz") for _ in range(repeat)]
            for side in ("nnlab", "baseline")}
    best = {side: min(r, key=lambda x: x["seconds"]) for side, r in runs.items()}
    float32 = rows * 20 * 4
    diffs = max_abs_diff(workdir / "nnlab.npz", best["nnlab"]["feature_names"],
                         workdir / "baseline.npz", best["baseline"]["feature_names"])
    n, b = best["nnlab"], best["baseline"]
    print(json.dumps({
        "rows": rows, "csv_mib": round(path.stat().st_size / MIB, 1), "write_csv_s": round(write_s, 1),
        "nnlab_s": round(n["seconds"], 2), "baseline_s": round(b["seconds"], 2),
        "time_ratio": round(n["seconds"] / b["seconds"], 3),
        "nnlab_peak_mib": round(max(r["peak_bytes"] for r in runs["nnlab"]) / MIB, 1),
        "baseline_peak_mib": round(max(r["peak_bytes"] for r in runs["baseline"]) / MIB, 1),
        "float32_mib": round(float32 / MIB, 1),
        "nnlab_peak_ratio": round(max(r["peak_bytes"] for r in runs["nnlab"]) / float32, 2),
        "baseline_peak_ratio": round(max(r["peak_bytes"] for r in runs["baseline"]) / float32, 2),
        "nnlab_times_s": [round(r["seconds"], 2) for r in runs["nnlab"]],
        "baseline_times_s": [round(r["seconds"], 2) for r in runs["baseline"]],
        "max_abs_diff": max(diffs.values()), "max_abs_diff_per_array": diffs,
        "targets_met": n["seconds"] <= 10 and max(r["peak_bytes"] for r in runs["nnlab"]) <= 3 * float32,
    }))


if __name__ == "__main__":
    main()
