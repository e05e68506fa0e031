"""Loss-weighting strategies: the pure NumPy core of the adaptive MSE/MAE loss.

Everything here is plain Python/NumPy so the strategies can be tested and used
without TensorFlow; the Keras side (:class:`~nnlab.losses.AdaptiveLoss` and its
callback) only assigns what these functions return.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from nnlab.config import LOSS_WEIGHTING_STRATEGIES
from nnlab.errors import ConfigError

__all__ = ["LOSS_TERMS", "LOSS_WEIGHTING_STRATEGIES", "compute_loss_weights"]

#: The loss terms, in the order of every weight pair and history row.
LOSS_TERMS = ("mse", "mae")

#: What ``loss_history`` / ``weight_history`` accept: rows of (mse, mae), oldest first,
#: as a sequence of pairs or an array of shape (epochs, 2); or a mapping
#: ``{"mse": [...], "mae": [...]}`` of equal-length per-term sequences.
History = Union[Sequence[Sequence[float]], Mapping[str, Sequence[float]], np.ndarray]

_N = len(LOSS_TERMS)
_UNIFORM = np.full(_N, 1.0 / _N)
# Denominator floor for relative losses: a term that reached exactly 0 must not
# turn the ratio into inf/NaN.
_TINY = 1e-12
# Finite stand-in for +-inf logits; large enough to dominate any real logit.
_BIG = 1e300


def compute_loss_weights(
    strategy: str,
    prev_r2: float = 0.5,
    prev_loss: float = 1.0,
    loss_history: History | None = None,
    weight_history: History | None = None,
    epoch: int = 0,
    *,
    beta: float = 0.1,
    alpha: float = 0.999,
    temperature: float = 0.1,
    expected_lookback: float = 0.999,
    mse_weight: float = 0.5,
    mae_weight: float = 0.5,
    rng: np.random.Generator | None = None,
    seed: int | None = None,
) -> tuple[float, float]:
    """The (mse_weight, mae_weight) to train epoch ``epoch`` with.

    The result is always finite, non-negative and sums to 1, whatever the
    inputs: history rows holding NaN/inf (a diverged epoch) are ignored,
    negative losses count as 0, a NaN R² counts as 0 and a NaN loss as huge.

    Strategies (``loss_weighting_strategy`` in the configuration):

    * ``r2_based``: r = clip(prev_r2, 0, 1); mse = min(0.9, 0.2 + 0.7 r),
      mae = max(0.1, 0.8 - 0.7 r).
    * ``loss_based``: n = clip(prev_loss / 2, 0, 1); the r2_based formula at r = 1 - n.
    * ``combined``: mean of r2_based and loss_based, renormalised.
    * ``physics_aware``: for epochs < 4 (number of terms + 2) the sine exploration
      w_i = (sin(epoch + 2 pi i / 2) + 1) / 2, normalised. Later: the sine vector
      plus the unit vector of sign(d) d², d = the difference of the last two
      weight pairs, negated when the total loss (mse + mae) of the last epoch is
      below the one before; MSE's weight is floored at max(0.05, 0.1 mean |w|),
      the vector shifted to be non-negative and normalised.
    * ``softadapt`` (Heydari et al. 2019, original variant): softmax(beta * s)
      of the slopes s = L(t) - L(t-1) of the last two finite epochs; beta > 0
      favours the term that falls slowest (or rises). Equal weights until two
      epochs are known.
    * ``relobralo`` (Bischof & Kraus 2021): with b(t, t') = softmax(L(t) /
      (temperature L(t'))) and rho ~ Bernoulli(expected_lookback),
      w(t) = alpha [rho w(t-1) + (1 - rho) b(t, 0)] + (1 - alpha) b(t, t-1).
      The paper's weights sum to the number of terms; these are the same
      divided by it. w(t-1) is the last row of ``weight_history`` (equal
      weights if empty).
    * ``fixed``: (mse_weight, mae_weight) normalised to sum 1.
    * ``none``: (1, 0), plain MSE.

    Args:
        strategy: one of :data:`LOSS_WEIGHTING_STRATEGIES`.
        prev_r2: the previous epoch's validation R² (``r2_based``, ``combined``).
        prev_loss: the previous epoch's loss (``loss_based``, ``combined``).
        loss_history: the (mse, mae) of each finished epoch, oldest first; see
            :data:`History` for the accepted shapes (``physics_aware``,
            ``softadapt``, ``relobralo``).
        weight_history: the (mse_weight, mae_weight) each of those epochs was
            trained with, oldest first, same shapes (``physics_aware``,
            ``relobralo``); rows are normalised to sum 1, all-zero rows ignored.
        epoch: the 0-based index of the epoch the weights are for.
        beta: SoftAdapt's beta (config ``softadapt_beta``).
        alpha: ReLoBRaLo's alpha (config ``relobralo_alpha``).
        temperature: ReLoBRaLo's temperature (config ``relobralo_temperature``).
        expected_lookback: ReLoBRaLo's E[rho] (config ``relobralo_expected_lookback``).
        mse_weight: the ``fixed`` MSE weight (config ``mse_weight``).
        mae_weight: the ``fixed`` MAE weight (config ``mae_weight``).
        rng: random generator for ReLoBRaLo's lookback draw; wins over ``seed``.
        seed: seed of a fresh generator when ``rng`` is None (None: unseeded).

    Returns:
        ``(mse_weight, mae_weight)`` as Python floats summing to 1.

    Raises:
        ConfigError: for an unknown strategy (the message lists them) or an
            option outside its range (the message names its config key).
        ValueError: for a history that is not rows of two numbers.

    Example:
        >>> compute_loss_weights("r2_based", prev_r2=0.5)
        (0.55, 0.45)
        >>> # MSE fell by 0.5, MAE by 0.1: the slower MAE gets the weight
        >>> compute_loss_weights("softadapt", loss_history=[(1.0, 1.0), (0.5, 0.9)], beta=10.0)
        (0.017986209962, 0.982013790038)
    """
    check_strategy_options(
        strategy,
        beta=beta,
        alpha=alpha,
        temperature=temperature,
        expected_lookback=expected_lookback,
        mse_weight=mse_weight,
        mae_weight=mae_weight,
    )
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")

    step = _Step(
        prev_r2=prev_r2,
        prev_loss=prev_loss,
        loss_history=loss_history,
        weight_history=weight_history,
        epoch=int(epoch),
        beta=beta,
        alpha=alpha,
        temperature=temperature,
        expected_lookback=expected_lookback,
        mse_weight=mse_weight,
        mae_weight=mae_weight,
        rng=rng,
        seed=seed,
    )
    # check_strategy_options rejected any name the registry does not hold.
    weights = STRATEGIES[strategy](step)
    return _as_pair(weights)


#: The strategy options and their defaults (the config keys are in the README).
STRATEGY_OPTION_DEFAULTS: dict[str, float] = {
    "beta": 0.1,
    "alpha": 0.999,
    "temperature": 0.1,
    "expected_lookback": 0.999,
    "mse_weight": 0.5,
    "mae_weight": 0.5,
}


def check_strategy_options(
    strategy: str,
    *,
    beta: float = 0.1,
    alpha: float = 0.999,
    temperature: float = 0.1,
    expected_lookback: float = 0.999,
    mse_weight: float = 0.5,
    mae_weight: float = 0.5,
) -> None:
    """Raise :class:`ConfigError` for an unknown strategy or an out-of-range option.

    The messages use the configuration key names, since that is where users set them.
    """
    if strategy not in LOSS_WEIGHTING_STRATEGIES:
        raise ConfigError(
            f"loss_weighting_strategy = {strategy!r} is invalid: "
            f"choose one of {', '.join(LOSS_WEIGHTING_STRATEGIES)}"
        )
    problems = []

    def check(key: str, value: Any, ok, allowed: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not ok(float(value)):
            problems.append(f"{key} = {value!r} is invalid: must be {allowed}")

    check("softadapt_beta", beta, math.isfinite, "a finite number")
    check("relobralo_alpha", alpha, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
    check("relobralo_temperature", temperature, lambda v: 0.0 < v < math.inf, "a finite number > 0")
    check("relobralo_expected_lookback", expected_lookback, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
    check("mse_weight", mse_weight, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
    check("mae_weight", mae_weight, lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
    if not problems and strategy == "fixed" and mse_weight + mae_weight <= 0:
        problems.append("mse_weight + mae_weight must be > 0 (they are normalised to sum 1)")
    if problems:
        raise ConfigError("invalid loss weighting options:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------
# Strategies: each returns a non-negative float64 vector with a positive sum.


def _r2_based(prev_r2: float) -> np.ndarray:
    # A NaN R² (e.g. constant targets) carries no evidence of fit: treat as 0.
    r = _clip01(prev_r2, nan=0.0)
    return np.array([min(0.9, 0.2 + 0.7 * r), max(0.1, 0.8 - 0.7 * r)])


def _loss_based(prev_loss: float) -> np.ndarray:
    # A NaN loss means training diverged: treat it as the worst (largest) loss.
    n = _clip01(_to_float(prev_loss) / 2, nan=1.0)
    r = 1.0 - n
    return np.array([min(0.9, 0.2 + 0.7 * r), max(0.1, 0.8 - 0.7 * r)])


def _physics_aware(epoch: int, losses: np.ndarray, weights: np.ndarray) -> np.ndarray:
    phases = 2 * np.pi * np.arange(_N) / _N
    sine = (np.sin(epoch + phases) + 1) / 2
    # The phases are evenly spread, so the sines cancel and the sum is _N / 2 > 0.
    sine = sine / sine.sum()
    if epoch < _N + 2:
        return sine
    adaptive = np.zeros(_N)
    if len(weights) >= 2:
        diff = weights[-1] - weights[-2]
        signed_square = np.sign(diff) * diff * diff
        norm = float(np.linalg.norm(signed_square))
        if norm > 0:  # 0 when the weights did not move (or the square underflowed)
            adaptive = signed_square / norm
        with np.errstate(over="ignore"):  # totals may overflow to inf; comparing inf is fine
            went_down = len(losses) >= 2 and losses[-1].sum() < losses[-2].sum()
        if went_down:
            adaptive = -adaptive
    raw = sine + adaptive
    # MSE is the primary objective: never let the exploration switch it off.
    raw[0] = max(raw[0], 0.05, 0.1 * float(np.mean(np.abs(raw))))
    if raw.min() < 0:
        raw = raw - raw.min()
    return raw


def _softadapt(losses: np.ndarray, beta: float) -> np.ndarray:
    if len(losses) < 2:
        return _UNIFORM.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        slopes = losses[-1] - losses[-2]
        return _softmax(beta * slopes)


def _relobralo(
    losses: np.ndarray,
    weights: np.ndarray,
    *,
    alpha: float,
    temperature: float,
    expected_lookback: float,
    rng: np.random.Generator,
) -> np.ndarray:
    previous_weights = weights[-1] if len(weights) else _UNIFORM.copy()
    if not len(losses):
        return previous_weights
    current = losses[-1]
    # With a single epoch known, L(t-1) = L(t): the step term is then uniform.
    previous = losses[-2] if len(losses) >= 2 else losses[-1]
    balance_step = _softmax(_relative(current, previous, temperature))
    balance_start = _softmax(_relative(current, losses[0], temperature))
    # rho = 1 keeps the running weights; rho = 0 "looks back" to the start of training.
    rho = float(rng.random() < expected_lookback)
    history = rho * previous_weights + (1 - rho) * balance_start
    return alpha * history + (1 - alpha) * balance_step


@dataclass(frozen=True)
class _Step:
    """What one call of :func:`compute_loss_weights` knows; each strategy reads its part."""

    prev_r2: float
    prev_loss: float
    loss_history: History | None
    weight_history: History | None
    epoch: int
    beta: float
    alpha: float
    temperature: float
    expected_lookback: float
    mse_weight: float
    mae_weight: float
    rng: np.random.Generator | None
    seed: int | None

    def losses(self) -> np.ndarray:
        return _clean_rows(self.loss_history, "loss_history")

    def weights(self) -> np.ndarray:
        return _clean_weights(self.weight_history)

    def generator(self) -> np.random.Generator:
        return self.rng if self.rng is not None else np.random.default_rng(self.seed)


#: Strategy name (config ``loss_weighting_strategy``) -> the weights it gives one step.
STRATEGIES: dict[str, Callable[[_Step], np.ndarray]] = {
    "r2_based": lambda step: _r2_based(step.prev_r2),
    "loss_based": lambda step: _loss_based(step.prev_loss),
    "combined": lambda step: (_r2_based(step.prev_r2) + _loss_based(step.prev_loss)) / 2,
    "physics_aware": lambda step: _physics_aware(step.epoch, step.losses(), step.weights()),
    "softadapt": lambda step: _softadapt(step.losses(), step.beta),
    "relobralo": lambda step: _relobralo(
        step.losses(),
        step.weights(),
        alpha=step.alpha,
        temperature=step.temperature,
        expected_lookback=step.expected_lookback,
        rng=step.generator(),
    ),
    "fixed": lambda step: np.array([step.mse_weight, step.mae_weight], dtype=float),
    "none": lambda step: np.array([1.0, 0.0]),
}
if set(STRATEGIES) != set(LOSS_WEIGHTING_STRATEGIES):  # the config names what users may choose
    raise AssertionError(f"loss strategies {sorted(STRATEGIES)} differ from the configuration's "
                         f"{sorted(LOSS_WEIGHTING_STRATEGIES)}")


# ---------------------------------------------------------------------------
# Helpers


def _clean_rows(history: History | None, name: str) -> np.ndarray:
    """``history`` as a float array of shape (rows, 2), without non-finite rows."""
    rows = _as_rows(history, name)
    rows = rows[np.isfinite(rows).all(axis=1)]
    # Losses and weights are non-negative by definition; a negative value is noise.
    return np.maximum(rows, 0.0)


def _clean_weights(history: History | None) -> np.ndarray:
    """Like :func:`_clean_rows`, each row normalised to sum 1; all-zero rows dropped."""
    rows = _clean_rows(history, "weight_history")
    # Scale in two steps so huge finite rows cannot overflow the sum.
    rows = rows / np.maximum(rows.max(axis=1, keepdims=True), _TINY) if len(rows) else rows
    totals = rows.sum(axis=1, keepdims=True)
    keep = totals[:, 0] > 0
    return rows[keep] / totals[keep]


def _as_rows(history: History | None, name: str) -> np.ndarray:
    if history is None:
        return np.empty((0, _N))
    try:
        if isinstance(history, Mapping):
            missing = [term for term in LOSS_TERMS if term not in history]
            if missing:
                raise ValueError(f"missing key(s) {missing}")
            columns = [np.asarray(history[term], dtype=float).reshape(-1) for term in LOSS_TERMS]
            if len({len(c) for c in columns}) != 1:
                raise ValueError(f"the per-term sequences differ in length: {[len(c) for c in columns]}")
            return np.column_stack(columns) if len(columns[0]) else np.empty((0, _N))
        rows = np.asarray(history, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be rows of (mse, mae) or a mapping {{'mse': [...], 'mae': [...]}}: {exc}"
        ) from None
    if rows.size == 0:
        return np.empty((0, _N))
    if rows.ndim != 2 or rows.shape[1] != _N:
        raise ValueError(f"{name} must have shape (epochs, {_N}) as rows of (mse, mae), got shape {rows.shape}")
    return rows


def _relative(current: np.ndarray, reference: np.ndarray, temperature: float) -> np.ndarray:
    """ReLoBRaLo's softmax logits L(t) / (temperature * L(t'))."""
    # Overflow to inf is fine here: _softmax maps it to a large finite logit.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return current / np.maximum(reference, _TINY) / temperature


def _softmax(logits: np.ndarray) -> np.ndarray:
    # Overflowed logits (huge slopes, tiny temperatures) become large finite
    # values, so the max-shift below never computes inf - inf.
    z = np.nan_to_num(np.asarray(logits, dtype=float), nan=0.0, posinf=_BIG, neginf=-_BIG)
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp(z - z.max())
    return e / e.sum()  # the max term is exp(0) = 1, so the sum is >= 1


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def _clip01(value: Any, *, nan: float) -> float:
    x = _to_float(value)
    if math.isnan(x):
        return nan
    return min(1.0, max(0.0, x))


def _as_pair(weights: np.ndarray) -> tuple[float, float]:
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    # Every strategy returns finite non-negative weights with a positive sum;
    # this guards the contract rather than papering over a bug.
    if not (np.isfinite(w).all() and (w >= 0).all() and total > 0):
        raise AssertionError(f"internal error: loss weights {w.tolist()} are not a valid distribution")
    w = w / total
    # 12 decimals: far below float32 resolution of the loss variable, and it
    # turns 0.8999999999999999 (0.2 + 0.7) into the 0.9 that logs should show.
    return round(float(w[0]), 12), round(float(w[1]), 12)
