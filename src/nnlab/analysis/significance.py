"""Correlations the analysis reports, with a minimum n and a small-sample p-value.

A rank correlation over a handful of runs says nothing: with 4 runs ρ = ±1 happens by chance
one time in 12. So below :data:`MIN_CORRELATION_N` pairs no ρ or p is reported, only "n too
small". Up to :data:`PERMUTATION_MAX_N` pairs the p-value is a permutation test
(``scipy.stats.permutation_test``, pairings; exact when n! ≤ :data:`PERMUTATIONS`, else
:data:`PERMUTATIONS` seeded random permutations); above it the t-approximation of
``scipy.stats.spearmanr`` is accurate and used. The method is returned with every result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["MIN_CORRELATION_N", "PERMUTATION_MAX_N", "PERMUTATIONS", "spearman", "too_small_text"]

MIN_CORRELATION_N = 8
PERMUTATION_MAX_N = 25
PERMUTATIONS = 20_000


def too_small_text(n: int) -> str:
    return f"n too small (n = {n} < {MIN_CORRELATION_N})"


def _rank_pearson(rx: np.ndarray, ry: np.ndarray, axis: int = -1) -> np.ndarray:
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    return (rx * ry).sum(axis=axis) / np.sqrt((rx**2).sum(axis=axis) * (ry**2).sum(axis=axis))


def spearman(x: Any, y: Any, *, seed: int = 0) -> dict[str, Any] | None:
    """Spearman ρ of the pairs where both are finite, with its two-sided p-value and the method.

    Returns:
        None when fewer than 3 pairs or either side is constant (nothing to correlate); else
        ``{rho, p_value, n, method, reason}``: ``rho`` and ``p_value`` are None (``reason`` says
        "n too small ...") below :data:`MIN_CORRELATION_N` pairs.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    if n < MIN_CORRELATION_N:
        return {"rho": None, "p_value": None, "n": n, "method": None, "reason": too_small_text(n)}
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rho = float(_rank_pearson(rx, ry))
    if n > PERMUTATION_MAX_N:
        p, method = float(stats.spearmanr(x, y).pvalue), "Spearman t-approximation"
    else:
        exact = math.factorial(n) <= PERMUTATIONS
        result = stats.permutation_test((rx, ry), _rank_pearson, permutation_type="pairings", vectorized=True,
                                        n_resamples=PERMUTATIONS, alternative="two-sided",
                                        rng=np.random.default_rng(seed))
        p = float(result.pvalue)
        method = "exact permutation test" if exact else f"permutation test ({PERMUTATIONS} permutations)"
    return {"rho": rho, "p_value": min(1.0, p), "n": n, "method": method, "reason": None}
