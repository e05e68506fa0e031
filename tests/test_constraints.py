"""Weight constraints on whole tensors, James-Stein shrinkage and the config builder."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnlab.config import Config
from nnlab.constraints import (
    AdaptiveOscillationDampener,
    BinaryChangeMax,
    BinaryPrecisionMax,
    JamesSteinShrinkage,
    OscillationDampener,
    WeightConstraintCallback,
    build_constraint_callback,
    build_constraints,
    james_stein_shrink,
    round_to_bits,
    significant_bits,
)
from nnlab.errors import ConfigError

EXAMPLE = np.float32([[0.125344, -0.875444], [1.5444, 0.75444]])


def bits_of(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def apply_sequence(constraint, values):
    """Apply a constraint to each array in turn (one weight tensor); return the last output."""
    out = None
    for v in values:
        out = constraint.apply(np.asarray(v, np.float32))
    return out


# ---------------------------------------------------------------------------
# Binary constraints


def test_binary_precision_max_example():
    out = BinaryPrecisionMax(8).apply(EXAMPLE)
    assert out.shape == EXAMPLE.shape and out.dtype == np.float32
    assert abs(out[0, 0]) < abs(EXAMPLE[0, 0])
    assert (significant_bits(out) <= 8).all()
    np.testing.assert_array_equal(out, round_to_bits(EXAMPLE, 8))


@pytest.mark.parametrize("rounding", ["truncate", "nearest"])
def test_binary_precision_max_compiled_matches_bit_function_on_subnormals(rounding):
    x = np.array([1e-40, -3e-42, 1.4e-45, 5.877e-39, 0.3, -0.0], dtype=np.float32)
    out = BinaryPrecisionMax(3, rounding=rounding).apply(x)
    np.testing.assert_array_equal(bits_of(out), bits_of(round_to_bits(x, 3, rounding=rounding)))


def test_binary_precision_max_stochastic_is_seeded_and_varies_between_applications():
    x = np.linspace(0.1, 1.0, 500, dtype=np.float32)
    a, b = BinaryPrecisionMax(4, rounding="stochastic", seed=3), BinaryPrecisionMax(4, rounding="stochastic", seed=3)
    first_a, first_b = a.apply(x), b.apply(x)
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.array_equal(a.apply(x), first_a)  # a new draw each application
    assert (significant_bits(first_a) <= 4).all()


def test_binary_change_max_example_and_first_application_only_records():
    limit = BinaryChangeMax(1)
    previous = np.float32([[1.0, -0.7], [1.2, -1.4]])
    np.testing.assert_array_equal(limit.apply(previous), previous)
    current = np.float32([[99.5123123, -0.7], [1.2, -1.4]])
    out = limit.apply(current)
    assert abs(out[0, 0]) < abs(current[0, 0])
    assert out[0, 0] == 96.0  # 1 has 1 significant bit: 99.51 keeps 1 + 1
    allowed = significant_bits(previous) + 1
    assert (significant_bits(out) <= allowed).all()
    assert out.shape == (2, 2) and out.dtype == np.float32


def test_binary_change_max_compares_with_its_last_output():
    limit = BinaryChangeMax(2)
    limit.apply(np.float32([0.5]))
    assert limit.apply(np.float32([0.95])).tolist() == [0.875]  # 0.5 has 1 bit: 0.95 keeps 3
    assert limit.apply(np.float32([0.95])).tolist() == [0.9375]  # 0.875 has 3: now 5


def test_binary_change_max_lets_zero_weights_move():
    limit = BinaryChangeMax(0)
    apply_sequence(limit, [[0.0, 0.0]])
    assert limit.apply(np.float32([0.3, -0.7])).tolist() == [0.25, -0.5]


def test_per_key_state_and_shape_checks():
    limit = BinaryChangeMax(1)
    limit.apply(np.float32([1.0]), key="a")
    limit.apply(np.float32([1.0, 1.0]), key="b")  # another tensor, its own state
    with pytest.raises(ValueError, match="shape"):
        limit.apply(np.float32([1.0, 2.0, 3.0]), key="a")
    limit.reset_state()
    np.testing.assert_array_equal(limit.apply(np.float32([1.7, 0.3, 3.3]), key="a"), np.float32([1.7, 0.3, 3.3]))


# ---------------------------------------------------------------------------
# Oscillation dampeners


def ref_clear_lowest_set_bits(x: np.float32, n: int) -> np.float32:
    i = int(np.array([x], np.float32).view(np.uint32)[0])
    for _ in range(n):
        if i & 0x7FFFFF:
            i &= i - 1
    return np.array([i], np.uint32).view(np.float32)[0]


@pytest.mark.parametrize("dampener_class", [OscillationDampener, AdaptiveOscillationDampener])
def test_dampener_reduces_an_oscillating_weight_and_leaves_monotone_ones(dampener_class):
    dampener = dampener_class()
    out = apply_sequence(dampener, [[0.41], [0.51], [0.31], [0.81]])
    assert out[0] < np.float32(0.81)
    monotone = dampener_class()
    for value in (0.1, 0.2, 0.3, 0.4, 0.5):
        assert monotone.apply(np.float32([value]))[0] == np.float32(value)


@pytest.mark.parametrize("dampener_class", [OscillationDampener, AdaptiveOscillationDampener])
def test_dampeners_keep_shapes_dtypes_and_only_clear_mantissa_bits(dampener_class):
    rng = np.random.default_rng(1)
    history = [rng.normal(0, 1, (3, 4, 5)).astype(np.float32) for _ in range(4)]
    dampener = dampener_class()
    out = apply_sequence(dampener, history)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    x, r = bits_of(history[-1]).astype(np.int64), bits_of(out).astype(np.int64)
    assert ((r & ~x) == 0).all() and ((r >> 23) == (x >> 23)).all()
    assert (r != x).any()


def test_dampeners_match_a_per_element_reference_and_report_oscillation():
    rng = np.random.default_rng(2)
    before, previous, current = (rng.normal(0, 0.1, 400).astype(np.float32) for _ in range(3))
    plain, adaptive = OscillationDampener(), AdaptiveOscillationDampener()
    apply_sequence(plain, [before, previous])
    apply_sequence(adaptive, [before, previous])
    state = plain.state_for("default", (400,))
    _, stats = plain.transform(tf.constant(current), state)
    expected_plain, expected_adaptive, oscillating = [], [], 0
    for w, p1, p2 in zip(current, previous, before):
        if (p1 - p2) * (w - p1) < 0:
            oscillating += 1
            mu = np.float32(0.5) * (p1 + p2)
            s = 1.0 - math.exp(-2.0 * abs(float(w - mu)) / max(abs(float(mu)), 1e-8))
            n = max(1, math.floor(1 + s * (int(significant_bits(np.float32([w]))[0]) - 1)))
            expected_plain.append(ref_clear_lowest_set_bits(w, 1))
            expected_adaptive.append(ref_clear_lowest_set_bits(w, n))
        else:
            expected_plain.append(w)
            expected_adaptive.append(w)
    assert float(stats["fraction_oscillating"]) == oscillating > 100
    np.testing.assert_array_equal(adaptive.apply(current), np.float32(expected_adaptive))
    plain_again = OscillationDampener()
    np.testing.assert_array_equal(apply_sequence(plain_again, [before, previous, current]), np.float32(expected_plain))


# ---------------------------------------------------------------------------
# James-Stein


def numpy_james_stein(x: np.ndarray, sigma2: float, target, positive_part: bool) -> np.ndarray:
    x64 = x.astype(np.float64)
    t = x64.mean() if target == "mean" else (0.0 if target == "zero" else float(target))
    p = x64.size
    c = 1.0 - (p - (3 if target == "mean" else 2)) * sigma2 / np.sum((x64 - t) ** 2)
    if positive_part:
        c = max(c, 0.0)
    return t + c * (x64 - t)


@pytest.mark.parametrize("target", ["zero", "mean", 0.25])
@pytest.mark.parametrize("positive_part", [True, False])
@pytest.mark.parametrize("sigma2", [0.01, 0.5, 5.0])
def test_james_stein_matches_numpy_formula(target, positive_part, sigma2):
    x = np.random.default_rng(3).normal(0.4, 1.0, (10, 7)).astype(np.float32)
    out = james_stein_shrink(x, sigma2, target=target, positive_part=positive_part)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, numpy_james_stein(x, sigma2, target, positive_part), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target", ["zero", "mean", -0.5])
def test_james_stein_shrinks_toward_target_without_crossing_it(target):
    x = np.random.default_rng(4).normal(0.2, 0.3, 60).astype(np.float32)
    t = {"zero": 0.0, "mean": float(x.astype(np.float64).mean())}.get(target, target)
    out = james_stein_shrink(x, 10.0, target=target).astype(np.float64)  # large sigma2: c clipped to 0
    np.testing.assert_allclose(out, t, atol=1e-6)
    out = james_stein_shrink(x, 0.02, target=target).astype(np.float64)
    assert (np.abs(out - t) <= np.abs(x - t) + 1e-7).all()
    assert (np.sign(out - t) * np.sign(x - t) >= 0).all()
    assert (np.abs(out - t) < np.abs(x - t)).mean() > 0.9


@pytest.mark.parametrize("target", ["zero", "mean"])
def test_james_stein_has_lower_mean_squared_error_than_raw_values(target):
    rng = np.random.default_rng(5)
    p, sigma, repeats = 50, 1.0, 200
    theta = rng.normal(0.5, 0.7, p)
    raw_error = shrunk_error = 0.0
    for _ in range(repeats):
        x = (theta + rng.normal(0, sigma, p)).astype(np.float32)
        shrunk = james_stein_shrink(x, sigma**2, target=target).astype(np.float64)
        raw_error += np.sum((x - theta) ** 2)
        shrunk_error += np.sum((shrunk - theta) ** 2)
    assert shrunk_error < 0.9 * raw_error


def test_james_stein_small_or_constant_tensors_are_not_shrunk():
    for values in ([3.0], [1.0, 2.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]):
        x = np.float32(values)
        np.testing.assert_array_equal(james_stein_shrink(x, 1.0, target="mean"), x)
    np.testing.assert_array_equal(james_stein_shrink(np.float32([3.0, 4.0, 5.0]), 0.0), np.float32([3.0, 4.0, 5.0]))


def test_james_stein_update_estimates_noise_from_the_change():
    rng = np.random.default_rng(6)
    first = rng.normal(0, 1, 200).astype(np.float32)
    second = (first + rng.normal(0, 0.3, 200)).astype(np.float32)
    shrink = JamesSteinShrinkage(target="zero", noise_variance="update")
    np.testing.assert_array_equal(shrink.apply(first), first)  # first application records
    change = second.astype(np.float64) - first.astype(np.float64)
    expected = numpy_james_stein(second, change.var(), "zero", True)
    np.testing.assert_allclose(shrink.apply(second), expected, rtol=1e-6)


# ---------------------------------------------------------------------------
# Non-finite weights


ALL_CONSTRAINTS = [
    lambda: BinaryPrecisionMax(4),
    lambda: BinaryPrecisionMax(4, rounding="stochastic", seed=1),
    lambda: BinaryChangeMax(1, rounding="nearest"),
    OscillationDampener,
    AdaptiveOscillationDampener,
    lambda: JamesSteinShrinkage(target="mean", noise_variance="update"),
    lambda: JamesSteinShrinkage(target="zero", noise_variance=0.1),
]


@pytest.mark.parametrize("make", ALL_CONSTRAINTS)
def test_nan_and_inf_pass_through_unchanged(make):
    constraint = make()
    rng = np.random.default_rng(7)
    history = []
    for _ in range(4):
        w = rng.normal(0, 1, 32).astype(np.float32)
        w[[3, 10, 20]] = [np.nan, np.inf, -np.inf]
        history.append(w)
    out = apply_sequence(constraint, history)
    np.testing.assert_array_equal(bits_of(out)[[3, 10, 20]], bits_of(history[-1])[[3, 10, 20]])
    assert np.isfinite(np.delete(out, [3, 10, 20])).all()


# ---------------------------------------------------------------------------
# Keras usage, serialization, validation


def test_stateless_constraints_work_as_keras_kernel_constraints_in_graph_mode():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(8, kernel_constraint=BinaryPrecisionMax(5, rounding="nearest")),
            keras.layers.Dense(1, kernel_constraint=JamesSteinShrinkage(noise_variance=1e-3)),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    assert not model.run_eagerly
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    model.fit(x, x.sum(axis=1), epochs=1, batch_size=16, verbose=0)
    assert (significant_bits(model.layers[0].kernel.numpy()) <= 5).all()


@pytest.mark.parametrize("make", [lambda: BinaryChangeMax(2), OscillationDampener, JamesSteinShrinkage])
def test_stateful_constraints_refuse_keras_use(make):
    with pytest.raises(TypeError, match="WeightConstraintCallback"):
        make()(tf.ones((2, 2)))


@pytest.mark.parametrize(
    "constraint",
    [
        BinaryPrecisionMax(7, rounding="stochastic", seed=4),
        BinaryChangeMax(3, rounding="nearest"),
        OscillationDampener(),
        AdaptiveOscillationDampener(),
        JamesSteinShrinkage(target=0.5, noise_variance=0.2, positive_part=False),
    ],
)
def test_keras_serialization_round_trip(constraint):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(constraint))
    assert type(restored) is type(constraint) and restored.get_config() == constraint.get_config()


@pytest.mark.parametrize(
    "make",
    [
        lambda: BinaryPrecisionMax(0),
        lambda: BinaryPrecisionMax(25),
        lambda: BinaryPrecisionMax(8, rounding="up"),
        lambda: BinaryChangeMax(-1),
        lambda: BinaryChangeMax(True),
        lambda: JamesSteinShrinkage(target="median"),
        lambda: JamesSteinShrinkage(noise_variance=-1.0),
        lambda: JamesSteinShrinkage(noise_variance="estimate"),
        lambda: james_stein_shrink(np.float32([1.0]), "update"),
    ],
)
def test_bad_constraint_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


# ---------------------------------------------------------------------------
# Builder


def names(constraints) -> list[str]:
    return [c.name for c in constraints]


def test_builder_defaults_give_adaptive_dampener_change_and_precision_limits():
    built = build_constraints(None)
    assert names(built) == ["adaptive_oscillation_dampener", "binary_change_max", "binary_precision_max"]
    assert built[1].max_additional_bits == 16 and built[2].max_bits == 24


@pytest.mark.parametrize(
    ("plain", "adaptive", "expected"),
    [(True, True, ["adaptive_oscillation_dampener"]), (True, False, ["oscillation_dampener"]),
     (False, True, ["adaptive_oscillation_dampener"]), (False, False, [])],
)
def test_builder_uses_at_most_one_dampener(plain, adaptive, expected):
    flat = {
        "enable_weight_oscillation_dampener": plain,
        "use_adaptive_oscillation_dampener": adaptive,
        "enable_binary_change_max": False,
        "enable_binary_precision_max": False,
    }
    assert names(build_constraints(flat)) == expected


def test_builder_maps_every_key():
    cfg = Config.from_flat(
        {
            "use_adaptive_oscillation_dampener": False,
            "max_binary_digits": 9,
            "max_additional_binary_digits": 2,
            "binary_rounding": "stochastic",
            "enable_james_stein": True,
            "james_stein_target": "mean",
            "james_stein_noise_variance": 0.05,
            "constraint_interval": 3,
            "constraint_targets": "kernel",
            "seed": 11,
        }
    )
    built = build_constraints(cfg)
    assert names(built) == ["oscillation_dampener", "binary_change_max", "binary_precision_max", "james_stein"]
    change, precision, js = built[1:]
    assert (change.max_additional_bits, change.rounding) == (2, "stochastic")
    assert (precision.max_bits, precision.rounding) == (9, "stochastic")
    assert change.seed != precision.seed and None not in (change.seed, precision.seed)
    assert (js.target, js.noise_variance, js.stateful) == ("mean", 0.05, False)
    callback = build_constraint_callback(cfg)
    assert isinstance(callback, WeightConstraintCallback)
    assert (callback.interval, callback.targets) == (3, "kernel")


def test_builder_returns_no_callback_when_nothing_is_enabled_and_rejects_bad_keys():
    off = {
        "enable_weight_oscillation_dampener": False,
        "use_adaptive_oscillation_dampener": False,
        "enable_binary_change_max": False,
        "enable_binary_precision_max": False,
    }
    assert build_constraint_callback(off) is None
    with pytest.raises(ConfigError, match="max_binary_digit"):
        build_constraints({"max_binary_digit": 8})
    with pytest.raises(ConfigError, match="binary_rounding"):
        build_constraints({"binary_rounding": "up"})


# ---------------------------------------------------------------------------
# Docstring examples


@pytest.mark.parametrize(
    "module_name",
    ["bits", "base", "binary", "oscillation", "james_stein", "callback", "builder", "__init__"],
)
def test_docstring_examples_run(module_name):
    import doctest
    import importlib

    name = "nnlab.constraints" if module_name == "__init__" else f"nnlab.constraints.{module_name}"
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
