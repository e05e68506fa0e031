"""Float32 bit operations: property tests against exact references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nnlab.constraints.bits import (
    clear_lowest_set_bits,
    count_non_finite,
    round_to_bits,
    significant_bits,
)

FLT_MAX = float(np.finfo(np.float32).max)
PROPERTY = settings(max_examples=100, deadline=None)


# ---------------------------------------------------------------------------
# Strategies: arbitrary finite float32, with subnormals and ±0 well represented


def _from_pattern(pattern: int) -> np.float32:
    return np.array([pattern], dtype=np.uint32).view(np.float32)[0]


finite_patterns = st.integers(0, 2**32 - 1).map(_from_pattern).filter(np.isfinite)
subnormals = st.tuples(st.integers(1, 2**23 - 1), st.booleans()).map(
    lambda t: _from_pattern(t[0] | (0x80000000 if t[1] else 0))
)
finite_float32 = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(np.float32),
    finite_patterns,
    subnormals,
    st.sampled_from([np.float32(0.0), np.float32(-0.0), np.float32(FLT_MAX), np.float32(-FLT_MAX)]),
)
arrays = hnp.arrays(np.float32, st.integers(1, 40), elements=finite_float32)
bit_counts = st.integers(1, 24)
modes = st.sampled_from(["truncate", "nearest", "stochastic"])


# ---------------------------------------------------------------------------
# Exact references (float64 holds every float32 exactly; Python ints for bits)


def ref_significant_bits(x: np.float32) -> int:
    i = int(np.array([x], dtype=np.float32).view(np.uint32)[0])
    exponent, mantissa = (i >> 23) & 0xFF, i & 0x7FFFFF
    if exponent == 0xFF:
        return 0
    s = mantissa | (1 << 23) if exponent else mantissa
    if s == 0:
        return 0
    return s.bit_length() - ((s & -s).bit_length() - 1)


def unit_of(x: float, k: int) -> float:
    """Value of the k-th significant bit position of x (x != 0)."""
    _, exp = math.frexp(abs(x))  # |x| = f * 2**exp, f in [0.5, 1)
    return math.ldexp(1.0, exp - 1 - k + 1)


def ref_round(x: float, k: int, mode: str) -> float:
    if x == 0.0:
        return x
    unit = unit_of(x, k)
    truncated = math.trunc(x / unit) * unit
    if mode == "truncate":
        return truncated
    rounded = round(x / unit) * unit  # Python's round is half-to-even
    return truncated if abs(rounded) > FLT_MAX else rounded


def bits_of(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


# ---------------------------------------------------------------------------
# significant_bits


@PROPERTY
@given(arrays)
def test_significant_bits_matches_reference(x):
    assert significant_bits(x).tolist() == [ref_significant_bits(v) for v in x]


def test_significant_bits_examples():
    x = np.float32([0.0, -0.0, 1.0, 0.75, 0.1, -3.0, 1.5e-45, 2.0**-149 * 6, np.nan, np.inf, -np.inf])
    assert significant_bits(x).tolist() == [0, 0, 1, 2, 24, 2, 1, 2, 0, 0, 0]


# ---------------------------------------------------------------------------
# round_to_bits: the properties of every mode


@PROPERTY
@given(arrays, bit_counts, modes)
def test_rounded_values_have_at_most_k_bits_and_keep_sign(x, k, mode):
    r = round_to_bits(x, k, rounding=mode, seed=3)
    assert r.dtype == np.float32 and r.shape == x.shape
    assert np.all(np.isfinite(r))
    assert (significant_bits(r) <= k).all()
    assert np.array_equal(np.signbit(r), np.signbit(x))
    # Only zeros round to zero: the leading bit is always kept or carried up.
    assert np.array_equal(r == 0, x == 0)


@PROPERTY
@given(arrays, bit_counts, modes)
def test_rounding_is_idempotent(x, k, mode):
    once = round_to_bits(x, k, rounding=mode, seed=5)
    twice = round_to_bits(once, k, rounding=mode, seed=6)
    assert np.array_equal(bits_of(once), bits_of(twice))


@PROPERTY
@given(arrays, modes)
def test_24_bits_is_the_identity(x, mode):
    assert np.array_equal(bits_of(round_to_bits(x, 24, rounding=mode, seed=1)), bits_of(x))


@PROPERTY
@given(arrays, bit_counts)
def test_truncate_shrinks_with_relative_error_below_2_to_1_minus_k(x, k):
    r = round_to_bits(x, k).astype(np.float64)
    x64 = x.astype(np.float64)
    assert (np.abs(r) <= np.abs(x64)).all()
    nonzero = x64 != 0
    assert (np.abs(x64 - r)[nonzero] < 2.0 ** (1 - k) * np.abs(x64[nonzero])).all()
    assert r.tolist() == [ref_round(v, k, "truncate") for v in x64]


@PROPERTY
@given(arrays, bit_counts)
def test_nearest_is_within_half_a_unit_and_matches_reference(x, k):
    r = round_to_bits(x, k, rounding="nearest").astype(np.float64)
    x64 = x.astype(np.float64)
    assert r.tolist() == [ref_round(v, k, "nearest") for v in x64]
    for xv, rv in zip(x64, r):
        unit = unit_of(xv, k) if xv != 0 else 0.0
        if xv != 0 and abs(round(xv / unit) * unit) <= FLT_MAX:  # saturation: tested below
            assert abs(xv - rv) <= 0.5 * unit


@PROPERTY
@given(st.integers(1, 23), st.integers(0, 2**24), st.integers(-149, 100), st.booleans())
def test_nearest_rounds_exact_ties_to_even(k, kept, exponent, negative):
    # A value exactly halfway between two k-bit neighbours: k + 1 significant
    # bits, the last one set.
    significand = ((kept % (1 << (k - 1))) | (1 << (k - 1))) * 2 + 1
    x = math.ldexp(significand, exponent) * (-1 if negative else 1)
    assume(np.isfinite(np.float32(x)) and float(np.float32(x)) == x)
    r = float(round_to_bits(np.float32([x]), k, rounding="nearest")[0])
    assert r == ref_round(x, k, "nearest")


def test_nearest_ties_go_to_even_and_may_carry_into_the_exponent():
    # 1.25 = 1.01b and 1.75 = 1.11b are ties at 2 bits: to 1.0 (even) and 2.0 (carry).
    assert round_to_bits(np.float32([1.25, 1.75, -1.75, 2.5]), 2, rounding="nearest").tolist() == [1.0, 2.0, -2.0, 2.0]
    # At 1 bit the kept significand is the leading 1, always odd: ties go up.
    assert round_to_bits(np.float32([3.0, 1.5, 6.0, -3.0]), 1, rounding="nearest").tolist() == [4.0, 2.0, 8.0, -4.0]


def test_nearest_saturates_instead_of_overflowing_to_inf():
    top = np.float32([FLT_MAX, -FLT_MAX])
    r = round_to_bits(top, 1, rounding="nearest")
    assert r.tolist() == [2.0**127, -(2.0**127)]


@PROPERTY
@given(arrays, bit_counts)
def test_stochastic_lands_on_a_neighbour_and_seeded_runs_repeat(x, k):
    r = round_to_bits(x, k, rounding="stochastic", seed=11).astype(np.float64)
    again = round_to_bits(x, k, rounding="stochastic", seed=11)
    assert np.array_equal(bits_of(again), bits_of(r.astype(np.float32)))
    for xv, rv in zip(x.astype(np.float64), r):
        if xv == 0:
            assert rv == 0
            continue
        down = ref_round(xv, k, "truncate")
        up = down + math.copysign(unit_of(xv, k), xv)
        assert rv == down or (rv == up and abs(up) <= FLT_MAX)


@settings(max_examples=25, deadline=None)
@given(finite_float32.filter(lambda v: v != 0 and abs(v) < 1e38), st.integers(1, 20))
def test_stochastic_rounding_is_unbiased(value, k):
    draws = 4000
    r = round_to_bits(np.full(draws, value, np.float32), k, rounding="stochastic", seed=2024)
    unit = unit_of(float(value), k)
    # The standard error of the mean is at most unit / (2 sqrt(draws)); allow 6 of them.
    assert abs(r.astype(np.float64).mean() - float(value)) <= 6 * 0.5 * unit / math.sqrt(draws)


def test_stochastic_rounding_mean_over_many_draws():
    x = np.full(100_000, 0.3, np.float32)  # 0.3 lies 40% of the way from 0.25 to 0.3125
    r = round_to_bits(x, 3, rounding="stochastic", seed=7).astype(np.float64)
    assert set(np.unique(r)) == {0.25, 0.3125}
    assert r.mean() == pytest.approx(0.3, abs=5 * 0.0625 * 0.5 / math.sqrt(x.size))


def test_stochastic_seeds_differ_and_unseeded_draws_vary():
    x = np.linspace(0.1, 0.9, 1000, dtype=np.float32)
    a = round_to_bits(x, 4, rounding="stochastic", seed=1)
    b = round_to_bits(x, 4, rounding="stochastic", seed=2)
    c = round_to_bits(x, 4, rounding="stochastic", seed=(1, 1))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(round_to_bits(x, 4, rounding="stochastic"), round_to_bits(x, 4, rounding="stochastic"))


# ---------------------------------------------------------------------------
# Special values, per-element bits, tensors and graphs, input checks


@pytest.mark.parametrize("mode", ["truncate", "nearest", "stochastic"])
def test_nan_inf_and_signed_zero_pass_through_unchanged(mode):
    nan_payload = _from_pattern(0x7FC12345)
    x = np.array([np.nan, nan_payload, np.inf, -np.inf, 0.0, -0.0, 0.1], dtype=np.float32)
    r = round_to_bits(x, 2, rounding=mode, seed=0)
    assert np.array_equal(bits_of(r)[:6], bits_of(x)[:6])
    assert int(count_non_finite(x)) == 4
    assert np.array_equal(bits_of(clear_lowest_set_bits(x, 3))[:6], bits_of(x)[:6])


@PROPERTY
@given(arrays, st.data())
def test_per_element_bits_round_each_element_to_its_own_count(x, data):
    ks = np.array(data.draw(st.lists(bit_counts, min_size=x.size, max_size=x.size)), dtype=np.int32)
    together = round_to_bits(x, ks, rounding="nearest").astype(np.float64)
    assert together.tolist() == [ref_round(float(v), int(k), "nearest") for v, k in zip(x, ks)]


@PROPERTY
@given(arrays, st.integers(0, 23))
def test_clear_lowest_set_bits_removes_exactly_that_many_mantissa_bits(x, n):
    r = clear_lowest_set_bits(x, n)
    xi, ri = bits_of(x).astype(np.int64), bits_of(r).astype(np.int64)
    assert ((ri & ~xi) == 0).all()  # only clears bits
    assert ((ri >> 23) == (xi >> 23)).all()  # sign and exponent kept
    popcount = np.vectorize(lambda v: bin(int(v) & 0x7FFFFF).count("1"))
    assert (popcount(ri) == np.maximum(popcount(xi) - n, 0)).all()
    # The cleared bits are the lowest ones: all of them lie below every kept bit.
    removed, kept = (xi ^ ri) & 0x7FFFFF, ri & 0x7FFFFF
    assert ((kept == 0) | (removed < (kept & -kept))).all()


def test_clear_lowest_set_bits_per_element_counts_match_clearing_one_bit_at_a_time():
    # Every count from 0 to 25 on 2,000 random bit patterns (normal, subnormal,
    # non-finite, zero), per element: the same bits as clearing the lowest set
    # mantissa bit `count` times, across both halves of the table lookup.
    rng = np.random.default_rng(3)
    patterns = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32)
    patterns[:6] = [0, 0x80000000, 0x7F800000, 0x7FC12345, 0x00000FFF, 0x007FF000]
    x = np.repeat(patterns, 26).view(np.float32)
    counts = np.tile(np.arange(26, dtype=np.int32), patterns.size)
    expected = []
    for pattern, count in zip(np.repeat(patterns, 26).tolist(), counts.tolist()):
        if (pattern >> 23) & 0xFF != 0xFF:  # NaN and inf are never edited
            for _ in range(count):
                if pattern & 0x7FFFFF:
                    pattern &= pattern - 1
        expected.append(pattern)
    assert bits_of(clear_lowest_set_bits(x, counts)).astype(np.uint32).tolist() == expected


def test_tensors_in_tensors_out_and_usable_in_a_graph():
    x = tf.constant([[0.1, -0.7], [3.3, 1e-40]], tf.float32)
    eager = round_to_bits(x, 5, rounding="nearest")
    assert isinstance(eager, tf.Tensor) and eager.shape == (2, 2)
    graph = tf.function(lambda t: round_to_bits(t, 5, rounding="nearest"))(x)
    np.testing.assert_array_equal(graph.numpy(), eager.numpy())
    stochastic = tf.function(lambda t: round_to_bits(t, 5, rounding="stochastic", seed=9))
    np.testing.assert_array_equal(stochastic(x).numpy(), round_to_bits(x.numpy(), 5, "stochastic", seed=9))
    assert significant_bits(tf.Variable(x)).dtype == tf.int32


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: round_to_bits(np.float32([1.0]), 0), ValueError),
        (lambda: round_to_bits(np.float32([1.0]), 25), ValueError),
        (lambda: round_to_bits(np.float32([1.0]), 4, rounding="up"), ValueError),
        (lambda: round_to_bits(np.float32([1.0]), 4, rounding="stochastic", seed=(1, 2, 3)), ValueError),
        (lambda: round_to_bits(tf.constant([1.0], tf.float64), 4), TypeError),
        (lambda: significant_bits(np.array(["a"])), TypeError),
    ],
)
def test_bad_arguments_raise(call, error):
    with pytest.raises(error):
        call()


def test_numpy_float64_input_is_converted_to_float32():
    r = round_to_bits(np.array([0.1, 2.0]), 24)
    assert r.dtype == np.float32 and r.tolist() == [np.float32(0.1), 2.0]
