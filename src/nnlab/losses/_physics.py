"""The physics-informed loss term and the Keras model that adds it to the compiled loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution

from nnlab.config import PHYSICS_LOSS_TERMS
from nnlab.errors import ConfigError
from nnlab.physics import RELATIONS

__all__ = ["PHYSICS_LOSS_TERMS", "PhysicsInformedModel", "PhysicsLoss", "PhysicsWeightWarmup"]

# Keeps the gradient of |v| = sqrt(vx² + vy²) finite at v = 0 (physical units: negligible).
_SQRT_FLOOR = 1e-12


class PhysicsLoss:
    """Mean squared violation of the chosen physics relations, on de-scaled predictions.

    Per sample and term, the violation of :mod:`nnlab.physics`'s relation
    (speed: |v_pred| − |v_0|; energy: KE_pred − ½ m |v_pred|²; displacement:
    d_pred − |r_pred − r_0|) squared and divided by the mean square of the
    quantity over the training data (from the scalers: ``mean² + var``), so each
    term is a squared relative violation and the terms are comparable. The value
    is the sum over terms, averaged over the batch.

    Everything is computed in-graph: the scalers' means and scales of the needed
    columns are constants of the compiled step; predictions and the initial
    quantities (read from the input features) are de-scaled with them.

    Args:
        scalers: anything with ``x_scaler``, ``y_scaler`` (fitted ``StandardScaler``),
            ``feature_names`` and ``target_names`` (``PreparedData``, ``Scalers``).
        terms: a non-empty subset of :data:`PHYSICS_LOSS_TERMS`.
        weight: the factor of the term in the total loss (config ``physics_loss_weight``).
        collocation: scaled inputs without targets, made by the caller (the model
            draws them with :func:`nnlab.data.collocation_inputs`), on which
            :class:`PhysicsInformedModel` also evaluates the term, a random batch
            per training step; None: the training batch only.

    Raises:
        ConfigError: an unknown term, or one whose targets are not predicted or
            whose initial quantities are not among the features (names
            ``physics_loss_terms``).

    Example:
        >>> loss = PhysicsLoss(prepared, ["speed"], weight=1.0)  # doctest: +SKIP
        >>> float(loss(X_batch, model(X_batch)))  # doctest: +SKIP
    """

    def __init__(self, scalers: Any, terms: Sequence[str] = PHYSICS_LOSS_TERMS, *, weight: float = 1.0,
                 collocation: np.ndarray | None = None):
        terms = list(terms)
        unknown = [t for t in terms if t not in PHYSICS_LOSS_TERMS]
        if unknown or not terms or len(set(terms)) != len(terms):
            raise ConfigError(f"physics_loss_terms = {terms} is invalid: choose distinct names from "
                              f"{list(PHYSICS_LOSS_TERMS)}")
        features, targets = list(scalers.feature_names), list(scalers.target_names)
        for term in terms:
            needed_targets, needed_inputs = RELATIONS[term]
            missing = [t for t in needed_targets if t not in targets]
            if missing:
                raise ConfigError(f"physics_loss_terms includes {term!r}, which needs the target(s) "
                                  f"{', '.join(missing)}; the model predicts {', '.join(targets)}")
            missing = [f for f in needed_inputs if f not in features]
            if missing:
                raise ConfigError(f"physics_loss_terms includes {term!r}, which needs the feature(s) "
                                  f"{', '.join(missing)}; the features are {', '.join(features)}")
        self.terms = terms
        self.weight = float(weight)
        self.collocation = None if collocation is None or len(collocation) == 0 else np.asarray(collocation, np.float32)
        if self.collocation is not None and self.collocation.shape[1:] != (len(features),):
            raise ValueError(f"collocation inputs must have shape (n, {len(features)}), got {self.collocation.shape}")
        x_mean, x_var = np.asarray(scalers.x_scaler.mean_), np.asarray(scalers.x_scaler.var_)
        y_mean, y_var = np.asarray(scalers.y_scaler.mean_), np.asarray(scalers.y_scaler.var_)
        # Column -> (index, mean, scale) for the de-scaling, and mean squares for the normalisers.
        self._x = {n: (j, float(x_mean[j]), float(scalers.x_scaler.scale_[j])) for j, n in enumerate(features)}
        self._y = {n: (j, float(y_mean[j]), float(scalers.y_scaler.scale_[j])) for j, n in enumerate(targets)}
        x_square = {n: float(x_mean[j] ** 2 + x_var[j]) for j, n in enumerate(features)}
        y_square = {n: float(y_mean[j] ** 2 + y_var[j]) for j, n in enumerate(targets)}
        self.normalisers = {
            "speed": x_square.get("initial_velocity_x", 0.0) + x_square.get("initial_velocity_y", 0.0),
            "energy": y_square.get("kinetic_energy", 0.0),
            "displacement": y_square.get("displacement", 0.0),
        }
        for term in terms:
            if not self.normalisers[term] > 0:
                raise ConfigError(f"physics_loss_terms includes {term!r}, but its quantity is 0 on every "
                                  "training sample: nothing to normalise the violation by")

    @staticmethod
    def _column(values: tf.Tensor, entry: tuple[int, float, float]) -> tf.Tensor:
        j, mean, scale = entry
        return values[:, j] * scale + mean

    def violations(self, x: Any, y_pred: Any) -> dict[str, tf.Tensor]:
        """Per term, each sample's squared relative violation ``violation² / E[quantity²]``, shape (batch,)."""
        y_pred = ops.cast(y_pred, "float32")
        x = ops.cast(x, "float32")
        p = lambda name: self._column(y_pred, self._y[name])
        i = lambda name: self._column(x, self._x[name])
        out = {}
        for term in self.terms:
            if term == "speed":
                v = ops.sqrt(ops.square(p("final_velocity_x")) + ops.square(p("final_velocity_y")) + _SQRT_FLOOR)
                v0 = ops.sqrt(ops.square(i("initial_velocity_x")) + ops.square(i("initial_velocity_y")))
                violation = v - v0
            elif term == "energy":
                v2 = ops.square(p("final_velocity_x")) + ops.square(p("final_velocity_y"))
                violation = p("kinetic_energy") - 0.5 * i("mass") * v2
            else:
                dx = p("final_position_x") - i("initial_position_x")
                dy = p("final_position_y") - i("initial_position_y")
                violation = p("displacement") - ops.sqrt(ops.square(dx) + ops.square(dy) + _SQRT_FLOOR)
            out[term] = ops.square(violation) / self.normalisers[term]
        return out

    def per_sample(self, x: Any, y_pred: Any) -> tf.Tensor:
        """Each sample's term: the sum over terms of its squared relative violation, shape (batch,)."""
        return sum(self.violations(x, y_pred).values())

    def __call__(self, x: Any, y_pred: Any) -> tf.Tensor:
        """The term of a batch: the batch mean of :meth:`per_sample` (unweighted)."""
        return ops.mean(self.per_sample(x, y_pred))

    def __repr__(self) -> str:
        return f"PhysicsLoss(terms={self.terms}, weight={self.weight:g})"


class PhysicsInformedModel(keras.Model):
    """A functional Keras model whose loss is the compiled loss plus ``physics.weight * physics``.

    :meth:`compute_loss` is Keras' documented hook: it sees the inputs, so the
    term reads the initial quantities from the features. The unweighted term of
    the training batch is tracked as the metric ``physics_loss``
    (``val_physics_loss`` on validation data). In training, when the
    :class:`PhysicsLoss` has collocation inputs, the term of a random batch of them
    (as many rows as the training batch, through the network in training mode) is
    added too; the logged ``loss`` includes both, weighted.

    Args:
        inputs, outputs: as for a functional ``keras.Model``.
        physics: the :class:`PhysicsLoss`.
        seed: seed of the collocation batches (None: unseeded).
        collocation_batch_size: rows of each collocation batch (None: as many as the training batch).
        **kwargs: passed to ``keras.Model`` (``name``).
    """

    def __init__(self, inputs: Any, outputs: Any, *, physics: PhysicsLoss, seed: int | None = None,
                 collocation_batch_size: int | None = None, **kwargs: Any):
        super().__init__(inputs, outputs, **kwargs)
        self.physics = physics
        # The weight the compiled step reads: PhysicsWeightWarmup ramps it up between epochs (no retracing).
        self.physics_weight = tf.Variable(physics.weight, trainable=False, dtype=tf.float32, name="physics_loss_weight")
        self.physics_tracker = keras.metrics.Mean(name="physics_loss")
        self._collocation = None
        self.collocation_batch_size = collocation_batch_size
        if physics.collocation is not None:
            # A constant of the compiled step; a random batch of it per step (seeded: repeatable runs).
            self._collocation = ops.convert_to_tensor(physics.collocation)
            self._collocation_seed = keras.random.SeedGenerator(seed)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        term = self.physics(x, y_pred)
        # Weighted by the batch size, as Keras' own loss tracker: the epoch value is the per-sample mean.
        self.physics_tracker.update_state(term, sample_weight=ops.shape(y_pred)[0])
        total = term
        if training and self._collocation is not None:
            # The relations hold for any initial state: asked of inputs without targets too, they
            # generalise beyond the training rows (physics-informed learning's collocation points).
            rows = (self.collocation_batch_size,) if self.collocation_batch_size else ops.shape(y_pred)[:1]
            index = keras.random.randint(rows, 0, ops.shape(self._collocation)[0], seed=self._collocation_seed)
            x_free = ops.take(self._collocation, index, axis=0)
            total = total + self.physics(x_free, self(x_free, training=True))
        # Replicas' losses are summed by tf.distribute: scaled like Keras' own extra losses.
        weight = ops.cast(self.physics_weight, loss.dtype)
        return loss + scale_loss_for_distribution(weight * ops.cast(total, loss.dtype))


class PhysicsWeightWarmup(keras.callbacks.Callback):
    """Ramps the physics term's weight linearly from 0 to its full value over the first epochs.

    Early in training the predictions are far from the data and the physics
    relations alike; a full-weight term then dominates the gradient and steers the
    network to physics-consistent but wrong outputs it does not recover from.
    At the start of epoch ``e`` (0-based, counted over the whole run, so a resumed
    run continues the same ramp) the weight is ``weight * min(1, (e + 1) / (warmup_epochs + 1))``.
    The current value is logged as ``physics_loss_weight``.

    Args:
        model: the :class:`PhysicsInformedModel`.
        warmup_epochs: epochs of the ramp (0: the full weight from the start).

    Example:
        >>> # model.fit(..., callbacks=[PhysicsWeightWarmup(model, warmup_epochs=30)])  # doctest: +SKIP
    """

    def __init__(self, model: PhysicsInformedModel, warmup_epochs: int):
        super().__init__()
        self.target_model = model
        self.warmup_epochs = int(warmup_epochs)

    def weight_at(self, epoch: int) -> float:
        """The weight of epoch ``epoch`` (0-based)."""
        return self.target_model.physics.weight * min(1.0, (epoch + 1) / (self.warmup_epochs + 1))

    def on_epoch_begin(self, epoch, logs=None):
        self.target_model.physics_weight.assign(self.weight_at(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["physics_loss_weight"] = self.weight_at(epoch)

