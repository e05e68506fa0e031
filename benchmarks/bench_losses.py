"""Adaptive loss: a fit with physics_aware AdaptiveLoss + callback against plain "mse".

Usage:
    python benchmarks/bench_losses.py [--repeats 7] [--epochs 5] [--samples 5000]
        [--features 23] [--targets 6] [--batch-size 128] [--strategy physics_aware]
        [--steady-pairs 20]

Both sides fit the same network (the default ``hidden_layers`` and activation of
``nnlab.config.ModelConfig``, Adam at the default learning rate) on the same
synthetic regression data (a fixed random nonlinear map, features -> targets,
plus a 20 % validation set), compiled with the same metrics
``["mse", "mae", R2Score()]`` in graph mode; the only difference is the loss
(``AdaptiveLoss`` and its ``AdaptiveLossCallback`` versus the string "mse").
Each timed run builds a fresh model and times ``model.fit`` end to end
(tracing included). One untimed warm-up of each comes first; the timed runs
alternate which side goes first.

Prints one JSON line: {"strategy", "epochs", "samples", "features", "targets",
"batch_size", "hidden_layers", "repeats", "adaptive_median_s", "mse_median_s",
"ratio", "target_ratio", "within_target", "ratio_of_min", "cpu_ratio", "steady_pairs",
"adaptive_epoch_median_s", "mse_epoch_median_s", "epoch_ratio", "adaptive_runs_s",
"mse_runs_s", "device", "tensorflow"}. ``ratio`` = adaptive_median_s / mse_median_s
is the acceptance figure (whole fits of fresh models, tracing included);
``ratio_of_min`` compares the fastest fit of each side (least disturbed by other
load); ``cpu_ratio`` compares median process CPU seconds of those fits (work
done, insensitive to waiting for a shared CPU); ``epoch_ratio`` is the median of paired ratios of one-epoch fits of
already-traced models (the steady-state cost of the loss and its callback).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import nnlab  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import keras
import numpy as np
import tensorflow as tf

from nnlab.config import ModelConfig
from nnlab.losses import AdaptiveLoss, AdaptiveLossCallback

TARGET_RATIO = 1.05


def make_data(samples: int, features: int, targets: int, seed: int = 0):
    """Train/validation arrays from a fixed random two-layer map with noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)).astype("float32")
    hidden = np.tanh(x @ rng.normal(size=(features, 32)) / np.sqrt(features))
    y = (hidden @ rng.normal(size=(32, targets)) + 0.1 * rng.normal(size=(samples, targets))).astype("float32")
    n_val = samples // 5
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val]


def build_model(config: ModelConfig, features: int, targets: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    layers: list[keras.layers.Layer] = [keras.Input((features,))]
    for width in config.hidden_layers:
        if config.activation == "prelu":
            layers += [keras.layers.Dense(width), keras.layers.PReLU()]
        else:
            layers.append(keras.layers.Dense(width, activation=config.activation))
    layers.append(keras.layers.Dense(targets))
    return keras.Sequential(layers)


def compiled_model(kind: str, data, args, config: ModelConfig):
    """A fresh compiled model and its fit callbacks for one side of the comparison."""
    x, y, _, _ = data
    model = build_model(config, x.shape[1], y.shape[1])
    if kind == "adaptive":
        loss = AdaptiveLoss()
        callbacks = [AdaptiveLossCallback(loss, args.strategy)]
    else:
        loss, callbacks = "mse", []
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=loss,
        metrics=["mse", "mae", keras.metrics.R2Score()],
    )
    return model, callbacks


def timed_fit(model, callbacks, data, args, epochs: int) -> tuple[float, float]:
    """Wall and process-CPU seconds of one fit."""
    x, y, x_val, y_val = data
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=callbacks,
        verbose=0,
    )
    return time.perf_counter() - start, time.process_time() - cpu_start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed fits per side")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--features", type=int, default=23)
    parser.add_argument("--targets", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--strategy", default="physics_aware")
    parser.add_argument("--steady-pairs", type=int, default=20, help="paired one-epoch fits, steady state")
    args = parser.parse_args(argv)

    config = ModelConfig()
    data = make_data(args.samples, args.features, args.targets)
    kinds = ("adaptive", "mse")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu_times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for kind in kinds:  # warm-up: first-use costs of TensorFlow are not the loss's
        timed_fit(*compiled_model(kind, data, args, config), data, args, args.epochs)
    for repeat in range(args.repeats):
        # Alternate the order so drift (thermal, other load) hits both sides alike.
        for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
            wall, cpu = timed_fit(*compiled_model(kind, data, args, config), data, args, args.epochs)
            times[kind].append(wall)
            cpu_times[kind].append(cpu)

    # Steady state: one already-traced model per side, one-epoch fits in tight
    # alternation; the median of the paired ratios cancels slow load changes.
    steady = {kind: compiled_model(kind, data, args, config) for kind in kinds}
    for kind in kinds:
        timed_fit(*steady[kind], data, args, 1)  # traces
    epoch_times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for pair in range(args.steady_pairs):
        for kind in kinds if pair % 2 == 0 else kinds[::-1]:
            epoch_times[kind].append(timed_fit(*steady[kind], data, args, 1)[0])
    paired = [a / m for a, m in zip(epoch_times["adaptive"], epoch_times["mse"])]

    adaptive, mse = statistics.median(times["adaptive"]), statistics.median(times["mse"])
    gpus = tf.config.list_physical_devices("GPU")
    print(
        json.dumps(
            {
                "strategy": args.strategy,
                "epochs": args.epochs,
                "samples": args.samples,
                "features": args.features,
                "targets": args.targets,
                "batch_size": args.batch_size,
                "hidden_layers": config.hidden_layers,
                "repeats": args.repeats,
                "adaptive_median_s": round(adaptive, 4),
                "mse_median_s": round(mse, 4),
                "ratio": round(adaptive / mse, 4),
                "target_ratio": TARGET_RATIO,
                "within_target": adaptive / mse <= TARGET_RATIO,
                # Minimums are the least disturbed by other load on a shared machine.
                "ratio_of_min": round(min(times["adaptive"]) / min(times["mse"]), 4),
                "cpu_ratio": round(statistics.median(cpu_times["adaptive"]) / statistics.median(cpu_times["mse"]), 4),
                "steady_pairs": args.steady_pairs,
                "adaptive_epoch_median_s": round(statistics.median(epoch_times["adaptive"]), 4),
                "mse_epoch_median_s": round(statistics.median(epoch_times["mse"]), 4),
                "epoch_ratio": round(statistics.median(paired), 4),
                "adaptive_runs_s": [round(t, 4) for t in times["adaptive"]],
                "mse_runs_s": [round(t, 4) for t in times["mse"]],
                "device": f"{len(gpus)} GPU" if gpus else f"CPU ({os.cpu_count()} cores)",
                "tensorflow": tf.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
