"""nnlab.export.weights_size: the weights' bytes as float32, bit-packed at k significant bits, compressed."""

from __future__ import annotations

import doctest
import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnlab.export._size
from nnlab.config import Config
from nnlab.constraints import round_to_bits, significant_bits
from nnlab.export import pack_weights, unpack_weights, weights_bits, weights_size

F32 = np.float32


def rounded(k: int, n: int = 3000, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(n) * 0.3).astype(F32)
    return [np.asarray(round_to_bits(w[: n // 3 * 2].reshape(-1, 4), k, rounding="nearest"), F32),
            np.asarray(round_to_bits(w[n // 3 * 2:], k, rounding="nearest"), F32)]


def test_doctests():
    result = doctest.testmod(nnlab.export._size)
    assert result.attempted >= 2 and result.failed == 0


@pytest.mark.parametrize("k", [1, 2, 4, 8, 11, 16, 23, 24])
def test_roundtrip_of_rounded_weights_is_exact(k):
    weights = rounded(k)
    data, free = pack_weights(weights, k)
    assert free == 0
    n = sum(w.size for w in weights)
    assert len(data) == math.ceil(n * (k + 8) / 8)
    back = unpack_weights(data, [w.shape for w in weights], k)
    for b, w in zip(back, weights):
        assert b.dtype == F32 and b.shape == w.shape
        np.testing.assert_array_equal(b.view(np.uint32), w.view(np.uint32))  # bit for bit: -0.0 too


def test_sizes():
    weights = rounded(4)
    size = weights_size(weights, 4)
    n = 3000
    assert size["n_weights"] == n and size["bits"] == 4
    assert size["float32_bytes"] == 4 * n
    assert size["packed_bytes"] == math.ceil(n * 12 / 8) == 4500
    assert size["packed_ratio"] == pytest.approx(12 / 32)
    assert size["compressed_bytes"] == len(zlib.compress(pack_weights(weights, 4)[0], 9))
    assert size["compressed_bytes"] < size["packed_bytes"]  # 4-bit weights of a normal spread repeat a lot
    assert size["compressed_ratio"] == pytest.approx(size["compressed_bytes"] / (4 * n))
    assert size["compression"] == "zlib level 9" and size["unconstrained"] == 0


@pytest.mark.parametrize("bits", [None, 24])
def test_float32_is_the_float32_stream(bits):
    w = [np.array([[0.1, -2.5e-30], [np.inf, 3.0]], F32), np.array([1e-45], F32)]
    size = weights_size(w, bits)
    assert (size["bits"], size["float32_bytes"], size["packed_bytes"], size["packed_ratio"]) == (24, 20, 20, 1.0)
    data, free = pack_weights(w, bits)
    assert free == 0 and data == np.concatenate([x.ravel() for x in w]).astype(">f4").tobytes()


def test_unconstrained_weights_are_counted_at_float32_and_survive():
    kernel = rounded(6, 800)[0]
    bias = np.array([0.1, 1 / 3, 0.5, -0.25], F32)  # 0.1 and 1/3 have 24 significant bits; 0.5 and -0.25 one
    counter = np.array([7], np.int64)  # not a weight
    weights = [kernel, bias, counter]
    size = weights_size(weights, 6)
    n = kernel.size + 4
    assert size["n_weights"] == n and size["unconstrained"] == 2
    assert size["packed_bytes"] == math.ceil(n / 8) + math.ceil((n - 2) * 14 / 8) + 2 * 4
    data, free = pack_weights(weights, 6)
    back = unpack_weights(data, [kernel.shape, bias.shape], 6, free)
    np.testing.assert_array_equal(back[0], kernel)
    np.testing.assert_array_equal(back[1], bias)


def test_subnormals_zeros_and_infinities():
    # subnormals whose lowest 24 - k mantissa bits are clear fit the k-bit field
    w = [np.array([0.0, -0.0, 2.0**-127, -(2.0**-127), -np.inf, np.inf, 2.0**-126, -1.5], F32)]
    data, free = pack_weights(w, 2)
    assert free == 0
    np.testing.assert_array_equal(unpack_weights(data, [(8,)], 2)[0].view(np.uint32), w[0].view(np.uint32))
    # a subnormal of one significant bit low in the mantissa (round_to_bits keeps it) is not a 2-bit field:
    # counted and stored as float32, exactly
    tiny = [np.array([2.0**-149, 0.5], F32)]
    data, free = pack_weights(tiny, 2)
    assert significant_bits(tiny[0])[0] == 1 and free == 1
    np.testing.assert_array_equal(unpack_weights(data, [(2,)], 2, free)[0], tiny[0])


def test_empty_and_bad_bits():
    assert weights_size([], 4)["packed_bytes"] == 0
    assert math.isnan(weights_size([], 4)["packed_ratio"])
    for bad in (0, 25, 4.0, True, "8"):
        with pytest.raises(ValueError, match=r"bits = .* allowed 1\.\.24 or None"):
            weights_size([np.ones(3, F32)], bad)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 24),
       w=hnp.arrays(F32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=False)))
def test_property_unpack_gives_the_weights_rounded_to_k_bits(k, w):
    r = np.asarray(round_to_bits(w, k, rounding="truncate"), F32)
    data, free = pack_weights([r, w], k)
    back = unpack_weights(data, [r.shape, w.shape], k, free)
    np.testing.assert_array_equal(back[0].view(np.uint32), r.view(np.uint32))
    np.testing.assert_array_equal(back[1].view(np.uint32), w.view(np.uint32))
    # the weights rounded to k bits need float32 only where they are subnormal (round_to_bits keeps k bits
    # from a subnormal's highest set bit); the others, exactly those with low mantissa bits set
    low = np.uint32((1 << (24 - k)) - 1)
    assert free == sum(int(np.count_nonzero(x.view(np.uint32) & low)) for x in (r, w))
    assert not np.count_nonzero(r[np.abs(r) >= np.finfo(F32).tiny].view(np.uint32) & low)


def test_weights_bits_of_a_config():
    assert weights_bits(Config()) is None or Config().model.max_binary_digits < 24
    cfg = Config().model_copy(deep=True)
    cfg.model.max_binary_digits = 8
    cfg.model.enable_binary_precision_max = True
    assert weights_bits(cfg) == 8 and weights_bits(cfg.model) == 8
    cfg.model.enable_binary_precision_max = False
    assert weights_bits(cfg) is None
