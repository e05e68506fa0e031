"""The Keras callback that reweights an :class:`AdaptiveLoss` at each epoch end."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras

from nnlab.losses._adaptive_loss import AdaptiveLoss
from nnlab.losses._scheduler import LossWeightScheduler

__all__ = ["AdaptiveLossCallback", "build_adaptive_loss"]

# Log names Keras gives the metrics, depending on how they were passed to
# compile(): "mse" / "mae" strings, metric classes, or R2Score's default name.
_MSE_KEYS = ("mse", "mean_squared_error", "MeanSquaredError")
_MAE_KEYS = ("mae", "mean_absolute_error", "MeanAbsoluteError")
_R2_KEYS = ("r2_score", "r2", "R2Score", "r2score")

#: The columns of :attr:`AdaptiveLossCallback.history`, in order.
HISTORY_COLUMNS = ("epoch", "mse", "mae", "val_r2", "mse_weight", "mae_weight", "combined_loss")


class AdaptiveLossCallback(keras.callbacks.Callback):
    """Reassigns an :class:`AdaptiveLoss`'s MSE/MAE weights after every epoch.

    Lifecycle:

    * construction and ``on_train_begin``: the strategy's epoch-0 weights are
      assigned (each ``fit`` starts a fresh, reseeded schedule and history);
    * ``on_epoch_end``: reads the epoch's training ``mse``/``mae`` metrics, its
      validation R² and loss from ``logs``, records one row in :attr:`history`,
      adds ``mse_weight``/``mae_weight`` (the weights this epoch trained with) to
      ``logs`` so ``History``/``CSVLogger`` record them (list this callback
      before a ``CSVLogger``), and assigns the next epoch's weights to the loss
      variable (no retracing; the compiled step reads the variable).

    Inputs taken from ``logs``: ``mse`` and ``mae`` (also ``mean_squared_error``
    etc.), required: compile with ``metrics=["mse", "mae", keras.metrics.R2Score()]``.
    The R² the R²-based strategies see is ``val_r2_score`` (or ``val_r2``...);
    without validation data it falls back to the training ``r2_score``, and
    without that to 0.5 (neutral); the history's ``val_r2`` is then NaN. The
    loss the loss-based strategies see is ``val_loss``, else ``loss``.

    Each :attr:`history` row is a dict with :data:`HISTORY_COLUMNS`: ``epoch``,
    training ``mse`` and ``mae``, ``val_r2`` (NaN without validation R²), the
    ``mse_weight``/``mae_weight`` this epoch trained with and
    ``combined_loss = mse_weight * mse + mae_weight * mae``.

    Args:
        loss: the :class:`AdaptiveLoss` the model is compiled with.
        strategy: one of ``nnlab.config.LOSS_WEIGHTING_STRATEGIES``.
        seed: seed of ReLoBRaLo's lookback draws (config ``seed``).
        **options: the strategy options of :class:`LossWeightScheduler`
            (``beta``, ``alpha``, ``temperature``, ``expected_lookback``,
            ``mse_weight``, ``mae_weight``).

    Raises:
        ConfigError: for an unknown strategy or an out-of-range option.
        TypeError: if ``loss`` is not an :class:`AdaptiveLoss`.

    Example:
        >>> import keras, numpy as np
        >>> loss = AdaptiveLoss()
        >>> callback = AdaptiveLossCallback(loss, strategy="r2_based")
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> model.compile("adam", loss=loss, metrics=["mse", "mae", keras.metrics.R2Score()])
        >>> x, y = np.random.rand(32, 3), np.random.rand(32, 2)
        >>> fit = model.fit(x, y, epochs=2, validation_split=0.25, callbacks=[callback], verbose=0)
        >>> [row["epoch"] for row in callback.history], "mse_weight" in fit.history
        ([0, 1], True)
    """

    def __init__(self, loss: AdaptiveLoss, strategy: str = "physics_aware", *, seed: int | None = 42,
                 **options: float):
        super().__init__()
        if not isinstance(loss, AdaptiveLoss):
            raise TypeError(f"AdaptiveLossCallback needs an AdaptiveLoss, got {type(loss).__name__}")
        self.loss = loss
        self.scheduler = LossWeightScheduler(strategy, seed=seed, **options)
        self.history: list[dict[str, float]] = []
        self._resumed = False
        # The loss holds the epoch-0 weights from the start, so a model compiled
        # with it already computes what the first epoch will.
        self.loss.assign_weights(*self.scheduler.current_weights)

    @property
    def strategy(self) -> str:
        """The loss weighting strategy."""
        return self.scheduler.strategy

    def on_train_begin(self, logs=None):
        self._check_model_uses_loss()
        if self._resumed:
            # Continuing a checkpointed run: keep the restored schedule and history.
            self._resumed = False
            self.loss.assign_weights(*self.scheduler.current_weights)
            return
        self.history = []
        self.loss.assign_weights(*self.scheduler.reset())

    def get_state(self) -> tuple[dict, dict]:
        """The schedule, its random generator and the history, for a training checkpoint."""
        scheduler = self.scheduler
        return {
            "history": [dict(row) for row in self.history],
            "loss_history": [list(row) for row in scheduler.loss_history],
            "weight_history": [list(row) for row in scheduler.weight_history],
            "rng": scheduler._rng.bit_generator.state,
        }, {}

    def set_state(self, meta, arrays) -> None:
        """Restore :meth:`get_state`'s output; the next ``fit`` continues the schedule."""
        scheduler = self.scheduler
        scheduler.loss_history = [tuple(row) for row in meta["loss_history"]]
        scheduler.weight_history = [tuple(row) for row in meta["weight_history"]]
        scheduler._rng.bit_generator.state = meta["rng"]
        self.history = [dict(row) for row in meta["history"]]
        self._resumed = True
        self.loss.assign_weights(*scheduler.current_weights)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        mse = _required_metric(logs, _MSE_KEYS, "mse")
        mae = _required_metric(logs, _MAE_KEYS, "mae")
        val_r2 = _optional_metric(logs, tuple("val_" + key for key in _R2_KEYS))
        r2 = val_r2 if val_r2 is not None else _optional_metric(logs, _R2_KEYS)
        loss = _optional_metric(logs, ("val_loss",))
        if loss is None:
            loss = _optional_metric(logs, ("loss",))

        mse_weight, mae_weight = self.scheduler.current_weights
        self.history.append(
            {
                "epoch": int(epoch),
                "mse": mse,
                "mae": mae,
                "val_r2": math.nan if val_r2 is None else val_r2,
                "mse_weight": mse_weight,
                "mae_weight": mae_weight,
                "combined_loss": mse_weight * mse + mae_weight * mae,
            }
        )
        logs["mse_weight"] = mse_weight
        logs["mae_weight"] = mae_weight
        self.loss.assign_weights(*self.scheduler.next_weights(mse, mae, r2=r2, loss=loss))

    def _check_model_uses_loss(self) -> None:
        # Reweighting a loss the model does not use would silently do nothing.
        compiled = getattr(self.model, "loss", None)
        if compiled is None:
            return
        if isinstance(compiled, Mapping):
            candidates = list(compiled.values())
        elif isinstance(compiled, (list, tuple)):
            candidates = list(compiled)
        else:
            candidates = [compiled]
        if not any(candidate is self.loss for candidate in candidates):
            raise ValueError(
                "AdaptiveLossCallback: the model is not compiled with this callback's AdaptiveLoss "
                f"(model.loss is {compiled!r}); pass the same object to model.compile(loss=...)"
            )


def build_adaptive_loss(config: Any = None) -> tuple[AdaptiveLoss, AdaptiveLossCallback]:
    """The loss and callback for the configured ``loss_weighting_strategy``.

    Args:
        config: a :class:`nnlab.config.Config`, a flat dict of configuration keys
            (on top of the defaults) or None (defaults).

    Returns:
        ``(loss, callback)``: compile the model with ``loss`` (and metrics
        ``["mse", "mae", keras.metrics.R2Score()]``), pass ``callback`` to ``fit``.

    Raises:
        ConfigError: for an invalid configuration.

    Example:
        >>> loss, callback = build_adaptive_loss({"loss_weighting_strategy": "none"})
        >>> callback.strategy, loss.mse_weight
        ('none', 1.0)
    """
    from nnlab.config import resolve_config

    model_config = resolve_config(config).model
    loss = AdaptiveLoss()
    callback = AdaptiveLossCallback(
        loss,
        model_config.loss_weighting_strategy,
        beta=model_config.softadapt_beta,
        alpha=model_config.relobralo_alpha,
        temperature=model_config.relobralo_temperature,
        expected_lookback=model_config.relobralo_expected_lookback,
        mse_weight=model_config.mse_weight,
        mae_weight=model_config.mae_weight,
        seed=model_config.seed,
    )
    return loss, callback


def _optional_metric(logs: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if key in logs and logs[key] is not None:
            return float(logs[key])
    return None


def _required_metric(logs: Mapping[str, Any], keys: tuple[str, ...], name: str) -> float:
    value = _optional_metric(logs, keys)
    if value is None:
        raise ValueError(
            f"AdaptiveLossCallback needs the training metric '{name}' in the epoch logs; compile the model "
            f"with metrics=['mse', 'mae', keras.metrics.R2Score()] (the logs had: {sorted(logs)})"
        )
    return value
