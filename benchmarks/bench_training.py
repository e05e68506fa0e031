"""Training speed: plain Keras fit against nnlab with every lab feature on.

Usage:
    python benchmarks/bench_training.py [--particles 5000] [--epochs 6] [--repeats 2]
                                        [--steps-per-execution N] [--jit-compile true|false]
    python benchmarks/bench_training.py --tensorboard [--particles 12000] [--epochs 8] [--repeats 3]

Same data (scaled, 5000 particles by default), same network (the default
config's hidden layers and activation), same epochs, batch size 128, same
validation data and metrics (mse, mae, R²):

(a) plain Keras: ``model.compile(optimizer=Adam(lr), loss="mse", metrics=...)``
    and ``model.fit`` with default settings;
(b) nnlab: ``train_with_tracking`` with binary precision 16 bits, binary change
    max, the adaptive oscillation dampener, the physics_aware loss, tracking
    files and checkpoints (the default cadence: every ``checkpoint_every``
    epochs, best and final), constraint_interval 1, and the configuration's
    ``steps_per_execution`` / ``jit_compile`` (overridable here).

Time per epoch is the gap between consecutive epoch ends (everything that
happens in an epoch: training, validation, every callback), epochs after the
first; runs alternate a, b, a, b... in one process. Prints one JSON line with
the median per-epoch times and the ratio b/a.

``--tensorboard``: the cost of the ``tensorboard`` default. The default
configuration (default network, constraints every 10 epochs), trained by
``train_with_tracking`` with ``tensorboard`` false and true, alternating, for
fewer than 10 epochs (so no histogram epoch among them). Reports the median
epoch times and their ratio, the time spent inside the TensorBoard sink per
epoch (measured around its ``on_epoch_end``) as a fraction of the epoch, and
the time of one set of weight histograms (what a constraint epoch adds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import nnlab  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import keras  # noqa: E402

from nnlab.config import load_config  # noqa: E402
from nnlab.data import complete_data_pipeline  # noqa: E402
from nnlab.model import AdvancedNeuralNetwork  # noqa: E402
from nnlab.runs import train_with_tracking  # noqa: E402


class EpochEnds(keras.callbacks.Callback):
    """Timestamps of epoch ends; placed last, so it sees every other callback's work."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_begin(self, logs=None):
        self.ends = [time.perf_counter()]

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())

    def per_epoch_after_first(self) -> list[float]:
        gaps = [b - a for a, b in zip(self.ends, self.ends[1:])]
        return gaps[1:]


def plain_keras(data, cfg, epochs: int) -> list[float]:
    net = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], cfg)
    model = net.model  # the same layers; nothing of the lab attached
    model.compile(optimizer=keras.optimizers.Adam(cfg.model.learning_rate), loss="mse",
                  metrics=["mse", "mae", keras.metrics.R2Score(name="r2_score")])
    timer = EpochEnds()
    model.fit(data.X_train, data.y_train, validation_data=(data.X_val, data.y_val), epochs=epochs,
              batch_size=128, callbacks=[timer], verbose=0)
    return timer.per_epoch_after_first()


def nnlab_full(data, cfg, epochs: int, out: Path) -> list[float]:
    net = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], cfg)
    timer = EpochEnds()
    fit = net.train_with_custom_constraints

    def with_timer(*args, callbacks=(), **kwargs):
        return fit(*args, callbacks=[*callbacks, timer], **kwargs)

    net.train_with_custom_constraints = with_timer
    train_with_tracking(net, *data, cfg, data=data, output_dir=out, verbose=0)
    return timer.per_epoch_after_first()


def tensorboard_overhead(particles: int, epochs: int, repeats: int) -> dict:
    """Epoch time with ``tensorboard`` off and on (default config), and the sink's own time."""
    from nnlab.integrations import tensorboard as tb

    inside: list[float] = []
    on_epoch_end = tb.TensorBoardSink.on_epoch_end

    def timed(self, epoch, logs=None):
        started = time.perf_counter()
        on_epoch_end(self, epoch, logs)
        inside.append(time.perf_counter() - started)

    tb.TensorBoardSink.on_epoch_end = timed
    data = complete_data_pipeline(num_particles=particles, seed=0)
    off, on = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            off += nnlab_full(data, load_config(overrides={"epochs": epochs, "tensorboard": False}), epochs,
                              Path(tmp) / f"off{i}")
            on += nnlab_full(data, load_config(overrides={"epochs": epochs, "tensorboard": True}), epochs,
                             Path(tmp) / f"on{i}")
        # One set of histograms of the default network, as a constraint epoch writes them.
        cfg = load_config()
        net = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], cfg)
        sink = tb.TensorBoardSink(Path(tmp) / "hist", lambda: [], jit_compile=cfg.training.jit_compile)
        sink.set_model(net.model)
        sink.on_train_begin()
        histogram_s = []
        for _ in range(5):
            started = time.perf_counter()
            with sink._writer.as_default(step=1):
                sink._histograms()
            sink._writer.flush()
            histogram_s.append(time.perf_counter() - started)
        sink.finish("completed", None)
    a, b = statistics.median(off), statistics.median(on)
    return {
        "mode": "tensorboard", "particles": particles, "epochs": epochs, "repeats": repeats,
        "hidden_layers": cfg.model.hidden_layers, "constraint_interval": cfg.model.constraint_interval,
        "tensorboard_off_epoch_s": round(a, 4), "tensorboard_on_epoch_s": round(b, 4),
        "ratio_on_over_off": round(b / a, 4),
        "sink_s_per_epoch": round(statistics.median(inside), 5),
        "sink_fraction_of_epoch": round(statistics.median(inside) / b, 5),
        "histograms_s": round(statistics.median(histogram_s[1:]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, help="default: 5000; 12000 (the default task) with --tensorboard")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps-per-execution", type=int)
    parser.add_argument("--jit-compile", choices=["true", "false"])
    parser.add_argument("--tensorboard", action="store_true",
                        help="measure the tensorboard default instead (default config, off vs on)")
    args = parser.parse_args()
    if args.tensorboard:
        print(json.dumps(tensorboard_overhead(args.particles or 12000, args.epochs, args.repeats)))
        return
    args.particles = args.particles or 5000

    overrides = {
        "epochs": args.epochs, "batch_size": 128, "constraint_interval": 1,
        "enable_binary_precision_max": True, "max_binary_digits": 16,
        "enable_binary_change_max": True, "enable_weight_oscillation_dampener": True,
        "use_adaptive_oscillation_dampener": True, "loss_weighting_strategy": "physics_aware",
    }
    if args.steps_per_execution is not None:
        overrides["steps_per_execution"] = args.steps_per_execution
    if args.jit_compile is not None:
        overrides["jit_compile"] = args.jit_compile == "true"
    cfg = load_config(overrides=overrides)
    data = complete_data_pipeline(num_particles=args.particles, seed=0)

    plain, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            plain += plain_keras(data, cfg, args.epochs)
            full += nnlab_full(data, cfg, args.epochs, Path(tmp) / f"run{i}")
    a, b = statistics.median(plain), statistics.median(full)
    print(json.dumps({
        "particles": args.particles, "epochs": args.epochs, "repeats": args.repeats,
        "hidden_layers": cfg.model.hidden_layers, "batch_size": 128,
        "steps_per_execution": cfg.training.steps_per_execution, "jit_compile": cfg.training.jit_compile,
        "plain_keras_epoch_s": round(a, 4), "nnlab_all_features_epoch_s": round(b, 4),
        "ratio_nnlab_over_plain": round(b / a, 3),
    }))


if __name__ == "__main__":
    main()
