"""Oscillation dampeners: take precision away from weights that swing back and forth.

A weight oscillates when its last two changes, ``w[t-2] → w[t-1] → w[t]``, have
opposite signs (up then down, or down then up). ``w[t-1]`` and ``w[t-2]`` are
the values the dampener returned at its previous two applications. The plain
:class:`OscillationDampener` clears the lowest set mantissa bit of each
oscillating weight; :class:`AdaptiveOscillationDampener` clears more bits the
further the weight has swung from its recent mean.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from nnlab.constraints.base import Stats, WeightConstraint
from nnlab.constraints.bits import clear_lowest_set_bits_of_int, significant_bits_of_int

__all__ = ["AdaptiveOscillationDampener", "OscillationDampener"]


@keras.saving.register_keras_serializable(package="nnlab")
class OscillationDampener(WeightConstraint):
    """Clear the lowest set mantissa bit of every oscillating weight.

    Keeps the weights of its last two applications (so the first two only
    record) and reports ``fraction_oscillating``. Sign and exponent are never
    edited; NaN/inf weights, and weights whose history is not finite, are left
    alone. Stateful: apply it with
    :class:`~nnlab.constraints.WeightConstraintCallback` (or :meth:`apply`).

    Config key: ``enable_weight_oscillation_dampener``.

    Example:
        >>> import numpy as np
        >>> dampener = OscillationDampener()
        >>> for w in (0.41, 0.51, 0.31):
        ...     _ = dampener.apply(np.float32([w]))
        >>> dampener.apply(np.float32([0.81])).tolist()  # 0.51 → 0.31 → 0.81
        [0.809999942779541]
    """

    name = "oscillation_dampener"
    chain_position = 10
    elementwise = True
    extra_stats = ("fraction_oscillating",)

    def state_names(self) -> tuple[str, ...]:
        return ("previous", "before_previous")

    def bits_to_clear(self, weights: tf.Tensor, previous: tf.Tensor, before_previous: tf.Tensor) -> tf.Tensor:
        """How many of the lowest set mantissa bits to clear where a weight oscillates."""
        return tf.ones_like(weights, dtype=tf.int32)

    def transform(self, weights: tf.Tensor, state: dict[str, tf.Variable] | None) -> tuple[tf.Tensor, Stats]:
        previous_var, before_var, seen = state["previous"], state["before_previous"], state["seen"].read_value()
        previous = previous_var.read_value()
        before = before_var.read_value()
        earlier_change = previous - before
        latest_change = weights - previous
        finite = tf.math.is_finite(weights) & tf.math.is_finite(previous) & tf.math.is_finite(before)
        turned = ((earlier_change > 0) & (latest_change < 0)) | ((earlier_change < 0) & (latest_change > 0))
        oscillating = turned & finite & (seen >= 2)
        count = tf.where(oscillating, self.bits_to_clear(weights, previous, before), 0)
        out = tf.bitcast(clear_lowest_set_bits_of_int(tf.bitcast(weights, tf.int32), count), tf.float32)
        before_var.assign(previous)
        previous_var.assign(out)
        state["seen"].assign(tf.minimum(seen + 1, 2))
        return out, {"fraction_oscillating": tf.reduce_sum(tf.cast(oscillating, tf.float32))}

    def get_config(self) -> dict[str, Any]:
        return {}


@keras.saving.register_keras_serializable(package="nnlab")
class AdaptiveOscillationDampener(OscillationDampener):
    """Clear more low mantissa bits the further an oscillating weight swings.

    Like :class:`OscillationDampener`, but an oscillating weight ``w`` loses its
    ``n`` lowest set mantissa bits, with

    ``n = max(1, floor(1 + s * (significant_bits(w) - 1)))``,
    ``s = 1 - exp(-2 * |w - mu| / max(|mu|, 1e-8))``,

    where ``mu`` is the weight's own mean over the stored history (the mean of
    ``w[t-1]`` and ``w[t-2]``, element by element). A small swing relative to
    ``|mu|`` clears one bit; a swing as large as ``|mu|`` already clears about
    85% of them.

    Config key: ``use_adaptive_oscillation_dampener``.

    Example:
        >>> import numpy as np
        >>> dampener = AdaptiveOscillationDampener()
        >>> for w in (0.41, 0.51, 0.31):
        ...     _ = dampener.apply(np.float32([w]))
        >>> dampener.apply(np.float32([0.81])).tolist()  # swing 0.4 around mu = 0.41
        [0.5]
        >>> dampener.apply(np.float32([0.4])).tolist()  # smaller swing: 3 bits
        [0.39999961853027344]
    """

    name = "adaptive_oscillation_dampener"

    def bits_to_clear(self, weights: tf.Tensor, previous: tf.Tensor, before_previous: tf.Tensor) -> tf.Tensor:
        mean = 0.5 * (previous + before_previous)
        swing = 1.0 - tf.exp(-2.0 * tf.abs(weights - mean) / tf.maximum(tf.abs(mean), 1e-8))
        bits = tf.cast(significant_bits_of_int(tf.bitcast(weights, tf.int32)), tf.float32)
        return tf.maximum(1, tf.cast(tf.floor(1.0 + swing * (bits - 1.0)), tf.int32))
