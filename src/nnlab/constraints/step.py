"""Binary limits applied after every optimizer step, inside the compiled train step.

With ``constraint_schedule = "step"`` the binary limits do not wait for the
end of an epoch: Keras' optimizer assigns ``variable.constraint(variable)``
right after each update, inside the train function that ``model.fit``
compiles (under XLA and with ``steps_per_execution > 1`` too), so every
weight the next forward pass sees already has at most ``max_bits``
significant bits. This is the setting of Gupta et al. (2015), "Deep learning
with limited numerical precision": with rounding after every update,
round-to-nearest stalls at low precision while stochastic rounding keeps
full-precision accuracy, because small updates survive on average.

Stateful dampeners and James-Stein shrinkage stay epoch-level
(:class:`~nnlab.constraints.WeightConstraintCallback`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import keras
import tensorflow as tf

from nnlab.constraints.binary import BinaryChangeMax, BinaryPrecisionMax
from nnlab.constraints.bits import (
    hash_noise,
    mix32,
    round_bits_of_int,
    significant_bits_of_int,
    stochastic_noise,
)
from nnlab.constraints.callback import LOG_PREFIX, is_target

__all__ = ["RANDOM_SOURCES", "STEP_LOG_KEY", "StepConstraints"]

RandomSource = Literal["hash", "philox"]
RANDOM_SOURCES: tuple[str, ...] = ("hash", "philox")
STEP_LOG_KEY = LOG_PREFIX + "step_max_significant_bits"


class _RoundAfterUpdate:
    """The ``variable.constraint`` of one weight: called by the optimizer with
    the freshly updated variable; returns the value to assign."""

    def __init__(self, owner: StepConstraints, index: int, variable) -> None:
        self.owner = owner
        self.index = index
        self.previous: tf.Variable | None = None
        if owner.change_max is not None:
            with tf.init_scope():
                # The weight before this step's update: what it "had". Equal to the
                # weight itself between steps, so it needs no checkpoint; it is
                # re-synchronised at the start of every fit (fresh or resumed).
                self.previous = tf.Variable(
                    tf.convert_to_tensor(variable), trainable=False, name=f"step_previous_{index}"
                )

    def __call__(self, variable) -> tf.Tensor:
        owner = self.owner
        weights = tf.convert_to_tensor(variable)
        i = tf.bitcast(weights, tf.int32)
        if owner.change_max is not None:
            allowed = significant_bits_of_int(tf.bitcast(self.previous.read_value(), tf.int32))
            allowed = allowed + owner.change_max.max_additional_bits
            i = round_bits_of_int(i, allowed, owner.rounding, owner.noise(i, self.index, 0))
        if owner.precision_max is not None:
            i = round_bits_of_int(i, tf.constant(owner.precision_max.max_bits), owner.rounding,
                                  owner.noise(i, self.index, 1))
        out = tf.bitcast(i, tf.float32)
        if self.previous is not None:
            self.previous.assign(out)
        return out


class StepConstraints(keras.callbacks.Callback):
    """Round every target weight after every optimizer step.

    :meth:`attach` sets each target variable's ``constraint`` (which Keras'
    optimizer applies right after its update, inside the compiled train step).
    Applied in chain order: :class:`BinaryChangeMax` (against the weight's
    value before the step) then :class:`BinaryPrecisionMax`. As a callback it
    re-synchronises the change-max reference at the start of every fit (so a
    resumed run limits against the restored weights) and logs
    ``constraint/step_max_significant_bits`` (the largest significant-bit
    count over the target weights) every epoch.

    Stochastic rounding draws its noise from a stateless source keyed by
    (seed, optimizer step, variable, constraint): the same seed gives the same
    weights, under XLA too. ``random_source="hash"`` (default) is a
    counter-based integer hash of the element index (a few integer ops per
    weight); ``"philox"`` is TensorFlow's stateless Philox, kept for
    comparison (``benchmarks/bench_constraints.py``).

    Args:
        precision_max: the :class:`BinaryPrecisionMax` to apply, or None.
        change_max: the :class:`BinaryChangeMax` to apply, or None.
        targets: ``"all"``, ``"kernel"`` or ``"bias"`` trainable weights.
        seed: seed of the stochastic draws (None: a random one).
        random_source: ``"hash"`` or ``"philox"``.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> step = StepConstraints(precision_max=BinaryPrecisionMax(4, rounding="stochastic"), seed=1)
        >>> step.attach(model)
        >>> # model.fit(x, y, callbacks=[step]): every weight keeps <= 4 significant bits
    """

    def __init__(
        self,
        *,
        precision_max: BinaryPrecisionMax | None = None,
        change_max: BinaryChangeMax | None = None,
        targets: str = "all",
        seed: int | None = None,
        random_source: RandomSource = "hash",
    ) -> None:
        super().__init__()
        if precision_max is None and change_max is None:
            raise ValueError("StepConstraints needs a precision_max or a change_max constraint")
        roundings = {c.rounding for c in (precision_max, change_max) if c is not None}
        if len(roundings) != 1:
            raise ValueError(f"precision_max and change_max must round the same way, got {sorted(roundings)}")
        if random_source not in RANDOM_SOURCES:
            raise ValueError(f"random_source must be one of {RANDOM_SOURCES}, got {random_source!r}")
        self.precision_max = precision_max
        self.change_max = change_max
        self.rounding = roundings.pop()
        self.targets = targets
        self.random_source = random_source
        self.seed = int(seed) % 2**32 if seed is not None else random.SystemRandom().randrange(2**32)
        self._roundings: list[_RoundAfterUpdate] = []
        self._variables: list = []
        self._iterations = None
        self._max_bits_fn = None

    @property
    def constraints(self) -> list:
        """The constraints applied, in chain order."""
        return [c for c in (self.change_max, self.precision_max) if c is not None]

    def attach(self, model: keras.Model) -> None:
        """Set the rounding as the ``constraint`` of every target weight of a
        compiled ``model`` (its optimizer's step counter keys the noise)."""
        if getattr(model, "optimizer", None) is None:
            raise ValueError("attach() needs a compiled model (its optimizer counts the steps)")
        self._iterations = model.optimizer.iterations
        self._variables = [v for v in model.trainable_variables if is_target(v, self.targets)]
        self._roundings = []
        for index, variable in enumerate(self._variables):
            if variable.constraint is not None and not isinstance(variable.constraint, _RoundAfterUpdate):
                raise ValueError(f"weight {variable.path} already has a constraint ({variable.constraint!r})")
            rounding = _RoundAfterUpdate(self, index, variable)
            variable.constraint = rounding
            self._roundings.append(rounding)

    def noise(self, i: tf.Tensor, index: int, slot: int) -> tf.Tensor | None:
        """Noise bit patterns for one weight tensor, keyed by (seed, step, index, slot)."""
        if self.rounding != "stochastic":
            return None
        step = tf.cast(tf.convert_to_tensor(self._iterations), tf.int64)
        if self.random_source == "philox":
            stream = tf.constant(2 * index + slot + 1, tf.int64) * (1 << 32)
            seed = tf.stack([tf.constant(self.seed, tf.int64), stream + step])
            return stochastic_noise(tf.shape(i), seed)
        step32 = tf.cast(tf.bitwise.bitwise_and(step, 0xFFFFFFFF), tf.uint32)
        stream = mix32(tf.constant(2 * index + slot + 1, tf.uint32) * tf.constant(0x9E3779B9, tf.uint32))
        key = mix32(tf.bitwise.bitwise_xor(tf.constant(self.seed, tf.uint32), mix32(step32 + stream)))
        return hash_noise(tf.shape(i), key)

    def sync(self) -> None:
        """Make every weight's change-max reference its current value."""
        for rounding, variable in zip(self._roundings, self._variables):
            if rounding.previous is not None:
                rounding.previous.assign(tf.convert_to_tensor(variable))

    def max_significant_bits(self) -> int:
        """The largest number of significant bits over the target weights."""
        if self._max_bits_fn is None:
            @tf.function
            def max_bits(values):
                return tf.reduce_max(tf.stack([
                    tf.reduce_max(significant_bits_of_int(tf.bitcast(v, tf.int32))) for v in values
                ]))
            self._max_bits_fn = max_bits
        return int(self._max_bits_fn([tf.convert_to_tensor(v) for v in self._variables]))

    def log_keys(self) -> list[str]:
        return [STEP_LOG_KEY]

    def on_train_begin(self, logs=None) -> None:
        self.sync()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is not None and self._variables:
            logs[STEP_LOG_KEY] = float(self.max_significant_bits())


def split_schedule(constraints: Sequence) -> tuple[list, list]:
    """(per-step binary limits, epoch-level rest) of a constraint chain."""
    step = [c for c in constraints if isinstance(c, (BinaryPrecisionMax, BinaryChangeMax))]
    return step, [c for c in constraints if c not in step]
