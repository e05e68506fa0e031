"""The bytes of a network's weights at the precision it was trained to.

A weight rounded to k significant bits needs sign (1) + exponent (8) + the k - 1
explicit mantissa bits: the top k + 8 bits of its float32 pattern. :func:`pack_weights`
stores exactly that, bit-packed; :func:`unpack_weights` gives the weights back.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["COMPRESSION", "pack_weights", "unpack_weights", "weights_bits", "weights_size"]

# zlib (DEFLATE) at its highest level: in the standard library, and what a .zip or .npz of the file would give.
COMPRESSION = "zlib level 9"
_FULL = 24  # float32's significant bits


def _check_bits(bits: int | None) -> int:
    if bits is None:
        return _FULL
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= _FULL:
        raise ValueError(f"bits = {bits!r} is not a number of significant bits: allowed 1..24 or None (float32)")
    return int(bits)


def _flat(weights: Sequence[np.ndarray]) -> np.ndarray:
    """The floating-point weights, in order, as one float32 vector (counters and other integers left out)."""
    arrays = [np.asarray(w) for w in weights]
    parts = [w.astype(np.float32, copy=False).ravel() for w in arrays if np.issubdtype(w.dtype, np.floating)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _pack_fields(fields: np.ndarray, width: int) -> bytes:
    """Each uint32 of ``fields`` as its lowest ``width`` bits, most significant first, bit-packed."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint32)
    planes = ((fields[:, None] >> shifts) & np.uint32(1)).astype(np.uint8)
    return np.packbits(planes.ravel()).tobytes()


def _unpack_fields(data: bytes, n: int, width: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, np.uint8), count=n * width).reshape(n, width).astype(np.uint32)
    return planes @ (np.uint32(1) << np.arange(width - 1, -1, -1, dtype=np.uint32))


def _layout(n: int, n_free: int, width: int) -> tuple[int, int, int]:
    """Bytes of the mask (only when some weights are not representable), the k-bit fields, the float32 ones."""
    mask = math.ceil(n / 8) if n_free else 0
    return mask, math.ceil((n - n_free) * width / 8), 4 * n_free


def pack_weights(weights: Sequence[np.ndarray], bits: int | None) -> tuple[bytes, int]:
    """The floating-point weights bit-packed at ``bits`` significant bits.

    Layout: when some weights have more than ``bits`` significant bits, first a mask of
    one bit per weight (1 = stored as float32); then every representable weight as the
    top ``bits + 8`` bits of its float32 pattern (sign, exponent, ``bits - 1`` mantissa
    bits), packed without padding; then the others as float32 (big-endian). A weight
    is representable when its lowest ``24 - bits`` mantissa bits are 0: every weight
    rounded by the constraints, but for subnormals (below 1.2e-38), which they round
    from the highest set bit: those rare ones go to float32.

    Returns:
        ``(data, unconstrained)``: the bytes and how many weights needed float32.
    """
    k = _check_bits(bits)
    u = _flat(weights).view(np.uint32)
    drop = np.uint32(_FULL - k)
    low = (np.uint32(1) << drop) - np.uint32(1)
    free = (u & low) != 0
    fields = _pack_fields(u[~free] >> drop, k + 8)
    if not free.any():
        return fields, 0
    return np.packbits(free).tobytes() + fields + u[free].astype(">u4").tobytes(), int(free.sum())


def unpack_weights(data: bytes, shapes: Sequence[tuple[int, ...]], bits: int | None,
                   unconstrained: int = 0) -> list[np.ndarray]:
    """The float32 weights of :func:`pack_weights`' ``data``, in ``shapes``.

    Example:
        >>> w = [np.array([0.75, -3.0, 0.1], np.float32)]
        >>> data, free = pack_weights(w, 4)
        >>> unpack_weights(data, [(3,)], 4, free)[0].tolist() == w[0].tolist(), free
        (True, 1)
    """
    k = _check_bits(bits)
    n = sum(int(np.prod(s, dtype=np.int64)) for s in shapes)
    mask_bytes, field_bytes, _ = _layout(n, unconstrained, k + 8)
    if unconstrained:
        free = np.unpackbits(np.frombuffer(data[:mask_bytes], np.uint8), count=n).astype(bool)
    else:
        free = np.zeros(n, bool)
    u = np.empty(n, np.uint32)
    u[~free] = _unpack_fields(data[mask_bytes:mask_bytes + field_bytes], n - unconstrained, k + 8) << np.uint32(
        _FULL - k)
    u[free] = np.frombuffer(data[mask_bytes + field_bytes:], ">u4")
    flat = u.view(np.float32)
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[start:start + size].reshape(shape).copy())
        start += size
    return out


def weights_size(weights: Sequence[np.ndarray], bits: int | None) -> dict[str, Any]:
    """The bytes of the weights as float32, bit-packed at ``bits`` significant bits, and compressed.

    Args:
        weights: the arrays, e.g. ``keras.Model.get_weights()`` (non-floating arrays are left out).
        bits: the significant bits the weights were trained to (:func:`weights_bits`);
            None or 24: float32.

    Returns:
        ``n_weights``, ``bits`` (24 for float32), ``float32_bytes`` (4 per weight),
        ``packed_bytes`` (:func:`pack_weights`: ``ceil(n * (bits + 8) / 8)`` when every
        weight is representable), ``compressed_bytes`` (the packed stream, ``compression``),
        ``packed_ratio`` and ``compressed_ratio`` (to float32), and ``unconstrained``: weights
        with more than ``bits`` significant bits, stored as float32 (plus a 1-bit mask).

    Example:
        >>> size = weights_size([np.full(1000, 0.75, np.float32)], 4)
        >>> size["float32_bytes"], size["packed_bytes"], size["unconstrained"]
        (4000, 1500, 0)
    """
    k = _check_bits(bits)
    n = int(_flat(weights).size)
    data, free = pack_weights(weights, k)
    compressed = len(zlib.compress(data, 9))
    float32 = 4 * n
    return {"n_weights": n, "bits": k, "float32_bytes": float32, "packed_bytes": len(data),
            "compressed_bytes": compressed, "compression": COMPRESSION,
            "packed_ratio": len(data) / float32 if n else math.nan,
            "compressed_ratio": compressed / float32 if n else math.nan, "unconstrained": free}


def weights_bits(config: Any) -> int | None:
    """The significant bits a run's weights were trained to: ``max_binary_digits`` when
    ``enable_binary_precision_max`` is on and it is below 24; None (float32) otherwise.

    Args:
        config: an ``nnlab.config.Config`` (or its ``model`` section).
    """
    model = getattr(config, "model", config)
    bits = int(model.max_binary_digits)
    return bits if model.enable_binary_precision_max and bits < _FULL else None
