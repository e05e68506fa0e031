"""Benchmark: vectorised in-graph weight constraints vs per-element Python.

For each constraint, the median time to apply it to 1,000,000 float32 weights
(after warm-up, stateful ones with a full history) is measured side by side
with a straightforward per-element Python implementation of the same rule
(``struct`` bit twiddling, one weight at a time) timed on 20,000 weights and
scaled by 50. The Python results are checked against the vectorised ones on
the same 20,000 weights, so both sides compute the same thing. Also timed: the
whole chain as WeightConstraintCallback runs it (one compiled call over a
model's weights, 1M in total), as a plain graph and under XLA.

``--per-step``: the cost of ``constraint_schedule = "step"`` instead. The
default network (512-384-256-128-64 PReLU) trains on default-sized data
(7,680 rows, batch 128, steps_per_execution 10, XLA) with no constraint
(float32, the baseline) and with BinaryPrecisionMax after every step:
truncate, nearest, and stochastic with each random source (``hash``: a
counter-based hash of (seed, step, element); ``philox``: TensorFlow's
stateless Philox). The variants' epochs are interleaved round by round in one
process, and the median epoch time of each is divided by float32's.

Prints one JSON line.

    python benchmarks/bench_constraints.py [--weights 1000000] [--python-weights 20000] [--repeats 30]
    python benchmarks/bench_constraints.py --per-step [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import struct
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nnlab.constraints import (  # noqa: E402
    AdaptiveOscillationDampener,
    BinaryChangeMax,
    BinaryPrecisionMax,
    JamesSteinShrinkage,
    OscillationDampener,
    WeightConstraintCallback,
)
from nnlab.constraints.bits import round_bits_of_int  # noqa: E402

TARGET_MS = 20.0
TARGET_SPEEDUP = 100.0

# ---------------------------------------------------------------------------
# Per-element Python: the baseline, one weight at a time


def _to_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _from_bits(i: int) -> float:
    return struct.unpack("<f", struct.pack("<I", i))[0]


def py_significant_bits(x: float) -> int:
    i = _to_bits(x)
    exponent, mantissa = (i >> 23) & 0xFF, i & 0x7FFFFF
    if exponent == 0xFF:
        return 0
    s = mantissa | 0x800000 if exponent else mantissa
    if s == 0:
        return 0
    bits = f"{s:b}"
    return len(bits.rstrip("0"))


def py_round_to_bits(x: float, k: int, rounding: str, noise: int = 0) -> float:
    i = _to_bits(x)
    exponent, mantissa = (i >> 23) & 0xFF, i & 0x7FFFFF
    s = mantissa | 0x800000 if exponent else mantissa
    if exponent == 0xFF or s == 0:
        return x
    k = min(max(k, 1), 24)
    drop = max(0, s.bit_length() - k)
    sign, magnitude = i & 0x80000000, i & 0x7FFFFFFF
    truncated = magnitude >> drop << drop
    if rounding == "truncate" or drop == 0:
        rounded = truncated
    elif rounding == "nearest":
        rest, half = magnitude & ((1 << drop) - 1), 1 << (drop - 1)
        up = rest > half or (rest == half and (s >> drop) & 1)
        rounded = truncated + (1 << drop) if up else truncated
    else:
        rounded = (magnitude + (noise & ((1 << drop) - 1))) >> drop << drop
    if rounded >= 0x7F800000:
        rounded = truncated
    return _from_bits(sign | rounded)


def py_clear_lowest_set_bits(x: float, n: int) -> float:
    i = _to_bits(x)
    if (i >> 23) & 0xFF == 0xFF:
        return x
    for _ in range(n):
        if i & 0x7FFFFF == 0:
            break
        i &= i - 1
    return _from_bits(i)


def py_binary_precision_max(weights, k, rounding, noise):
    return [py_round_to_bits(w, k, rounding, r) for w, r in zip(weights, noise)]


def py_binary_change_max(weights, previous, extra):
    return [py_round_to_bits(w, py_significant_bits(p) + extra, "truncate") for w, p in zip(weights, previous)]


def _oscillating(w, p1, p2) -> bool:
    if not all(map(math.isfinite, (w, p1, p2))):
        return False
    d1, d2 = p1 - p2, w - p1
    return (d1 > 0 and d2 < 0) or (d1 < 0 and d2 > 0)


def py_oscillation_dampener(weights, previous, before):
    return [
        py_clear_lowest_set_bits(w, 1) if _oscillating(w, p1, p2) else w
        for w, p1, p2 in zip(weights, previous, before)
    ]


def py_adaptive_oscillation_dampener(weights, previous, before):
    out = []
    for w, p1, p2 in zip(weights, previous, before):
        if _oscillating(w, p1, p2):
            mu = np.float32(0.5) * (np.float32(p1) + np.float32(p2))
            s = 1.0 - math.exp(-2.0 * abs(w - mu) / max(abs(mu), 1e-8))
            w = py_clear_lowest_set_bits(w, max(1, math.floor(1 + s * (py_significant_bits(w) - 1))))
        out.append(w)
    return out


def py_james_stein_update(weights, previous):
    # Pass 1: mean change and norm over the finite values.
    count = finite = 0
    change_sum = norm2 = 0.0
    for w, p in zip(weights, previous):
        if math.isfinite(w - p):
            count += 1
            change_sum += w - p
        if math.isfinite(w):
            finite += 1
            norm2 += w * w
    mean_change = change_sum / max(count, 1)
    # Pass 2: variance of the change.
    squares = 0.0
    for w, p in zip(weights, previous):
        if math.isfinite(w - p):
            squares += (w - p - mean_change) ** 2
    variance = squares / max(count, 1)
    dof = finite - 2
    factor = max(0.0, 1.0 - dof * variance / norm2) if dof > 0 and norm2 > 0 else 1.0
    # Pass 3: shrink.
    out = []
    for w in weights:
        out.append(w - (1.0 - factor) * w if math.isfinite(w) else w)
    return out


# ---------------------------------------------------------------------------
# Timing


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def timed_apply(constraint, sequence: list[tf.Tensor], repeats: int) -> float:
    """Median ms of constraint.apply; inputs alternate so dampeners find oscillations."""
    for w in sequence:  # warm-up: compile and fill the history
        constraint.apply(w)
    state = {"step": 0}

    def once():
        state["step"] += 1
        out = constraint.apply(sequence[state["step"] % 2])
        out[0].numpy()  # wait for the result (cheap: one element)

    return median_ms(once, repeats)


def bench(args) -> dict:
    rng = np.random.default_rng(0)
    n, n_py = args.weights, args.python_weights
    # Three snapshots of weights drifting with noise: a -> b -> a swings back.
    a = rng.normal(0.0, 0.05, n).astype(np.float32)
    b = (a + rng.normal(0.0, 0.005, n)).astype(np.float32)
    seq = [tf.constant(a), tf.constant(b)]
    history = [a[:n_py], b[:n_py], a[:n_py]]  # before, previous, current (python side)
    scale = n / n_py
    results: dict[str, dict] = {}

    def record(name, constraint, python_fn, vectorised_small):
        ms = timed_apply(constraint, seq, args.repeats)
        py_ms = median_ms(python_fn, max(1, args.python_repeats)) * scale
        py_out = np.asarray(python_fn(), dtype=np.float32)
        same = np.isclose(py_out, np.asarray(vectorised_small), rtol=1e-6, atol=0.0, equal_nan=True)
        results[name] = {
            "median_ms": round(ms, 3),
            "python_ms_scaled": round(py_ms, 1),
            "speedup": round(py_ms / ms, 1),
            # Fraction of the 20k weights on which both sides agree (float64
            # Python vs float32 TensorFlow math may differ at rare floor() edges).
            "agreement": round(float(same.mean()), 6),
        }

    before, previous, current = (h.tolist() for h in history)
    for rounding in ("truncate", "nearest", "stochastic"):
        c = BinaryPrecisionMax(8, rounding=rounding, seed=1)
        noise = [0] * n_py
        if rounding == "stochastic":
            # Same rule, same random bits: feed one draw to both sides.
            noise = rng.integers(0, 2**24, n_py).tolist()
            small = tf.bitcast(
                round_bits_of_int(tf.bitcast(tf.constant(history[2]), tf.int32), 8, "stochastic", tf.constant(noise, tf.int32)),
                tf.float32,
            ).numpy()
        else:
            small = BinaryPrecisionMax(8, rounding=rounding).apply(history[2])
        record(
            f"binary_precision_max_{rounding}", c,
            lambda r=rounding, z=noise: py_binary_precision_max(current, 8, r, z), small,
        )
    prev_rounded = BinaryPrecisionMax(6).apply(history[1]).tolist()

    def vectorised_stateful(constraint, snapshots):
        out = None
        for s in snapshots:
            out = constraint.apply(np.float32(s), key="check")
        return out

    record(
        "binary_change_max", BinaryChangeMax(2),
        lambda: py_binary_change_max(current, prev_rounded, 2),
        vectorised_stateful(BinaryChangeMax(2), [prev_rounded, current]),
    )
    record(
        "oscillation_dampener", OscillationDampener(),
        lambda: py_oscillation_dampener(current, previous, before),
        vectorised_stateful(OscillationDampener(), [before, previous, current]),
    )
    record(
        "adaptive_oscillation_dampener", AdaptiveOscillationDampener(),
        lambda: py_adaptive_oscillation_dampener(current, previous, before),
        vectorised_stateful(AdaptiveOscillationDampener(), [before, previous, current]),
    )
    record(
        "james_stein_update", JamesSteinShrinkage("zero", "update"),
        lambda: py_james_stein_update(current, previous),
        vectorised_stateful(JamesSteinShrinkage("zero", "update"), [previous, current]),
    )
    results["callback_chain"] = bench_callback_chain(args.weights, max(5, args.repeats // 3))
    return results


def bench_callback_chain(n: int, repeats: int) -> dict:
    """One WeightConstraintCallback application (all four constraints) to a
    model of about n weights: median ms, and seconds for the first call
    (tracing, plus compiling under XLA), in graph mode and with XLA."""
    width = int(math.sqrt(n / 2))
    out = {}
    for mode, jit in (("graph", False), ("xla", True)):
        model = keras.Sequential([keras.Input((width,)), keras.layers.Dense(width), keras.layers.Dense(width)])
        callback = WeightConstraintCallback(
            [AdaptiveOscillationDampener(), BinaryChangeMax(4), BinaryPrecisionMax(12), JamesSteinShrinkage()],
            jit_compile=jit,
        )
        callback.set_model(model)
        start = time.perf_counter()
        callback.apply()
        first_s = time.perf_counter() - start
        callback.apply()
        out[mode] = {"median_ms": round(median_ms(callback.apply, repeats), 3), "first_call_s": round(first_s, 2)}
    out["weights"] = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return out


def bench_per_step(rounds: int, epochs_per_round: int = 2) -> dict:
    """Median epoch time of the default network per constraint variant, and its ratio to float32."""
    from nnlab.model import AdvancedNeuralNetwork

    rng = np.random.default_rng(0)
    n_train, n_features, n_targets = 7680, 23, 6
    X = rng.normal(size=(n_train, n_features)).astype(np.float32)
    y = np.tanh(X[:, :n_targets] + 0.5 * X[:, n_targets:2 * n_targets]).astype(np.float32)
    off = {"enable_weight_oscillation_dampener": False, "use_adaptive_oscillation_dampener": False,
           "enable_binary_change_max": False, "enable_james_stein": False, "reduce_lr_on_plateau": False}
    variants = {
        "float32": {**off, "enable_binary_precision_max": False},
        "truncate": {**off, "constraint_schedule": "step", "max_binary_digits": 4, "binary_rounding": "truncate"},
        "nearest": {**off, "constraint_schedule": "step", "max_binary_digits": 4, "binary_rounding": "nearest"},
        "stochastic_hash": {**off, "constraint_schedule": "step", "max_binary_digits": 4,
                            "binary_rounding": "stochastic"},
        "stochastic_philox": {**off, "constraint_schedule": "step", "max_binary_digits": 4,
                              "binary_rounding": "stochastic", "random_source": "philox"},
    }

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    nets, timers = {}, {}
    for name, overrides in variants.items():
        source = overrides.pop("random_source", "hash")
        net = AdvancedNeuralNetwork((n_features,), n_targets, {**overrides, "seed": 1})
        if net.step_constraints is not None:
            net.step_constraints.random_source = source
        net.compile_model()
        nets[name], timers[name] = net, EpochTimes()
        net.model.fit(X, y, batch_size=128, epochs=1, verbose=0)  # trace + XLA compile
    for _ in range(rounds):
        for name, net in nets.items():
            callbacks = [timers[name]] + ([net.step_constraints] if net.step_constraints is not None else [])
            net.model.fit(X, y, batch_size=128, epochs=epochs_per_round, verbose=0, callbacks=callbacks)
    medians = {name: float(np.median(t.times)) for name, t in timers.items()}
    base = medians["float32"]
    return {
        "network": "512-384-256-128-64 prelu", "rows": n_train, "batch_size": 128, "steps_per_execution": 10,
        "jit_compile": True, "bits": 4, "epochs_timed": rounds * epochs_per_round,
        "epoch_s": {k: round(v, 4) for k, v in medians.items()},
        "ratio_vs_float32": {k: round(v / base, 3) for k, v in medians.items() if k != "float32"},
        "targets": {"ratio_at_most": 1.3, "stretch": 1.1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-step", action="store_true",
                        help="measure constraint_schedule=step on the default network instead")
    parser.add_argument("--rounds", type=int, default=6, help="--per-step: interleaved rounds of 2 epochs")
    parser.add_argument("--weights", type=int, default=1_000_000)
    parser.add_argument("--python-weights", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--python-repeats", type=int, default=5)
    args = parser.parse_args()
    if args.per_step:
        result = bench_per_step(args.rounds)
        print(json.dumps({"benchmark": "constraints_per_step", **result, "cpu_count": os.cpu_count(),
                          "tensorflow": tf.__version__, "python": platform.python_version()}))
        return
    results = bench(args)
    constraint_rows = {k: v for k, v in results.items() if "speedup" in v}
    summary = {
        "benchmark": "constraints",
        "weights": args.weights,
        "python_weights": args.python_weights,
        "results": results,
        "max_median_ms": max(v["median_ms"] for v in constraint_rows.values()),
        "min_speedup": min(v["speedup"] for v in constraint_rows.values()),
        "meets_targets": all(
            v["median_ms"] < TARGET_MS and v["speedup"] >= TARGET_SPEEDUP and v["agreement"] >= 0.999
            for v in constraint_rows.values()
        ),
        "targets": {"median_ms_below": TARGET_MS, "speedup_at_least": TARGET_SPEEDUP},
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
