"""The regression network: build, compile, train with the lab's callbacks, evaluate."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from nnlab._memory import check_network_fits
from nnlab.config import Config, resolve_config
from nnlab.constraints import build_constraint_callback, build_step_constraints
from nnlab.data import collocation_inputs
from nnlab.errors import ConfigError, DataValidationError, ErrorRecorder
from nnlab.losses import (
    PhysicsInformedModel,
    PhysicsLoss,
    PhysicsWeightWarmup,
    build_adaptive_loss,
)

__all__ = ["AdvancedNeuralNetwork", "build_optimizer", "build_strategy", "predict_array"]

METRICS_NOTE = "compiled with metrics mse, mae and keras.metrics.R2Score (logged as r2_score)"
# Validation data is only evaluated, so it goes in larger batches than training (fewer steps per epoch).
VALIDATION_BATCH_SIZE = 1024
# Added to the model seed for the physics term's collocation draws (distinct from the data's).
COLLOCATION_SEED_OFFSET = 1_000_003
# The simulated initial quantities (features) and the generation setting each is drawn from.
_DRAWN_FROM = {"mass": "mass_range", "initial_velocity_x": "velocity_x_range",
               "initial_velocity_y": "velocity_y_range", "initial_position_x": "position_x_range",
               "initial_position_y": "position_y_range", "charge": "charge_values",
               "magnetic_field_strength": "magnetic_field_range", "simulation_time": "simulation_time_range"}
# A collocation row this many of the data's standard deviations from its mean is far outside the data;
# warned when most rows are.
_FAR_SD = 4.0


def warn_collocation(model_config: Any, generation: Any, scalers: Any, collocation: np.ndarray) -> None:
    """Warn about collocation settings that cannot work as meant (``UserWarning``; training goes on).

    * ``physics_collocation_batch_size`` larger than ``physics_collocation_points``: every step
      draws more rows than the pool holds, so the same rows repeat within a batch;
    * collocation rows (drawn from the generation ranges) mostly far outside the training data
      (``--data`` rows from other ranges): the physics term then constrains the network where it
      has seen no data. Named per initial quantity, with its generation key and the data's range.
    """
    import warnings

    m = model_config
    if 0 < m.physics_collocation_points < m.physics_collocation_batch_size:
        warnings.warn(f"physics_collocation_batch_size = {m.physics_collocation_batch_size} is larger than "
                      f"physics_collocation_points = {m.physics_collocation_points}: each step draws its batch "
                      "from a smaller pool, so rows repeat; lower physics_collocation_batch_size or raise "
                      "physics_collocation_points", UserWarning, stacklevel=3)
    names = list(scalers.feature_names)
    far = []
    for feature, key in _DRAWN_FROM.items():
        if feature not in names or len(collocation) == 0:
            continue
        column = names.index(feature)
        if np.mean(np.abs(collocation[:, column]) > _FAR_SD) > 0.5:
            mean, sd = float(scalers.x_scaler.mean_[column]), float(scalers.x_scaler.scale_[column])
            far.append(f"{feature} ({key} = {list(getattr(generation, key))}; the data's mean ± 2 sd: "
                       f"[{mean - 2 * sd:.4g}, {mean + 2 * sd:.4g}])")
    if far:
        warnings.warn(f"the physics term's collocation rows lie far outside the training data for "
                      f"{'; '.join(far)}: the term would constrain the network where it has no data; set these "
                      "generation settings to the data's ranges (--set KEY=[low,high])", UserWarning, stacklevel=3)


# R² compares the error with the spread of the targets: one row has none.
MIN_ROWS_FOR_R2 = 2


def build_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """A Keras optimizer by config name (adam, adamw, sgd, rmsprop)."""
    optimizers = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    if name not in optimizers:
        raise ConfigError(f"optimizer = {name!r} is invalid: allowed {', '.join(optimizers)}")
    return optimizers[name](learning_rate=learning_rate)


# Up to this many rows one compiled call (predict_on_batch): model.predict builds a
# dataset and an iterator per call, which dominates the time for test-set-sized inputs.
ONE_CALL_ROWS = 65536


def predict_array(model: keras.Model, X: Any, *, batch_size: int = 1024) -> np.ndarray:
    """``model``'s predictions of ``X`` as a float32 array (one compiled call for test-set sizes).

    Under a MirroredStrategy (``distribution = "mirrored"``), Keras' ``predict_on_batch``
    hands the whole batch to every replica and concatenates their outputs (n_replicas x
    the rows); there the mirrored weights are called directly, batch by batch.
    """
    X = np.asarray(X, dtype=np.float32)
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        parts = [keras.ops.convert_to_numpy(model(X[i:i + batch_size], training=False))
                 for i in range(0, len(X), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)
    if len(X) <= ONE_CALL_ROWS:
        return np.asarray(model.predict_on_batch(X))
    return np.asarray(model.predict(X, batch_size=batch_size, verbose=0))


def build_strategy(config: Config) -> Any:
    """``tf.distribute.MirroredStrategy`` for ``distribution = "mirrored"``; None for ``"none"``."""
    t = config.training
    if t.distribution == "none":
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    wanted = t.distribution_devices
    if gpus:
        if wanted is not None and wanted > len(gpus):
            raise ConfigError(f"distribution_devices = {wanted}, but {len(gpus)} GPU(s) are visible")
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(wanted or len(gpus))])
    count = wanted or 1
    if count > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:  # (listing the logical devices first would start the runtime)
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            if len(tf.config.list_logical_devices("CPU")) < count:
                raise ConfigError(f"distribution_devices = {count}: logical CPU devices must be made before "
                                  "TensorFlow starts its runtime; start a new process") from None
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")[:count]])


def _check_xy(X: Any, y: Any, name: str, n_features: int, n_targets: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise DataValidationError(f"{name}: X must have shape (n, {n_features}), got {X.shape}")
    if y.ndim == 1 and n_targets == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != n_targets or len(y) != len(X):
        raise DataValidationError(f"{name}: y must have shape ({len(X)}, {n_targets}), got {y.shape}")
    if len(X) == 0:
        raise DataValidationError(f"{name}: no rows")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise DataValidationError(f"{name}: contains NaN or inf values")
    return X, y


class AdvancedNeuralNetwork:
    """A dense regression network configured by the lab's configuration.

    The Keras model is built at construction: ``hidden_layers`` dense layers
    (each followed by batch normalisation when ``use_batch_norm`` -- the dense
    layer then has no bias, batch norm's beta replaces it --, the activation,
    and dropout when ``dropout_rate > 0``), with L2 kernel regularisation, and a
    linear output layer. The loss is an :class:`~nnlab.losses.AdaptiveLoss`
    reweighted each epoch by the configured strategy, plus the physics term
    ``physics_loss_weight * PhysicsLoss`` when that weight is > 0; the weight
    constraints of the configuration are applied every ``constraint_interval`` epochs.

    Args:
        input_shape: shape of one input row, e.g. ``(23,)``.
        output_dim: number of regression targets.
        config: a :class:`~nnlab.config.Config` or a flat dict of keys (on top of
            the defaults).
        scalers: the data's fitted scalers and column names (a
            :class:`~nnlab.data.PreparedData` or :class:`~nnlab.data.Scalers`);
            needed when ``physics_loss_weight > 0`` (the physics term de-scales
            predictions and features with them, see :class:`~nnlab.losses.PhysicsLoss`).

    Example:
        >>> net = AdvancedNeuralNetwork((23,), 6, {"hidden_layers": [64, 32], "epochs": 2})
        >>> net.compile_model()
        >>> # results = net.train_with_custom_constraints(X_train, y_train, X_val, y_val, epochs=2)
    """

    def __init__(self, input_shape: Sequence[int] | int, output_dim: int, config: Config | Mapping | None = None,
                 *, scalers: Any = None):
        self.config = resolve_config(config)
        shape = (int(input_shape),) if isinstance(input_shape, (int, np.integer)) else tuple(int(d) for d in input_shape)
        if len(shape) != 1 or shape[0] < 1:
            raise ConfigError(f"input_shape must be (n_features,) with n_features >= 1, got {input_shape!r}")
        if int(output_dim) < 1:
            raise ConfigError(f"output_dim must be >= 1, got {output_dim!r}")
        self.input_shape = shape
        self.output_dim = int(output_dim)
        # Refuse before allocating: a network beyond memory would be killed, or swap for hours.
        check_network_fits(self.config, n_features=shape[0], n_targets=self.output_dim)
        self.errors = ErrorRecorder()
        # distribution = "mirrored": the network, its optimizer and every variable of the lab live in
        # the strategy's scope (one replica per device, gradients all-reduced each step).
        self.strategy = build_strategy(self.config)
        seed = self.config.model.seed
        if seed is not None:
            # Python, NumPy and TensorFlow seeds: same seed, same initial weights,
            # same shuffling, same dropout masks.
            keras.utils.set_random_seed(seed)
        self.physics_loss = self._physics_loss(scalers)
        with self.scope():
            self.model = self._build()
            self.loss, self.loss_callback = build_adaptive_loss(self.config)
            # With jit_compile the constraint chain's elementwise core is compiled
            # with XLA too: an application then takes a third of the time, for
            # about 0.25 s more at the first (docs/performance.md).
            self.constraint_callback = build_constraint_callback(self.config,
                                                                 jit_compile=self.config.training.jit_compile)
            # constraint_schedule = "step": the binary limits run inside the compiled
            # train step, after every optimizer update (attached at compile time).
            self.step_constraints = build_step_constraints(self.config)
        self._build_standard_callbacks()
        self.history: dict[str, list[float]] = {}
        self._compiled = False

    def scope(self) -> Any:
        """The distribution strategy's scope (``distribution = "mirrored"``), else a no-op context."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    # -- building -------------------------------------------------------------
    def _physics_loss(self, scalers: Any) -> PhysicsLoss | None:
        m = self.config.model
        if m.physics_loss_weight == 0:
            return None
        if scalers is None:
            raise ConfigError(f"physics_loss_weight = {m.physics_loss_weight:g} needs the data's scalers to de-scale "
                              "predictions and features: pass scalers= (a PreparedData or Scalers), or set "
                              "physics_loss_weight to 0")
        names = (len(scalers.feature_names), len(scalers.target_names))
        if names != (self.input_shape[0], self.output_dim):
            raise ConfigError(f"the scalers are for {names[0]} features -> {names[1]} targets, the network for "
                              f"{self.input_shape[0]} -> {self.output_dim}")
        # Collocation draws never repeat the data's: a seed of their own, derived from the model seed.
        seed = None if m.seed is None else (m.seed + COLLOCATION_SEED_OFFSET) % 2**32
        free = collocation_inputs(scalers, self.config.generation, m.physics_collocation_points, seed=seed)
        warn_collocation(m, self.config.generation, scalers, free)
        return PhysicsLoss(scalers, m.physics_loss_terms, weight=m.physics_loss_weight, collocation=free)

    def _build(self) -> keras.Model:
        m = self.config.model
        regularizer = keras.regularizers.L2(m.l2_regularization) if m.l2_regularization > 0 else None
        # Mixed precision per layer (not Keras' global policy, which would leak
        # into every model built later in the process): float32 variables,
        # bfloat16/float16 compute; the output layer stays float32 for the loss.
        policy = m.precision_policy
        inputs = keras.Input(self.input_shape, name="features")
        x = inputs
        for i, width in enumerate(m.hidden_layers, start=1):
            x = keras.layers.Dense(
                width, use_bias=not m.use_batch_norm, kernel_regularizer=regularizer, name=f"dense_{i}",
                dtype=policy,
            )(x)
            if m.use_batch_norm:
                x = keras.layers.BatchNormalization(
                    momentum=m.batch_norm_momentum, name=f"batch_norm_{i}", dtype=policy
                )(x)
            if m.activation == "prelu":
                x = keras.layers.PReLU(name=f"prelu_{i}", dtype=policy)(x)
            else:
                x = keras.layers.Activation(m.activation, name=f"{m.activation}_{i}", dtype=policy)(x)
            if m.dropout_rate > 0:
                x = keras.layers.Dropout(m.dropout_rate, name=f"dropout_{i}", dtype=policy)(x)
        outputs = keras.layers.Dense(self.output_dim, activation="linear", name="targets", dtype="float32")(x)
        if self.physics_loss is not None:
            return PhysicsInformedModel(inputs, outputs, physics=self.physics_loss, seed=self.config.model.seed,
                                        collocation_batch_size=self.config.model.physics_collocation_batch_size,
                                        name="advanced_neural_network")
        return keras.Model(inputs, outputs, name="advanced_neural_network")

    def compile_model(self) -> keras.Model:
        """Compile with the adaptive loss, metrics mse/mae/R², ``steps_per_execution``
        and ``jit_compile`` from the configuration; with ``precision_policy =
        mixed_float16`` the optimizer scales the loss (dynamic loss scaling);
        with ``constraint_schedule = step`` the binary limits are attached to
        the weights, to run after every optimizer update."""
        m, t = self.config.model, self.config.training
        steps, jit = t.steps_per_execution, t.jit_compile
        if self.strategy is not None:
            # Both fail under MirroredStrategy here (Keras 3.15, TF 2.21): several steps per call feed
            # the replicas' while loop no input ("You must feed a value for placeholder tensor"), and XLA
            # cannot use variables of other (logical) devices. The config validator warns about it.
            steps, jit = 1, False
        with self.scope():
            optimizer = build_optimizer(m.optimizer, m.learning_rate)
            if m.precision_policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.model.compile(
                optimizer=optimizer,
                loss=self.loss,
                metrics=["mse", "mae", keras.metrics.R2Score(name="r2_score")],
                steps_per_execution=steps,
                jit_compile=jit,
            )
            if self.step_constraints is not None:
                self.step_constraints.attach(self.model)
        self._compiled = True
        return self.model

    # -- training -------------------------------------------------------------
    def lab_callbacks(self) -> list[keras.callbacks.Callback]:
        """The constraint and adaptive-loss callbacks, in the order they must run
        (before anything that reads their statistics from the logs)."""
        callbacks: list[keras.callbacks.Callback] = []
        if self.physics_loss is not None:
            callbacks.append(PhysicsWeightWarmup(self.model, self.config.model.physics_loss_warmup_epochs))
        if self.step_constraints is not None:
            callbacks.append(self.step_constraints)
        if self.constraint_callback is not None:
            callbacks.append(self.constraint_callback)
        callbacks.append(self.loss_callback)
        return callbacks

    def _build_standard_callbacks(self) -> None:
        t = self.config.training
        self.reduce_lr = None
        self.early_stopping = None
        if t.reduce_lr_on_plateau:
            self.reduce_lr = keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=t.reduce_lr_factor, patience=t.reduce_lr_patience,
                min_lr=t.min_learning_rate, verbose=0,
            )
        if t.early_stopping_patience is not None:
            self.early_stopping = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=t.early_stopping_patience, restore_best_weights=True
            )

    def standard_callbacks(self) -> list[keras.callbacks.Callback]:
        """TerminateOnNaN, and early stopping / LR reduction when configured."""
        callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
        callbacks += [cb for cb in (self.reduce_lr, self.early_stopping) if cb is not None]
        return callbacks

    def standard_callback_states(self) -> dict[str, tuple[keras.callbacks.Callback, tuple[str, ...]]]:
        """The LR-plateau and early-stopping callbacks and the attributes that are their state.

        Returns:
            ``{"reduce_lr": (callback, ("wait", "best", "cooldown_counter")), "early_stopping": ...}``
            for the configured ones; whoever checkpoints a run saves and restores
            these attributes.
        """
        states: dict[str, tuple[keras.callbacks.Callback, tuple[str, ...]]] = {}
        if self.reduce_lr is not None:
            states["reduce_lr"] = (self.reduce_lr, ("wait", "best", "cooldown_counter"))
        if self.early_stopping is not None:
            # The early-stopping best weights are not state here: after a resume
            # it restores the best weights seen since the resume.
            states["early_stopping"] = (self.early_stopping, ("wait", "best", "best_epoch"))
        return states

    def train_with_custom_constraints(
        self,
        X_train: Any,
        y_train: Any,
        X_val: Any,
        y_val: Any,
        epochs: int = 50,
        batch_size: int = 32,
        *,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        verbose: int | str = "auto",
        initial_epoch: int = 0,
        final_callbacks: Sequence[keras.callbacks.Callback] = (),
    ) -> dict[str, Any]:
        """Train with ``model.fit`` in graph mode and the lab's callbacks.

        Callback order: weight constraints, adaptive loss, then ``callbacks``
        (trackers, checkpoints: they see the statistics the first two add to the
        logs), then TerminateOnNaN, LR reduction, early stopping, then
        ``final_callbacks``.

        Args:
            X_train, y_train, X_val, y_val: float arrays (scaled).
            epochs: number of epochs (in total, counting ``initial_epoch``).
            batch_size: batch size.
            callbacks: extra callbacks (tracker, checkpoints).
            final_callbacks: callbacks that must run after everything else
                (full-state checkpoints: they capture the epoch's final state).
            verbose: Keras progress output (0 silent, 1 bar, 2 a line per epoch).
            initial_epoch: epoch to start from (resuming).

        Returns:
            ``history`` (per-epoch logs), ``final_results`` (last epoch's logs),
            ``adaptive_loss_history``, ``constraint_history``, ``errors``,
            ``constraints_used``, ``epochs_run``, ``diverged`` (NaN loss),
            ``training_time``.
        """
        n_features, n_targets = self.input_shape[0], self.output_dim
        X_train, y_train = _check_xy(X_train, y_train, "training data", n_features, n_targets)
        X_val, y_val = _check_xy(X_val, y_val, "validation data", n_features, n_targets)
        if int(epochs) < 1 or int(batch_size) < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
        if not self._compiled:
            self.compile_model()
        all_callbacks = [*self.lab_callbacks(), *callbacks, *self.standard_callbacks(), *final_callbacks]
        if len(X_val) < MIN_ROWS_FOR_R2:
            all_callbacks.insert(0, _UnavailableValidationR2())
        if verbose != 0:
            all_callbacks.append(_StepCountProgbar())  # Keras uses it instead of its own
        start = time.perf_counter()
        fit = self.model.fit(
            X_train,
            y_train,
            validation_data=(X_val, y_val),
            epochs=int(epochs),
            batch_size=int(batch_size),
            validation_batch_size=max(int(batch_size), VALIDATION_BATCH_SIZE),
            callbacks=all_callbacks,
            verbose=verbose,
            initial_epoch=initial_epoch,
            shuffle=True,
        )
        elapsed = time.perf_counter() - start
        history = {k: [float(v) for v in values] for k, values in fit.history.items()}
        self.history = history
        losses = history.get("loss", [])
        diverged = bool(losses) and not np.all(np.isfinite(losses))
        final = {k: values[-1] for k, values in history.items() if values}
        return {
            "history": history,
            "final_results": final,
            "adaptive_loss_history": list(self.loss_callback.history),
            "constraint_history": list(self.constraint_callback.history) if self.constraint_callback else [],
            "errors": self.get_error_summary(),
            "constraints_used": self.constraints_used(),
            "loss_weighting_strategy": self.config.model.loss_weighting_strategy,
            "epochs_run": len(losses),
            "diverged": diverged,
            "training_time": elapsed,
        }

    def constraints_used(self) -> list[str]:
        """Names of the weight constraints applied, per step first, then those of
        the epoch-level chain (empty if none)."""
        step = self.step_constraints.constraints if self.step_constraints is not None else []
        chain = self.constraint_callback.constraints if self.constraint_callback is not None else []
        return [c.name for c in [*step, *chain]]

    # -- evaluation -----------------------------------------------------------
    def predict(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Predictions (in the scaled target space)."""
        return predict_array(self.model, X, batch_size=batch_size)

    def evaluate_model(self, X_test: Any, y_test: Any, *, repeats: int = 5) -> dict[str, Any]:
        """Test metrics on the scaled targets, averaged over targets.

        Returns ``mse``, ``mae``, ``rmse``, ``r2`` (mean of the per-target R²),
        ``r2_per_target``, and ``inference_time`` (median of ``repeats`` timed
        predictions of the whole test set after one warm-up) with
        ``samples_per_second``.
        """
        X_test, y_test = _check_xy(X_test, y_test, "test data", self.input_shape[0], self.output_dim)
        self.predict(X_test[: min(len(X_test), 32)])  # warm-up: trace and compile predict
        timings = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            pred = self.predict(X_test)
            timings.append(time.perf_counter() - start)
        inference = float(np.median(timings))
        metrics = regression_metrics(y_test, pred)
        metrics.update(
            inference_time=inference,
            samples_per_second=float(len(X_test) / inference) if inference > 0 else float("inf"),
            n_samples=len(X_test),
        )
        return metrics

    def get_error_summary(self) -> dict[str, Any]:
        """Failures of optional components recorded during this model's life."""
        return self.errors.summary()


class _UnavailableValidationR2(keras.callbacks.Callback):
    """With fewer than two validation rows R² is undefined: log NaN, not Keras' 0.0.

    Runs first, so the tracker, checkpoints and history all see NaN.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "val_r2_score" in logs:
            logs["val_r2_score"] = float("nan")


class _StepCountProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar without ``10/6``-style counts.

    With ``steps_per_execution`` Keras reports the last step of each execution
    as ``begin + steps_per_execution - 1``, past the epoch's end when the steps
    per epoch are not a multiple of it; the bar would show ``10/6``. Clamped to
    the epoch's steps, the count is right and training keeps its speed.
    """

    def on_train_batch_end(self, batch, logs=None):
        if self.target is not None:
            batch = min(batch, self.target - 1)
        super().on_train_batch_end(batch, logs)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """mse, mae, rmse and R² (mean over targets, and per target) of 2-D arrays.

    R² needs at least two rows (:data:`MIN_ROWS_FOR_R2`) and a target that
    varies; otherwise it is NaN (unavailable), as are all metrics of zero rows.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred.reshape(-1, 1)
    if len(y_true) == 0:
        nan_t = [float("nan")] * y_true.shape[1]
        return {"mse": float("nan"), "mae": float("nan"), "rmse": float("nan"), "r2": float("nan"),
                "mse_per_target": nan_t, "mae_per_target": nan_t, "rmse_per_target": nan_t, "r2_per_target": nan_t}
    err = y_pred - y_true
    mse_t = np.mean(err**2, axis=0)
    mae_t = np.mean(np.abs(err), axis=0)
    var_t = np.var(y_true, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2_t = np.where((var_t > 0) & (len(y_true) >= MIN_ROWS_FOR_R2), 1.0 - mse_t / var_t, np.nan)
    return {
        "mse": float(np.mean(mse_t)),
        "mae": float(np.mean(mae_t)),
        "rmse": float(np.sqrt(np.mean(mse_t))),
        "r2": float(np.nanmean(r2_t)) if np.isfinite(r2_t).any() else float("nan"),
        "mse_per_target": mse_t.tolist(),
        "mae_per_target": mae_t.tolist(),
        "rmse_per_target": np.sqrt(mse_t).tolist(),
        "r2_per_target": r2_t.tolist(),
    }
