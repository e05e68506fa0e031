"""Test R² of the default training run with each lab feature switched off, and by data size.

Usage:
    python benchmarks/feature_effects.py [--epochs 150] [--particles 2000]
                                         [--sizes 4000,8000] [--only NAME,...]

Every variant trains the default configuration (ml_config/, every lab feature on)
with the same seed and data, changing one thing: one feature off, all features
off (plain MSE, no constraints), or the number of particles. Prints one JSON
line per variant as it finishes, then a summary line with the differences to
the default run: ``{"variant", "particles", "test_r2", "best_val_r2",
"train_mse_last", "val_mse_last", "seconds"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import nnlab  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nnlab.config import load_config  # noqa: E402
from nnlab.data import complete_data_pipeline  # noqa: E402
from nnlab.model import AdvancedNeuralNetwork  # noqa: E402
from nnlab.runs import train_with_tracking  # noqa: E402

OFF = {
    "oscillation_dampeners_off": {"enable_weight_oscillation_dampener": False,
                                  "use_adaptive_oscillation_dampener": False},
    "binary_change_max_off": {"enable_binary_change_max": False},
    "binary_precision_max_off": {"enable_binary_precision_max": False},
    "plain_mse_loss": {"loss_weighting_strategy": "none"},
    "lr_plateau_off": {"reduce_lr_on_plateau": False},
    "all_lab_features_off": {"enable_weight_oscillation_dampener": False,
                             "use_adaptive_oscillation_dampener": False, "enable_binary_change_max": False,
                             "enable_binary_precision_max": False, "loss_weighting_strategy": "none"},
}


def run_variant(name: str, overrides: dict, particles: int, epochs: int, out: Path) -> dict:
    cfg = load_config(overrides={"epochs": epochs, **overrides})
    data = complete_data_pipeline(num_particles=particles, config=cfg.generation,
                                  seed=cfg.generation.random_seed)
    model = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], cfg)
    start = time.perf_counter()
    results = train_with_tracking(model, *data, cfg, data=data, output_dir=out, verbose=0)
    history = results["training"]["history"]
    return {
        "variant": name,
        "particles": particles,
        "test_r2": round(results["test"]["scaled"]["r2"], 5),
        "best_val_r2": round(results["performance_summary"]["best_r2"], 5),
        "train_mse_last": round(history["mse"][-1], 5),
        "val_mse_last": round(history["val_mse"][-1], 5),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--sizes", default="4000,8000", help="extra data sizes for the default config")
    parser.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    args = parser.parse_args()

    variants = [("default", {}, args.particles)]
    variants += [(name, overrides, args.particles) for name, overrides in OFF.items()]
    variants += [(f"default_{n}_particles", {}, int(n)) for n in args.sizes.split(",") if n]
    if args.only:
        keep = set(args.only.split(","))
        variants = [v for v in variants if v[0] in keep]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides, particles in variants:
            row = run_variant(name, overrides, particles, args.epochs, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = next((r["test_r2"] for r in rows if r["variant"] == "default"), None)
    print(json.dumps({"summary": {r["variant"]: {"test_r2": r["test_r2"],
                                                 "delta_vs_default": None if base is None
                                                 else round(r["test_r2"] - base, 5)} for r in rows}}))


if __name__ == "__main__":
    main()
