"""A tiny training through the lab against the same network in a plain Keras ``fit``: what a test or a small
search trial costs, and how much of it is Keras' own tracing.

Usage:
    python benchmarks/bench_tiny_run.py [--repeats 5]

Alternating in one process (TensorFlow already loaded, one warm-up of each first),
CPU seconds (``time.process_time``) of:

- ``lab``: :func:`nnlab.runs.execute` of ``hidden_layers=[8]``, 2 epochs, 200
  simulated particles, batch 32, no XLA -- data preparation, the network, every
  lab callback and artifact, the test report;
- ``keras``: the same network (``AdvancedNeuralNetwork(...).model``, nothing of the lab
  attached) on the same prepared rows, compiled with Adam, MSE, the metrics mse/mae/R² and the
  configuration's steps per execution, ``fit`` with validation, then ``clear_session``.

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


def _config():
    from nnlab.config import resolve_config

    return resolve_config({"epochs": 2, "hidden_layers": [8], "jit_compile": False, "batch_size": 32})


def _lab(out: str) -> float:
    from nnlab.runs import DataSource, RunSpec, execute

    started = time.process_time()
    execute(RunSpec(_config(), DataSource.simulated(200, seed=1), output_dir=out))
    return time.process_time() - started


def _keras() -> float:
    import keras

    from nnlab.model import AdvancedNeuralNetwork
    from nnlab.runs import DataSource

    cfg = _config()
    data = DataSource.simulated(200, seed=1).prepare()
    started = time.process_time()
    model = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], cfg).model  # the same layers
    model.compile(optimizer=keras.optimizers.Adam(cfg.model.learning_rate), loss="mse",
                  metrics=["mse", "mae", keras.metrics.R2Score(name="r2_score")],
                  steps_per_execution=cfg.training.steps_per_execution)
    model.fit(data.X_train, data.y_train, validation_data=(data.X_val, data.y_val), epochs=cfg.training.epochs,
              batch_size=cfg.training.batch_size, verbose=0)
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
