"""Per-step constraints (constraint_schedule = "step") and precision policies."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnlab.config import resolve_config
from nnlab.constraints import (
    BinaryChangeMax,
    BinaryPrecisionMax,
    StepConstraints,
    build_constraint_callback,
    build_step_constraints,
    significant_bits,
)
from nnlab.constraints.bits import hash_noise, mix32, round_bits_of_int
from nnlab.constraints.step import STEP_LOG_KEY
from nnlab.model import AdvancedNeuralNetwork
import _forked

PURE = {  # only the binary limits: nothing epoch-level
    "enable_weight_oscillation_dampener": False,
    "use_adaptive_oscillation_dampener": False,
    "enable_james_stein": False,
}


def _data(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype("float32")
    y = np.stack([X[:, 0] ** 2 + X[:, 1], np.sin(X[:, 2]) - X[:, 3]], axis=1).astype("float32")
    return X[: n // 2], y[: n // 2], X[n // 2:], y[n // 2:]


def _fit(overrides: dict, *, epochs: int = 2):
    config = {"hidden_layers": [16, 8], "constraint_schedule": "step", "steps_per_execution": 4,
              "jit_compile": True, "enable_binary_change_max": False, "seed": 5, **PURE, **overrides}
    net = AdvancedNeuralNetwork((6,), 2, config)
    results = net.train_with_custom_constraints(*_data(), epochs=epochs, batch_size=32, verbose=0)
    return net, results


def _np_mix32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    mask = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & mask
    x ^= x >> 15
    x = (x * 0x846CA68B) & mask
    x ^= x >> 16
    return x.astype(np.uint32)


# -- bit-exactness inside model.fit --------------------------------------------

@pytest.mark.parametrize("rounding,bits", [("truncate", 3), ("nearest", 4), ("stochastic", 2)])
def test_every_weight_has_at_most_k_bits_after_a_step_fit(rounding, bits):
    # XLA on, 4 steps per execution: the rounding runs inside the compiled multi-step call.
    net, results = _fit({"binary_rounding": rounding, "max_binary_digits": bits})
    weights = net.model.trainable_weights
    assert {w.path.rsplit("/", 1)[-1] for w in weights} >= {"kernel", "bias"}
    for w in weights:
        assert int(np.max(significant_bits(w.numpy()))) <= bits, w.path
    # A float32-trained network has ~24-bit weights: the limit did bind.
    assert results["final_results"][STEP_LOG_KEY] <= bits
    assert results["constraints_used"] == ["binary_precision_max"]


def test_step_schedule_leaves_the_binary_limits_out_of_the_epoch_chain():
    config = {"constraint_schedule": "step", "enable_james_stein": True}
    with pytest.warns(UserWarning, match="stay epoch-level"):
        resolved = resolve_config(config)
    chain = build_constraint_callback(resolved)
    assert [c.name for c in chain.constraints] == ["adaptive_oscillation_dampener", "james_stein"]
    step = build_step_constraints(resolved)
    assert [c.name for c in step.constraints] == ["binary_change_max", "binary_precision_max"]
    assert build_step_constraints({"constraint_schedule": "epoch"}) is None


def test_pure_step_schedule_warns_nothing_and_epoch_is_the_default():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_config({"constraint_schedule": "step", **PURE})
    assert resolve_config({}).model.constraint_schedule == "epoch"
    assert resolve_config({}).model.precision_policy == "float32"


def test_same_seed_same_weights_different_seed_different_noise():
    overrides = {"binary_rounding": "stochastic", "max_binary_digits": 3}
    a, _ = _fit(overrides, epochs=1)
    b, _ = _fit(overrides, epochs=1)
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # Another seed draws other noise at the same step for the same weight.
    step = a.step_constraints
    i = tf.zeros([64], tf.int32)
    other = StepConstraints(precision_max=BinaryPrecisionMax(3, rounding="stochastic"), seed=step.seed + 1)
    other._iterations = step._iterations
    assert not np.array_equal(step.noise(i, 0, 1).numpy(), other.noise(i, 0, 1).numpy())
    np.testing.assert_array_equal(step.noise(i, 0, 1).numpy(), step.noise(i, 0, 1).numpy())


def test_change_max_limits_each_step_against_the_weight_before_it():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss="mse")
    step = StepConstraints(change_max=BinaryChangeMax(1))
    step.attach(model)
    kernel = model.layers[0].kernel
    kernel.assign(np.full((3, 4), 1.5, np.float32))  # 2 significant bits
    step.sync()
    updated = np.full((3, 4), 1.5 + 2.0**-10, np.float32)  # an update adding low bits
    out = kernel.constraint(tf.constant(updated)).numpy()
    assert np.all(significant_bits(out) <= 3)
    np.testing.assert_array_equal(out, np.full((3, 4), 1.5, np.float32))  # truncated back to 2 + 1 bits
    # The reference follows the constrained value: the next step is limited against it.
    np.testing.assert_array_equal(kernel.constraint.previous.numpy(), out)


def test_change_max_in_fit_and_resync_at_train_begin():
    net, _ = _fit({"enable_binary_change_max": True, "max_additional_binary_digits": 2,
                   "enable_binary_precision_max": False, "binary_rounding": "nearest"}, epochs=1)
    step = net.step_constraints
    for rounding, variable in zip(step._roundings, step._variables):
        # Between steps the reference is the weight itself.
        np.testing.assert_array_equal(rounding.previous.numpy(), variable.numpy())
    variable = step._variables[0]
    variable.assign(variable.numpy() * 3)
    step.on_train_begin()
    np.testing.assert_array_equal(step._roundings[0].previous.numpy(), variable.numpy())


def test_attach_refuses_a_weight_that_already_has_a_constraint():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_constraint=keras.constraints.NonNeg())])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="already has a constraint"):
        StepConstraints(precision_max=BinaryPrecisionMax(4)).attach(model)
    with pytest.raises(ValueError, match="round the same way"):
        StepConstraints(precision_max=BinaryPrecisionMax(4), change_max=BinaryChangeMax(2, rounding="nearest"))


# -- the noise source ----------------------------------------------------------

@pytest.mark.parametrize("jit", [False, True])
def test_hash_matches_a_numpy_reference_with_32_bit_wraparound(jit):
    values = np.arange(0, 2**32, 2**32 // 5000 + 7, dtype=np.uint64).astype(np.uint32)
    fn = tf.function(lambda x: mix32(x), jit_compile=jit)
    np.testing.assert_array_equal(fn(tf.constant(values)).numpy(), _np_mix32(values))


def test_hash_noise_bits_are_uniform():
    noise = hash_noise(tf.constant([200_000]), tf.constant(12345, tf.uint32)).numpy().view(np.uint32)
    for bit in (0, 7, 15, 23, 31):
        frequency = np.mean((noise >> bit) & 1)
        assert abs(frequency - 0.5) < 4 * 0.5 / np.sqrt(noise.size), bit


@pytest.mark.parametrize("source", ["hash", "philox"])
def test_stochastic_rounding_per_step_is_unbiased(source):
    # One weight value, rounded at 2000 different steps (the noise is keyed by the step).
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(256, use_bias=False)])
    model.compile(optimizer="sgd", loss="mse")
    step = StepConstraints(precision_max=BinaryPrecisionMax(3, rounding="stochastic"), seed=9,
                           random_source=source)
    step.attach(model)
    kernel = model.layers[0].kernel
    x = np.float32(1.0 + 2.0**-3 + 2.0**-5 + 2.0**-9)  # between the 3-bit neighbours 1.0 and 1.25
    value = tf.constant(np.full((1, 256), x, np.float32))
    iterations = model.optimizer.iterations

    @tf.function(jit_compile=True)
    def rounded_at(t):
        iterations.assign(t)
        return kernel.constraint(value)

    draws = np.concatenate([rounded_at(tf.constant(t, tf.int64)).numpy().ravel() for t in range(40)])
    assert set(np.unique(draws)) <= {1.0, 1.25}
    p = (x - 1.0) / 0.25
    standard_error = 0.25 * np.sqrt(p * (1 - p) / draws.size)
    assert abs(draws.mean() - x) < 4 * standard_error
    # Different steps draw differently; the same step again draws the same.
    np.testing.assert_array_equal(rounded_at(tf.constant(3, tf.int64)).numpy().ravel(), draws[3 * 256: 4 * 256])
    assert not np.array_equal(draws[:256], draws[256:512])


def test_round_bits_with_hash_noise_is_unbiased_over_elements():
    x = np.float32(0.1)  # 24 significant bits
    i = tf.bitcast(tf.constant(np.full(100_000, x, np.float32)), tf.int32)
    noise = hash_noise(tf.shape(i), tf.constant(777, tf.uint32))
    out = tf.bitcast(round_bits_of_int(i, tf.constant(4), "stochastic", noise), tf.float32).numpy()
    low, high = 0.09375, 0.1015625  # the 4-bit neighbours of 0.1
    assert set(np.unique(out)) == {np.float32(low), np.float32(high)}
    p = (float(x) - low) / (high - low)
    assert abs(out.astype(np.float64).mean() - float(x)) < 4 * (high - low) * np.sqrt(p * (1 - p) / out.size)


# -- precision policies --------------------------------------------------------

@pytest.mark.parametrize("policy,compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_mixed_precision_policy_trains_with_float32_weights(policy, compute):
    net, results = _fit({"precision_policy": policy, "constraint_schedule": "epoch"}, epochs=1)
    dense = net.model.get_layer("dense_1")
    assert dense.compute_dtype == compute and dense.variable_dtype == "float32"
    assert net.model.get_layer("targets").compute_dtype == "float32"
    assert np.isfinite(results["final_results"]["loss"])
    is_loss_scaled = isinstance(net.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_loss_scaled == (policy == "mixed_float16")
    # The policy is per model: a model built afterwards is float32 again.
    assert AdvancedNeuralNetwork((6,), 2, {"hidden_layers": [4]}).model.get_layer("dense_1").compute_dtype == "float32"


def test_step_rounding_under_mixed_bfloat16():
    net, _ = _fit({"precision_policy": "mixed_bfloat16", "binary_rounding": "stochastic", "max_binary_digits": 4},
                  epochs=1)
    for w in net.model.trainable_weights:
        assert int(np.max(significant_bits(w.numpy()))) <= 4


# -- a per-step run through the CLI, killed and resumed -------------------------

def test_step_run_killed_and_resumed_keeps_every_weight_within_k_bits(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import h5py

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = tmp_path / "o"
    args = [sys.executable, str(repo / "main.py"), "--num-particles", "400", "--epochs", "8", "--seed", "3",
            "--quiet", "--output-dir", str(out), "--set", "hidden_layers=[32,16]", "--set", "checkpoint_every=2",
            "--set", "constraint_schedule=step", "--set", "max_binary_digits=3",
            "--set", "binary_rounding=stochastic", "--set", "enable_binary_change_max=false",
            "--set", "use_adaptive_oscillation_dampener=false",
            "--set", "enable_weight_oscillation_dampener=false"]
    proc = _forked.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while True:
        rows = list(out.glob("runs/*/training_results.csv"))
        if rows and sum(1 for _ in open(rows[0])) - 1 >= 3:
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = rows[0].parent
    resumed = _forked.run([sys.executable, str(repo / "main.py"), "--resume", "latest", "--quiet",
                           "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "completed"
    with h5py.File(run_dir / "weights" / "final.weights.h5") as f:
        arrays = []
        # The network's weights (kernels, biases, PReLU slopes), not the optimizer's moments.
        f["layers"].visititems(lambda name, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert len(arrays) == 3 * 2 + 2
    for array in arrays:
        assert int(np.max(significant_bits(np.asarray(array, np.float32)))) <= 3
    import pandas as pd
    results = pd.read_csv(run_dir / "training_results.csv")
    assert results["epoch"].tolist() == list(range(1, 9))
    assert (results[STEP_LOG_KEY] <= 3).all()
