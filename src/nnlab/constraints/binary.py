"""Constraints on the number of significant binary digits of each weight.

:class:`BinaryPrecisionMax` caps every weight at a fixed number of significant
bits; :class:`BinaryChangeMax` caps how many significant bits a weight may gain
between two applications. Both round with the modes of
:func:`~nnlab.constraints.bits.round_to_bits`.
"""

from __future__ import annotations

import random
from typing import Any

import keras
import tensorflow as tf

from nnlab.constraints.base import Stats, WeightConstraint
from nnlab.constraints.bits import (
    ROUNDING_MODES,
    Rounding,
    round_bits_of_int,
    significant_bits_of_int,
    stochastic_noise,
)

__all__ = ["BinaryChangeMax", "BinaryPrecisionMax"]


class _RoundingConstraint(WeightConstraint):
    """Shared rounding options; a seeded counter makes stochastic draws repeatable."""

    def __init__(self, *, rounding: Rounding = "truncate", seed: int | None = None) -> None:
        super().__init__()
        if rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.rounding = rounding
        self.seed = seed
        self._counter: tf.Variable | None = None
        if rounding == "stochastic":
            self._seed_value = seed if seed is not None else random.SystemRandom().randrange(2**31)
            with tf.init_scope():
                # Each application draws from (seed, counter): reproducible for
                # a fixed seed, different from one application to the next.
                self._counter = tf.Variable(0, dtype=tf.int64, trainable=False, name=f"{self.name}_draws")

    def _round(self, i: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
        noise = None
        if self._counter is not None:
            draw = self._counter.assign_add(1)
            seed = tf.stack([tf.constant(self._seed_value, tf.int64), draw])
            noise = stochastic_noise(tf.shape(i), seed)
        return round_bits_of_int(i, bits, self.rounding, noise)

    def get_config(self) -> dict[str, Any]:
        return {"rounding": self.rounding, "seed": self.seed}


def _check_bits(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 24:
        raise ValueError(f"{name} must be an int in [{low}, 24], got {value!r}")
    return value


@keras.saving.register_keras_serializable(package="nnlab")
class BinaryPrecisionMax(_RoundingConstraint):
    """Every weight keeps at most ``max_bits`` significant binary digits.

    Stateless, so it also works as a Keras ``kernel_constraint``. NaN/inf pass
    through unchanged; ``max_bits=24`` with truncation is the identity.

    Config keys: ``enable_binary_precision_max``, ``max_binary_digits``,
    ``binary_rounding``.

    Args:
        max_bits: significant bits kept, 1 to 24.
        rounding: ``"truncate"``, ``"nearest"`` or ``"stochastic"``.
        seed: seed of the stochastic draws (None: a random seed).

    Example:
        >>> import numpy as np
        >>> BinaryPrecisionMax(3).apply(np.float32([0.1, -7.5])).tolist()
        [0.09375, -7.0]
        >>> layer = keras.layers.Dense(4, kernel_constraint=BinaryPrecisionMax(8))
    """

    name = "binary_precision_max"
    chain_position = 30
    elementwise = True

    def __init__(self, max_bits: int, *, rounding: Rounding = "truncate", seed: int | None = None) -> None:
        self.max_bits = _check_bits(max_bits, "max_bits", 1)
        super().__init__(rounding=rounding, seed=seed)

    def transform(self, weights: tf.Tensor, state: dict[str, tf.Variable] | None) -> tuple[tf.Tensor, Stats]:
        i = tf.bitcast(weights, tf.int32)
        return tf.bitcast(self._round(i, tf.constant(self.max_bits)), tf.float32), {}

    def get_config(self) -> dict[str, Any]:
        return {"max_bits": self.max_bits, **super().get_config()}


@keras.saving.register_keras_serializable(package="nnlab")
class BinaryChangeMax(_RoundingConstraint):
    """A weight may gain at most ``max_additional_bits`` significant digits
    between two applications.

    At each application a weight is rounded to
    ``clip(significant_bits(previous) + max_additional_bits, 1, 24)`` bits,
    where ``previous`` is the weight this constraint returned at its previous
    application (what the weight "had"). The first application only records.
    The lower clip at 1 keeps a weight that was exactly 0 (e.g. a fresh bias)
    free to move even with ``max_additional_bits=0``. Stateful: apply it with
    :class:`~nnlab.constraints.WeightConstraintCallback` (or :meth:`apply`).

    Config keys: ``enable_binary_change_max``, ``max_additional_binary_digits``,
    ``binary_rounding``.

    Args:
        max_additional_bits: allowed gain in significant bits, 0 to 24.
        rounding: ``"truncate"``, ``"nearest"`` or ``"stochastic"``.
        seed: seed of the stochastic draws (None: a random seed).

    Example:
        >>> import numpy as np
        >>> limit = BinaryChangeMax(1)
        >>> _ = limit.apply(np.float32([1.0, 0.75]))            # records only
        >>> limit.apply(np.float32([99.5123123, 0.7])).tolist()  # 1 + 1 and 2 + 1 bits
        [96.0, 0.625]
    """

    name = "binary_change_max"
    chain_position = 20
    elementwise = True

    def __init__(self, max_additional_bits: int, *, rounding: Rounding = "truncate", seed: int | None = None) -> None:
        self.max_additional_bits = _check_bits(max_additional_bits, "max_additional_bits", 0)
        super().__init__(rounding=rounding, seed=seed)

    def state_names(self) -> tuple[str, ...]:
        return ("previous",)

    def transform(self, weights: tf.Tensor, state: dict[str, tf.Variable] | None) -> tuple[tf.Tensor, Stats]:
        previous, seen = state["previous"], state["seen"].read_value()
        i = tf.bitcast(weights, tf.int32)
        allowed = significant_bits_of_int(tf.bitcast(previous.read_value(), tf.int32)) + self.max_additional_bits
        rounded = tf.bitcast(self._round(i, allowed), tf.float32)
        # First application: nothing to compare with yet, so only record.
        out = tf.where(seen > 0, rounded, weights)
        previous.assign(out)
        state["seen"].assign(tf.minimum(seen + 1, 1))
        return out, {}

    def get_config(self) -> dict[str, Any]:
        return {"max_additional_bits": self.max_additional_bits, **super().get_config()}
