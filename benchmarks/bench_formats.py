"""Cost of test_metrics.json's "formats": evaluate_formats against the run's test evaluation.

Usage:
    python benchmarks/bench_formats.py [--particles 12000] [--epochs 3] [--repeats 5]

The default network (the shipped configuration), briefly trained on the default
number of particles (test set: 20 % of them), then, in the order of a run:
``AdvancedNeuralNetwork.evaluate_model`` on the test set (what a run does for its
test metrics: a warm-up and 5 timed predictions) followed by
``nnlab.formats.evaluate_formats`` (4 formats: 4 weight casts and 4 predictions of
the test set, weights restored). Both are repeated ``--repeats`` times, alternating;
prints one JSON line with the first (in-run) and median times and the ratio
formats / test evaluation.
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

from nnlab.config import load_config
from nnlab.data import complete_data_pipeline
from nnlab.formats import evaluate_formats
from nnlab.model import AdvancedNeuralNetwork


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, help="default: the configuration's num_particles_default")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = load_config(overrides={"epochs": args.epochs})
    data = complete_data_pipeline(num_particles=args.particles, seed=0)
    net = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], cfg)
    net.compile_model()
    net.train_with_custom_constraints(data.X_train, data.y_train, data.X_val, data.y_val, epochs=args.epochs,
                                      batch_size=cfg.training.batch_size, verbose=0)

    test_s, formats_s, report = [], [], {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        test = net.evaluate_model(data.X_test, data.y_test)
        test_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        report = evaluate_formats(net.model, data.X_test, data.y_test, reference_r2=test["r2"])
        formats_s.append(time.perf_counter() - start)
    a, b = statistics.median(test_s), statistics.median(formats_s)
    print(json.dumps({
        "test_rows": len(data.X_test), "hidden_layers": cfg.model.hidden_layers, "epochs": args.epochs,
        "n_weights": net.model.count_params(), "repeats": args.repeats, "jit_compile": cfg.training.jit_compile,
        "test_eval_first_s": round(test_s[0], 4), "formats_first_s": round(formats_s[0], 4),
        "test_eval_s": round(a, 4), "formats_s": round(b, 4), "ratio_formats_over_test_eval": round(b / a, 3),
        "test_r2": round(test["r2"], 4),
        "r2_drop": {name: float(f"{entry['r2_drop']:.3g}") for name, entry in report.items()},
    }))


if __name__ == "__main__":
    main()
