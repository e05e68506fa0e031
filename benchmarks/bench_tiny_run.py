"""A tiny training through the lab against the same network in a plain Keras ``fit``: what a test or a small
search trial costs, and how much of it is Keras' own tracing.

Usage:
    python benchmarks/bench_tiny_run.py [--repeats 5]

Alternating in one process (TensorFlow already loaded, one warm-up of each first),
CPU seconds (``time.process_time``) of:

- ``lab``: :func:`nnlab.runs.execute` of ``hidden_layers=[8]``, 2 epochs, 200
  simulated particles, batch 32, no XLA -- data preparation, the network, every
  lab callback and artifact, the test report;
- ``keras``: the same network (23 -> Dense 8 -> PReLU -> Dense 6) compiled with
  Adam, MSE, the metrics mse/mae/R² and 10 steps per execution, ``fit`` for 2
  epochs on 120 rows with 40 validation rows, then ``clear_session``.

Prints one JSON line: {"repeats", "lab_cpu_s", "keras_cpu_s" (medians), "ratio", "cpus"}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _lab(out: str) -> float:
    from nnlab.config import resolve_config
    from nnlab.runs import DataSource, RunSpec, execute

    cfg = resolve_config({"epochs": 2, "hidden_layers": [8], "jit_compile": False, "batch_size": 32})
    started = time.process_time()
    execute(RunSpec(cfg, DataSource.simulated(200, seed=1), output_dir=out))
    return time.process_time() - started


def _keras() -> float:
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    X, y = rng.random((160, 23), dtype=np.float32), rng.random((160, 6), dtype=np.float32)
    started = time.process_time()
    inputs = keras.Input((23,))
    outputs = keras.layers.Dense(6)(keras.layers.PReLU()(keras.layers.Dense(8)(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse", metrics=["mse", "mae", keras.metrics.R2Score()], steps_per_execution=10)
    model.fit(X[:120], y[:120], validation_data=(X[120:], y[120:]), epochs=2, batch_size=32, verbose=0)
    keras.backend.clear_session()
    gc.collect()
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    lab, plain = [], []
    with tempfile.TemporaryDirectory() as out:
        _lab(out), _keras()  # warm-up: imports, first traces
        for i in range(args.repeats):
            lab.append(_lab(out))
            plain.append(_keras())
            print(f"repeat {i + 1}/{args.repeats}: lab {lab[-1]:.2f} s, keras {plain[-1]:.2f} s of CPU",
                  file=sys.stderr, flush=True)
    lab_s, keras_s = statistics.median(lab), statistics.median(plain)
    print(json.dumps({"repeats": args.repeats, "lab_cpu_s": round(lab_s, 3), "keras_cpu_s": round(keras_s, 3),
                      "ratio": round(lab_s / keras_s, 2), "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
