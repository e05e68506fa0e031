"""The Keras loss w_mse * MSE + w_mae * MAE with its weights in a variable."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

__all__ = ["AdaptiveLoss"]


@keras.saving.register_keras_serializable(package="nnlab")
class AdaptiveLoss(keras.losses.Loss):
    """Weighted sum of mean squared and mean absolute error, reweightable during fit.

    Per sample, ``w_mse * mean((y_pred - y_true)**2) + w_mae * mean(|y_pred - y_true|)``
    over the last axis; sample weights, masks and ``reduction`` then apply
    exactly as for ``keras.losses.MeanSquaredError``, so ``AdaptiveLoss(1, 0)``
    is MSE and ``AdaptiveLoss(0, 1)`` is MAE.

    The two weights live in one non-trainable ``tf.Variable`` of shape [2]
    (:attr:`weights_variable`) that the compiled train step reads on every
    batch, so :meth:`assign_weights` between epochs (what
    :class:`~nnlab.losses.AdaptiveLossCallback` does) changes the loss without
    retracing, also under ``jit_compile=True`` and ``steps_per_execution > 1``.
    Weights are normalised to sum 1.

    Args:
        mse_weight: initial weight of the MSE term (>= 0).
        mae_weight: initial weight of the MAE term (>= 0); the two must not both be 0.
        name: the loss name.
        reduction: as for any Keras loss (``"sum_over_batch_size"``, ``"sum"``,
            ``"mean"``, ``"mean_with_sample_weight"``, ``None``).
        dtype: the dtype the loss is computed in (Keras default: float32).

    Example:
        >>> import numpy as np
        >>> loss = AdaptiveLoss(mse_weight=0.75, mae_weight=0.25)
        >>> y_true, y_pred = np.zeros((2, 1)), np.array([[2.0], [0.0]])
        >>> round(float(loss(y_true, y_pred)), 4)  # 0.75 * 2.0 + 0.25 * 1.0
        1.75
        >>> loss.assign_weights(1.0, 0.0)
        >>> round(float(loss(y_true, y_pred)), 4), loss.mae_weight
        (2.0, 0.0)
    """

    def __init__(
        self,
        mse_weight: float = 0.5,
        mae_weight: float = 0.5,
        *,
        name: str = "adaptive_loss",
        reduction: str | None = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        # Kept as float32 whatever the loss dtype; call() casts on read, which
        # is free inside the compiled step.
        self.weights_variable = tf.Variable(
            _normalised(mse_weight, mae_weight),
            trainable=False,
            dtype=tf.float32,
            name="adaptive_loss_weights",
        )

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        y_true, y_pred = _same_rank(y_true, y_pred)
        error = y_pred - y_true
        weights = ops.cast(self.weights_variable, y_pred.dtype)
        return weights[0] * ops.mean(ops.square(error), axis=-1) + weights[1] * ops.mean(
            ops.abs(error), axis=-1
        )

    def assign_weights(self, mse_weight: float, mae_weight: float) -> None:
        """Set the weights the next compiled step uses (normalised to sum 1).

        Raises:
            ValueError: for a negative or non-finite weight, or both 0.
        """
        self.weights_variable.assign(_normalised(mse_weight, mae_weight))

    @property
    def mse_weight(self) -> float:
        """The current MSE weight."""
        return float(self.weights_variable.numpy()[0])

    @property
    def mae_weight(self) -> float:
        """The current MAE weight."""
        return float(self.weights_variable.numpy()[1])

    def get_config(self) -> dict:
        # The current weights, so a restored loss resumes where this one is.
        return {**super().get_config(), "mse_weight": self.mse_weight, "mae_weight": self.mae_weight}

    def __repr__(self) -> str:
        # Keras str()s the loss while tracing the train step, where the
        # variable has no concrete value to show.
        if not tf.executing_eagerly():
            return f"AdaptiveLoss(name={self.name!r})"
        return f"AdaptiveLoss(mse_weight={self.mse_weight:.6g}, mae_weight={self.mae_weight:.6g})"


def _normalised(mse_weight: float, mae_weight: float) -> np.ndarray:
    try:
        pair = [float(mse_weight), float(mae_weight)]
    except (TypeError, ValueError):
        raise ValueError(f"loss weights must be numbers, got ({mse_weight!r}, {mae_weight!r})") from None
    if not all(math.isfinite(w) and w >= 0 for w in pair) or sum(pair) <= 0:
        raise ValueError(
            f"loss weights must be finite, >= 0 and not both 0, got mse_weight={pair[0]}, mae_weight={pair[1]}"
        )
    total = sum(pair)
    return np.array([pair[0] / total, pair[1] / total], dtype=np.float32)


def _same_rank(y_true, y_pred):
    # As Keras' own regression losses do: when ranks differ by one over a
    # trailing axis of size 1, compare elementwise ((batch,) against (batch, 1)
    # must not broadcast to (batch, batch), nor collapse to one number).
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            y_pred = ops.expand_dims(y_pred, axis=-1)
        else:
            y_true = ops.squeeze(y_true, axis=-1)
    elif pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            y_true = ops.expand_dims(y_true, axis=-1)
        else:
            y_pred = ops.squeeze(y_pred, axis=-1)
    return y_true, y_pred
