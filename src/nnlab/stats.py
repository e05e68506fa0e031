"""Statistics used by the analysis and the studies: paired tests, effect sizes, bootstrap CIs, decay fits.

Plain NumPy arrays in, plain floats/dicts out; SciPy does the tests.

Example:
    >>> round(compare_paired([1.0, 1.2, 0.9, 1.1], [0.8, 1.0, 0.7, 1.0])["cohens_d"], 2)
    3.5
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import optimize, stats

__all__ = [
    "paired_wilcoxon",
    "cohens_d_paired",
    "bootstrap_ci",
    "compare_paired",
    "one_sample_ttest",
    "min_wilcoxon_p",
    "fit_exponential_decay",
]


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of the paired differences ``a - b``.

    Pairs with a non-finite value are dropped. With no non-zero difference
    the samples are identical: statistic 0, p = 1. With fewer than one pair the
    result is NaN.

    Returns:
        ``statistic``, ``p_value``, ``n`` (pairs used).
    """
    a, b = _paired(a, b)
    n = int(a.size)
    if n == 0:
        return {"statistic": math.nan, "p_value": math.nan, "n": 0}
    if not np.any(a - b):
        return {"statistic": 0.0, "p_value": 1.0, "n": n}
    result = stats.wilcoxon(a, b, alternative="two-sided")
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "n": n}


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon test can give for ``n`` pairs (2 / 2**n)."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


def cohens_d_paired(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d for paired samples: mean(a - b) / std(a - b, ddof=1).

    NaN with fewer than two pairs or identical samples; ±inf when every
    difference is the same non-zero value.
    """
    a, b = _paired(a, b)
    if a.size < 2:
        return math.nan
    diff = a - b
    mean, sd = float(np.mean(diff)), float(np.std(diff, ddof=1))
    if sd == 0.0:
        return math.nan if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / sd


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], Any] = np.mean, *,
                 confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` (vectorised, seeded).

    ``statistic`` must accept an ``axis`` keyword (np.mean, np.median...).
    Non-finite values are dropped; an empty sample gives (NaN, NaN).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(n_resamples, x.size))]
    estimates = statistic(samples, axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(estimates, [tail, 100.0 - tail])
    return (float(low), float(high))


def compare_paired(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05,
                   seed: int = 0) -> dict[str, Any]:
    """Wilcoxon test, paired Cohen's d and a 95% bootstrap CI of the mean difference ``a - b``.

    Returns:
        ``n``, ``mean_a``, ``mean_b``, ``mean_diff``, ``ci_low``, ``ci_high``,
        ``wilcoxon_statistic``, ``p_value``, ``cohens_d``, ``significant``
        (p < alpha) and ``min_attainable_p`` (of the exact test for n pairs).
    """
    x, y = _paired(a, b)
    test = paired_wilcoxon(x, y)
    low, high = bootstrap_ci(x - y, seed=seed)
    p = test["p_value"]
    return {
        "n": test["n"],
        "mean_a": float(np.mean(x)) if x.size else math.nan,
        "mean_b": float(np.mean(y)) if y.size else math.nan,
        "mean_diff": float(np.mean(x - y)) if x.size else math.nan,
        "ci_low": low,
        "ci_high": high,
        "wilcoxon_statistic": test["statistic"],
        "p_value": p,
        "cohens_d": cohens_d_paired(x, y),
        "significant": bool(np.isfinite(p) and p < alpha),
        # Zero differences are dropped by the test, so they do not count towards its resolution.
        "min_attainable_p": min_wilcoxon_p(int(np.count_nonzero(x - y))),
    }


def one_sample_ttest(values: Sequence[float], popmean: float = 0.0, *,
                     alternative: str = "greater") -> dict[str, float]:
    """``scipy.stats.ttest_1samp`` with the degenerate cases made explicit.

    With zero variance (up to rounding) the t statistic is undefined; the evidence is then
    certain: p = 0 when the mean is on the ``alternative`` side of ``popmean``,
    1 otherwise. Fewer than two finite values give NaN.

    Returns:
        ``statistic``, ``p_value``, ``n``, ``mean``, ``std``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n < 2:
        return {"statistic": math.nan, "p_value": math.nan, "n": n,
                "mean": float(x.mean()) if n else math.nan, "std": math.nan}
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if np.ptp(x) <= 1e-12 * max(1.0, abs(mean)):  # constant up to rounding: t is undefined
        sd = 0.0
        diff = mean - popmean
        side = {"greater": diff > 0, "less": diff < 0, "two-sided": diff != 0}[alternative]
        return {"statistic": math.copysign(math.inf, diff) if diff else math.nan,
                "p_value": 0.0 if side else 1.0, "n": n, "mean": mean, "std": sd}
    result = stats.ttest_1samp(x, popmean, alternative=alternative)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "n": n, "mean": mean, "std": sd}


def _decay(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.exp(-b * t) + c


def fit_exponential_decay(epochs: Sequence[float], values: Sequence[float], *,
                          floor: float | None = None) -> dict[str, float] | None:
    """Fit a decay ``y = a·exp(-b·(t - t0)) + c`` (a ≥ 0, b ≥ 0) to a curve; None if it cannot be fitted.

    ``t0`` is the first epoch given; ``floor`` is a lower bound of the asymptote
    ``c`` (0 for a loss). Returns ``a``, ``b``, ``c`` (the
    asymptote), ``r2`` of the fit, ``last_fit`` (the fitted value at the last
    epoch), ``remaining`` (last_fit - c, the improvement still to come if the
    trend holds) and ``remaining_fraction`` (remaining / last_fit).
    """
    t = np.asarray(epochs, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    if t.size < 4 or np.ptp(y) == 0:
        return None
    t0 = t[0]
    span = max(float(t[-1] - t0), 1.0)
    low_c = -np.inf if floor is None else float(floor)
    c0 = max(float(y.min() - 0.1 * np.ptp(y)), low_c)
    p0 = (max(float(y[0] - y[-1]), 1e-12), 3.0 / span, c0)
    try:
        params, _ = optimize.curve_fit(_decay, t - t0, y, p0=p0,
                                       bounds=([0.0, 0.0, low_c], [np.inf, np.inf, np.inf]), maxfev=5000)
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    a, b, c = (float(v) for v in params)
    fitted = _decay(t - t0, a, b, c)
    ss_res = float(np.sum((y - fitted) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    last_fit = float(fitted[-1])
    remaining = last_fit - c
    return {
        "a": a, "b": b, "c": c, "t0": float(t0),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "last_fit": last_fit,
        "remaining": remaining,
        "remaining_fraction": remaining / abs(last_fit) if last_fit else math.nan,
        "e_foldings": float(b * span),  # < 1: the window shows little curvature; the asymptote is a long extrapolation
    }
