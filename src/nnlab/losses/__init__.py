"""Adaptive MSE/MAE loss weighting: strategies, the Keras loss and its callback.

* :func:`compute_loss_weights` -- one strategy step, pure NumPy (no TensorFlow);
* :class:`LossWeightScheduler` -- the same epoch after epoch, with the history
  and seeded random state the stateful strategies need;
* :class:`AdaptiveLoss` -- ``w_mse * MSE + w_mae * MAE`` as a Keras loss whose
  weights live in a non-trainable variable read by the compiled train step;
* :class:`AdaptiveLossCallback` -- assigns the scheduler's weights to that
  variable after every epoch and records them;
* :func:`build_adaptive_loss` -- the loss and callback for a configuration;
* :class:`PhysicsLoss` -- the physics-informed term (speed, energy,
  displacement relations of de-scaled predictions), added to the compiled loss
  by :class:`PhysicsInformedModel`.

The TensorFlow-backed names load on first use, so strategies stay importable
(and fast) without TensorFlow. To ``keras.models.load_model`` a model saved with
an :class:`AdaptiveLoss`, touch ``nnlab.losses.AdaptiveLoss`` first (this
registers it) or pass it in ``custom_objects``.

Example:
    >>> from nnlab.losses import compute_loss_weights
    >>> compute_loss_weights("none")
    (1.0, 0.0)
"""

from __future__ import annotations

from nnlab._lazy import lazy_attributes
from nnlab.config import PHYSICS_LOSS_TERMS
from nnlab.losses._scheduler import LossWeightScheduler
from nnlab.losses._strategies import (
    LOSS_TERMS,
    LOSS_WEIGHTING_STRATEGIES,
    compute_loss_weights,
)

# TensorFlow-backed names -> defining module, imported lazily by __getattr__.
_LAZY = {
    "AdaptiveLoss": "nnlab.losses._adaptive_loss",
    "AdaptiveLossCallback": "nnlab.losses._callback",
    "build_adaptive_loss": "nnlab.losses._callback",
    "HISTORY_COLUMNS": "nnlab.losses._callback",
    "PhysicsLoss": "nnlab.losses._physics",
    "PhysicsInformedModel": "nnlab.losses._physics",
    "PhysicsWeightWarmup": "nnlab.losses._physics",
}

__all__ = [
    "LOSS_TERMS",
    "LOSS_WEIGHTING_STRATEGIES",
    "PHYSICS_LOSS_TERMS",
    "compute_loss_weights",
    "LossWeightScheduler",
    *_LAZY,
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), __all__)
