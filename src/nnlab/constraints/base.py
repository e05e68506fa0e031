"""The common interface of the weight constraints.

A constraint maps a whole float32 weight tensor to a constrained copy with
vectorised TensorFlow ops (:meth:`WeightConstraint.transform`). Stateful
constraints keep per-weight state (previous weights, a count of applications)
in non-trainable ``tf.Variable`` objects, one set per weight tensor, created on
first use under ``tf.init_scope`` so that creating them never happens inside a
traced function's graph.

Stateless constraints are also Keras constraints: ``Dense(...,
kernel_constraint=BinaryPrecisionMax(8))`` applies them after every optimizer
step. Stateful ones refuse that use (a Keras constraint has no slot for
per-weight history) and are applied by
:class:`~nnlab.constraints.WeightConstraintCallback` instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from nnlab.constraints.bits import like_input, to_float32_tensor

__all__ = ["Stats", "WeightConstraint"]

# Per-constraint statistics of one application: name -> sum over elements
# (the callback divides by the number of elements to report fractions/means).
Stats = dict[str, tf.Tensor]


def _constrained_only(transform, weights: tf.Tensor, state) -> tf.Tensor:
    return transform(weights, state)[0]


class WeightConstraint(keras.constraints.Constraint):
    """Base class: a rule applied to whole float32 weight tensors.

    Subclasses set :attr:`name` (used in log keys), :attr:`chain_position`
    (where they run in the fixed chain: oscillation dampener → binary change →
    binary max → James-Stein), list their per-weight float32 state in
    :meth:`state_names`, and implement :meth:`transform`.

    Example:
        >>> from nnlab.constraints import BinaryPrecisionMax
        >>> BinaryPrecisionMax(2).apply(np.float32([0.1, 3.0])).tolist()
        [0.09375, 3.0]
    """

    name: ClassVar[str] = "weight_constraint"
    chain_position: ClassVar[int] = 100
    # Names of the extra statistics transform() returns besides the ones every
    # constraint gets (fraction_changed, mean_abs_change).
    extra_stats: ClassVar[tuple[str, ...]] = ()
    # True when transform() treats every element on its own (its state too, "seen" aside): then the
    # callback may run it on all weights joined into one vector (fewer, larger ops; see
    # WeightConstraintCallback). James-Stein, which uses a tensor's norm, is not.
    elementwise: ClassVar[bool] = False

    def __init__(self) -> None:
        self._states: dict[str, dict[str, tf.Variable]] = {}
        self._compiled: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {}

    # -- subclass interface -------------------------------------------------

    def state_names(self) -> tuple[str, ...]:
        """Names of the per-weight float32 state tensors (empty: stateless)."""
        return ()

    def transform(self, weights: tf.Tensor, state: dict[str, tf.Variable] | None) -> tuple[tf.Tensor, Stats]:
        """The constrained weights and extra statistics, as graph ops.

        Updates ``state`` (from :meth:`state_for`) by assignment. Extra
        statistics are sums over elements, e.g. ``{"fraction_oscillating":
        number of oscillating weights}``; the callback divides by the count.
        """
        raise NotImplementedError

    # -- state ---------------------------------------------------------------

    @property
    def stateful(self) -> bool:
        """Whether the constraint keeps per-weight state between applications."""
        return bool(self.state_names())

    def state_for(self, key: str, shape: tf.TensorShape | tuple[int, ...]) -> dict[str, tf.Variable] | None:
        """The state variables of the weight tensor ``key``, created on first use.

        Each state holds the tensors named by :meth:`state_names` (zeros of
        ``shape``) and ``"seen"``, the number of applications so far (int32,
        capped by the subclass). Returns None for stateless constraints.

        Raises:
            ValueError: if ``shape`` is not fully known or differs from the
                shape the state was created with.
        """
        if not self.stateful:
            return None
        shape = tf.TensorShape(shape)
        if not shape.is_fully_defined():
            raise ValueError(f"{type(self).__name__} needs a fully known weight shape, got {shape} for '{key}'")
        state = self._states.get(key)
        if state is not None:
            known = state[self.state_names()[0]].shape
            if known != shape:
                raise ValueError(
                    f"{type(self).__name__}: weight '{key}' has shape {shape}, but its state "
                    f"was created for shape {known}; call reset_state() for a new model"
                )
            return state
        # init_scope lifts creation out of any graph being traced, so the
        # variables are created once, eagerly, even on first use inside a
        # tf.function.
        with tf.init_scope():
            safe = "".join(ch if ch.isalnum() else "_" for ch in key)
            state = {
                name: tf.Variable(tf.zeros(shape, tf.float32), trainable=False, name=f"{self.name}_{name}_{safe}")
                for name in self.state_names()
            }
            state["seen"] = tf.Variable(0, dtype=tf.int32, trainable=False, name=f"{self.name}_seen_{safe}")
        self._states[key] = state
        return state

    def reset_state(self) -> None:
        """Forget all per-weight state: the next application starts afresh.

        A :class:`~nnlab.constraints.WeightConstraintCallback` already traced
        with this constraint keeps the old state; build a new callback.
        """
        self._states.clear()
        self._compiled.clear()

    # -- application ---------------------------------------------------------

    def apply(self, weights, *, key: str = "default") -> tf.Tensor | np.ndarray:
        """Apply the constraint to a whole weight tensor (one XLA-compiled call).

        Args:
            weights: float32 tensor, variable or array-like (NumPy in → NumPy out).
            key: which weight tensor this is; stateful constraints keep one
                state per key, so apply each weight tensor under its own key.

        Returns:
            The constrained weights, same shape and dtype.
        """
        tensor, numpy_in = to_float32_tensor(weights)
        state = self.state_for(key, tensor.shape)
        compiled = self._compiled.get(key)
        if compiled is None:
            # XLA fuses the few dozen elementwise integer ops into one loop:
            # several times faster than op-by-op graph execution on a CPU.
            # (A partial, not a lambda: TensorFlow counts traces per code
            # object, and one trace per constraint instance is not retracing.)
            compiled = tf.function(
                functools.partial(_constrained_only, self.transform, state=state),
                jit_compile=True,
                autograph=False,
            )
            self._compiled[key] = compiled
        return like_input(compiled(tensor), numpy_in)

    def __call__(self, w):
        """Keras constraint entry point (stateless constraints only).

        Raises:
            TypeError: for a stateful constraint, which needs per-weight
                history that a Keras ``kernel_constraint`` cannot keep.
        """
        if self.stateful:
            raise TypeError(
                f"{type(self).__name__}({self._describe()}) keeps per-weight state between "
                "applications and cannot be a Keras kernel_constraint; apply it with "
                "nnlab.constraints.WeightConstraintCallback"
            )
        tensor = tf.convert_to_tensor(w)
        if tensor.dtype != tf.float32:
            raise TypeError(f"{type(self).__name__} works on float32 weights, got {tensor.dtype.name}")
        return self.transform(tensor, None)[0]

    def get_config(self) -> dict[str, Any]:
        return {}

    def _describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"
