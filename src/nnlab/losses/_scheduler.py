"""The weights of successive epochs: the state around :func:`compute_loss_weights`."""

from __future__ import annotations

import numpy as np

from nnlab.losses._strategies import STRATEGY_OPTION_DEFAULTS, check_strategy_options, compute_loss_weights

__all__ = ["LossWeightScheduler"]


class LossWeightScheduler:
    """Loss weights epoch after epoch under one strategy, reproducibly.

    Holds what :func:`compute_loss_weights` needs between epochs: the (mse, mae)
    of every finished epoch, the weights every epoch was trained with, and a
    seeded random generator (ReLoBRaLo's lookback draws), so two runs with the
    same seed and losses get the same weights. No TensorFlow involved.

    ``weight_history[k]`` is the pair epoch ``k`` trains with and
    ``loss_history[k]`` what epoch ``k`` measured; :attr:`current_weights` is
    the pair for the epoch about to run.

    Args:
        strategy: one of ``nnlab.config.LOSS_WEIGHTING_STRATEGIES``.
        seed: seed of the random generator (config ``seed``); None: unseeded.
        **options: ``beta``, ``alpha``, ``temperature``, ``expected_lookback``,
            ``mse_weight``, ``mae_weight`` as for :func:`compute_loss_weights`
            (defaults :data:`STRATEGY_OPTION_DEFAULTS`).

    Raises:
        ConfigError: for an unknown strategy or an out-of-range option.

    Example:
        >>> scheduler = LossWeightScheduler("loss_based")
        >>> scheduler.current_weights  # epoch 0: the default previous loss of 1.0
        (0.55, 0.45)
        >>> scheduler.next_weights(mse=0.3, mae=0.4, loss=0.0)  # epoch 1
        (0.9, 0.1)
        >>> scheduler.loss_history, scheduler.epoch
        ([(0.3, 0.4)], 1)
    """

    def __init__(self, strategy: str = "physics_aware", *, seed: int | None = 42, **options: float):
        self.options = {**STRATEGY_OPTION_DEFAULTS, **options}
        check_strategy_options(strategy, **self.options)
        self.strategy = strategy
        self.seed = seed
        self.reset()

    def reset(self) -> tuple[float, float]:
        """Forget all epochs, reseed, and return the weights of epoch 0."""
        self._rng = np.random.default_rng(self.seed)
        self.loss_history: list[tuple[float, float]] = []
        self.weight_history: list[tuple[float, float]] = []
        weights = compute_loss_weights(self.strategy, epoch=0, rng=self._rng, **self.options)
        self.weight_history.append(weights)
        return weights

    @property
    def epoch(self) -> int:
        """The 0-based index of the epoch :attr:`current_weights` are for."""
        return len(self.loss_history)

    @property
    def current_weights(self) -> tuple[float, float]:
        """``(mse_weight, mae_weight)`` for the epoch about to run."""
        return self.weight_history[-1]

    def next_weights(
        self,
        mse: float,
        mae: float,
        *,
        r2: float | None = None,
        loss: float | None = None,
    ) -> tuple[float, float]:
        """Record the epoch that just finished and return the next epoch's weights.

        Args:
            mse: the epoch's (training) mean squared error.
            mae: the epoch's (training) mean absolute error.
            r2: the R² the R²-based strategies use (validation R² in the callback);
                None: 0.5, the neutral midpoint.
            loss: the loss the loss-based strategies use; None: the weighted
                loss ``w_mse * mse + w_mae * mae`` of the finished epoch.
        """
        mse, mae = float(mse), float(mae)
        if loss is None:
            w_mse, w_mae = self.current_weights
            loss = w_mse * mse + w_mae * mae
        self.loss_history.append((mse, mae))
        weights = compute_loss_weights(
            self.strategy,
            prev_r2=0.5 if r2 is None else r2,
            prev_loss=loss,
            loss_history=self.loss_history,
            weight_history=self.weight_history,
            epoch=self.epoch,
            rng=self._rng,
            **self.options,
        )
        self.weight_history.append(weights)
        return weights

    def __repr__(self) -> str:
        return f"LossWeightScheduler({self.strategy!r}, epoch={self.epoch}, current_weights={self.current_weights})"
