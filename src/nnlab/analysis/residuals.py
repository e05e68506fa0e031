"""Sections 4 and 5: residual analysis suite and prediction scatter plots, in physical units."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from nnlab.analysis.base import SectionResult, new_figure, save_figure
from nnlab.analysis.labels import with_unit

__all__ = ["sample_indices", "residual_analysis", "prediction_scatter", "r2_per_target"]


def sample_indices(n: int, sample_size: int, *, seed: int = 0) -> np.ndarray:
    """``sample_size`` distinct row indices out of ``n`` (all rows when n is smaller), sorted, seeded."""
    if sample_size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))


def r2_per_target(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination of each column (NaN for a constant column)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    ss_res = np.sum((y_true - y_pred) ** 2, axis=0)
    ss_tot = np.sum((y_true - y_true.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)


def _normality_p(values: np.ndarray) -> float:
    # D'Agostino-Pearson needs 8+ points; Shapiro-Wilk is the small-sample test.
    if values.size >= 20:
        return float(stats.normaltest(values).pvalue)
    if values.size >= 3 and np.ptp(values) > 0:
        return float(stats.shapiro(values).pvalue)
    return math.nan


def _residual_stats(name: str, r: np.ndarray, mu: float, sigma: float) -> dict:
    return {
        "target": name, "n": int(r.size), "mean": float(mu), "std": float(sigma),
        "mae": float(np.mean(np.abs(r))), "rmse": float(np.sqrt(np.mean(r**2))),
        "skewness": float(stats.skew(r)) if r.size > 2 else math.nan,
        "excess_kurtosis": float(stats.kurtosis(r)) if r.size > 3 else math.nan,
        "normality_p": _normality_p(r),
    }


def _histogram_panel(ax, r: np.ndarray, name: str, unit: str | None, color: str) -> dict:
    """One target's residual histogram with its fitted normal; returns its statistics row."""
    mu, sigma = stats.norm.fit(r)
    ax.hist(r, bins=30, density=True, histtype="step", lw=1.5, color=color, label=f"μ={mu:.3g}, σ={sigma:.3g}")
    if sigma > 0:
        grid = np.linspace(mu - 4 * sigma, mu + 4 * sigma, 200)
        ax.plot(grid, stats.norm.pdf(grid, mu, sigma), ls="--", lw=1, color=color)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set(title=f"{name}: residuals, fitted normal dashed", xlabel=with_unit("residual", unit),
           ylabel="density" + (f" (1/{unit})" if unit else ""))
    ax.legend(fontsize=7)
    return {**_residual_stats(name, r, mu, sigma), "unit": unit or ""}


def _qq_panel(ax, r: np.ndarray, name: str, color: str) -> None:
    sd = r.std(ddof=1) if r.size > 1 else 0.0
    z = (r - r.mean()) / sd if sd > 0 else r - r.mean()
    (theoretical, ordered), _ = stats.probplot(z, dist="norm")
    ax.plot(theoretical, ordered, ".", ms=3, color=color)
    lim = ax.get_xlim()
    ax.plot(lim, lim, color="black", lw=1)
    ax.set(title=f"{name}: normal Q-Q", xlabel="theoretical quantile (standard normal, unitless)",
           ylabel="standardised residual (unitless)")


def _versus_predicted_panel(ax, predicted: np.ndarray, r: np.ndarray, name: str, unit: str | None,
                            color: str) -> None:
    ax.scatter(predicted, r, s=6, alpha=0.5, color=color)
    ax.axhline(0.0, color="black", lw=1)
    ax.set(title=f"{name}: residual vs predicted", xlabel=with_unit("predicted", unit),
           ylabel=with_unit("residual", unit))


def residual_analysis(y_true: np.ndarray, y_pred: np.ndarray, target_names: Sequence[str],
                      out_dir: Path, *, units: Sequence[str | None] | None = None) -> SectionResult:
    """Section 4: one row of panels per target, each axis in that target's own unit.

    Per target: the residual histogram with a fitted normal, a normal Q-Q plot of the
    standardised residuals, and the residuals against the predicted values. No axis mixes
    two targets (their units differ).

    Args:
        y_true, y_pred: (n, n_targets) arrays in physical units (the sampled test points).
        target_names: one name per column.
        out_dir: where residual_analysis_suite.png goes.
        units: one unit per target (None: no unit, a table's column).
    """
    residuals = np.asarray(y_pred, float) - np.asarray(y_true, float)
    names = list(target_names)
    units = list(units) if units is not None else [None] * len(names)
    fig, axes = new_figure(len(names), 3, size=(15, 3.4 * len(names)))
    rows = []
    for j, name in enumerate(names):
        r, color = residuals[:, j], f"C{j}"
        rows.append(_histogram_panel(axes[j, 0], r, name, units[j], color))
        _qq_panel(axes[j, 1], r, name, color)
        _versus_predicted_panel(axes[j, 2], np.asarray(y_pred, float)[:, j], r, name, units[j], color)
    path = save_figure(fig, out_dir / "residual_analysis_suite.png")
    table = pd.DataFrame(rows)
    notes = [
        f"{len(residuals)} sampled test points; residual = predicted − actual, in each target's own unit "
        "(column `unit`; mean, std, mae and rmse are in it). One row of panels per target: targets with "
        "different units never share an axis.",
        "normality_p: D'Agostino-Pearson test (Shapiro-Wilk below 20 points); p < 0.05 means the residuals are "
        "not normal (heavy tails or skew), so symmetric error bars understate the risk.",
        "A trend or funnel in the residual-vs-predicted panel means the error depends on the value (bias or "
        "heteroscedasticity).",
    ]
    return SectionResult("residuals", "", tables={"residuals per target": table}, figures=[path],
                         summary={"n_points": int(len(residuals)), "per_target": rows}, notes=notes)


def prediction_scatter(y_true: np.ndarray, y_pred: np.ndarray, target_names: Sequence[str], out_dir: Path,
                       *, full_r2: Sequence[float] | None = None,
                       units: Sequence[str | None] | None = None) -> SectionResult:
    """Section 5: actual vs predicted per target with the identity line and R².

    Args:
        y_true, y_pred: the sampled points to plot (physical units).
        target_names: one name per column.
        out_dir: where prediction_scatter_plots.png goes.
        full_r2: per-target R² on the whole test set, shown next to the sample's.
        units: one unit per target for the axis labels (None: no unit).
    """
    names = list(target_names)
    units = list(units) if units is not None else [None] * len(names)
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(nrows, ncols, size=(5.2 * ncols, 4.8 * nrows))
    sample_r2 = r2_per_target(y_true, y_pred)
    rows = []
    for j, name in enumerate(names):
        ax = axes[j // ncols, j % ncols]
        ax.scatter(y_true[:, j], y_pred[:, j], s=8, alpha=0.6, color=f"C{j}")
        low = float(min(y_true[:, j].min(), y_pred[:, j].min()))
        high = float(max(y_true[:, j].max(), y_pred[:, j].max()))
        ax.plot([low, high], [low, high], color="black", lw=1, label="identity")
        label = f"R² = {sample_r2[j]:.4f} (shown points)"
        if full_r2 is not None:
            label += f"\nR² = {full_r2[j]:.4f} (whole test set)"
        ax.text(0.04, 0.96, label, transform=ax.transAxes, va="top", fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        ax.set(title=name, xlabel=with_unit("actual", units[j]), ylabel=with_unit("predicted", units[j]))
        rows.append({"target": name, "r2_sample": float(sample_r2[j]),
                     "r2_test": float(full_r2[j]) if full_r2 is not None else math.nan})
    for k in range(len(names), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    path = save_figure(fig, out_dir / "prediction_scatter_plots.png")
    notes = ["Points on the black identity line are perfect predictions; systematic bending away from it shows "
             "where the network under- or over-predicts."]
    return SectionResult("predictions", "", tables={"R² per target": pd.DataFrame(rows)}, figures=[path],
                         summary={"per_target_r2": rows}, notes=notes)
