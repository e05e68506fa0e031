"""Particle generation: vectorised nnlab against a per-particle Python loop.

Usage:
    python benchmarks/bench_data.py [--n 1000000] [--loop-n 20000] [--repeat 3]

Prints one JSON line: {"n", "nnlab_s", "loop_s_scaled", "loop_n", "speedup"}.
``nnlab_s`` is the best of ``--repeat`` runs of ``generate_particle_data(n)``;
``loop_s_scaled`` times the loop on ``loop_n`` particles and scales linearly to ``n``
(the loop is O(n) with constant per-particle cost). Both produce a DataFrame.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

try:
    import nnlab  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import pandas as pd

from nnlab.config import GenerationConfig
from nnlab.data import REQUIRED_COLUMNS, generate_particle_data


def particle_row(pid, m, vx, vy, x, y, q, b, t):
    """The same closed-form cyclotron motion, one particle at a time with `math`."""
    omega = q * b / m
    if omega == 0.0:
        s_int, c_int, sin_p, cos_p = t, 0.0, 0.0, 1.0
    else:
        sin_p, cos_p = math.sin(omega * t), math.cos(omega * t)
        s_int = sin_p / omega
        c_int = 2.0 * math.sin(omega * t / 2.0) ** 2 / omega
    vfx = vx * cos_p + vy * sin_p
    vfy = vy * cos_p - vx * sin_p
    dx = vx * s_int + vy * c_int
    dy = vy * s_int - vx * c_int
    return {
        "particle_id": pid, "mass": m, "initial_velocity_x": vx, "initial_velocity_y": vy,
        "initial_position_x": x, "initial_position_y": y, "charge": q,
        "magnetic_field_strength": b, "simulation_time": t,
        "final_velocity_x": vfx, "final_velocity_y": vfy,
        "final_position_x": x + dx, "final_position_y": y + dy,
        "kinetic_energy": 0.5 * m * (vfx * vfx + vfy * vfy),
        "displacement": math.hypot(dx, dy), "trajectory_length": math.hypot(vx, vy) * t,
    }


def generate_loop(n: int, cfg: GenerationConfig, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for pid in range(n):
        rows.append(particle_row(
            pid, rng.uniform(*cfg.mass_range), rng.uniform(*cfg.velocity_x_range),
            rng.uniform(*cfg.velocity_y_range), rng.uniform(*cfg.position_x_range),
            rng.uniform(*cfg.position_y_range), rng.choice(cfg.charge_values),
            rng.uniform(*cfg.magnetic_field_range), rng.uniform(*cfg.simulation_time_range)))
    return pd.DataFrame(rows)


def check_same_physics(cfg: GenerationConfig) -> None:
    """The baseline must compute what nnlab computes, or the ratio means nothing."""
    df = generate_particle_data(500, cfg, seed=1)
    ref = pd.DataFrame([particle_row(*r) for r in df[REQUIRED_COLUMNS[:9]].itertuples(index=False)])
    np.testing.assert_allclose(df.to_numpy(float), ref[REQUIRED_COLUMNS].to_numpy(float),
                               rtol=1e-9, atol=1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--loop-n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cfg = GenerationConfig()
    check_same_physics(cfg)

    nnlab_times = []
    for i in range(args.repeat):
        start = time.perf_counter()
        df = generate_particle_data(args.n, cfg, seed=i)
        nnlab_times.append(time.perf_counter() - start)
        assert len(df) == args.n
        del df

    start = time.perf_counter()
    generate_loop(args.loop_n, cfg, seed=0)
    loop_s = (time.perf_counter() - start) * args.n / args.loop_n

    nnlab_s = min(nnlab_times)
    print(json.dumps({"n": args.n, "nnlab_s": round(nnlab_s, 4), "loop_s_scaled": round(loop_s, 3),
                      "loop_n": args.loop_n, "speedup": round(loop_s / nnlab_s, 1)}))


if __name__ == "__main__":
    main()
