"""Section 6: the run's network against simple baselines on the same test split."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from nnlab.analysis.base import SectionResult, new_figure, save_figure
from nnlab.analysis.residuals import r2_per_target

__all__ = ["guarded_mape", "fit_baselines", "baseline_metrics", "baseline_comparison", "MAPE_FLOOR_FRACTION"]

# A point enters MAPE only if |actual| >= this fraction of its target's median |actual|:
# relative errors of values near zero are unbounded and would swamp the mean.
MAPE_FLOOR_FRACTION = 0.1


def guarded_mape(y_true: np.ndarray, y_pred: np.ndarray, *,
                 floor_fraction: float = MAPE_FLOOR_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute percentage error per target, leaving out actual values near zero.

    For target j the points with ``|y_true| < floor_fraction · median(|y_true[:, j]|)``
    are excluded (and all points where that median is 0).

    Returns:
        ``(mape_percent, excluded_fraction)``, one value per target (MAPE is
        NaN for a target with no point left).
    """
    y_true, y_pred = np.atleast_2d(np.asarray(y_true, float)), np.atleast_2d(np.asarray(y_pred, float))
    floor = floor_fraction * np.median(np.abs(y_true), axis=0)
    keep = (np.abs(y_true) >= floor) & (np.abs(y_true) > 0)
    ratio = np.where(keep, np.abs(y_pred - y_true) / np.where(keep, np.abs(y_true), 1.0), 0.0)
    counts = keep.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mape = np.where(counts > 0, 100.0 * ratio.sum(axis=0) / counts, np.nan)
    return mape, 1.0 - counts / len(y_true)


def fit_baselines(X_train: np.ndarray, y_train: np.ndarray, *, seed: int = 0) -> dict[str, Callable]:
    """Fit the mean predictor, LinearRegression and one HistGradientBoostingRegressor per target.

    Returns:
        ``{name: predict(X) -> (n, n_targets)}``.
    """
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression
    from threadpoolctl import threadpool_limits

    mean = DummyRegressor(strategy="mean").fit(X_train, y_train)
    linear = LinearRegression().fit(X_train, y_train)
    # On a few thousand rows OpenMP's thread start-up and spin-waiting cost more than the
    # work: one thread fitted a 1,280-row target in 0.2 s, two threads in 1.8 s (2 cores).
    with threadpool_limits(1, user_api="openmp"):
        boosted = [HistGradientBoostingRegressor(random_state=seed).fit(X_train, y_train[:, j])
                   for j in range(y_train.shape[1])]
    return {
        "mean predictor": mean.predict,
        "linear regression": linear.predict,
        "hist gradient boosting": lambda X: _predict_single_threaded(boosted, X),
    }


def _predict_single_threaded(models: list, X: np.ndarray) -> np.ndarray:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="openmp"):
        return np.column_stack([m.predict(X) for m in models])


def baseline_metrics(y_true_scaled: np.ndarray, y_pred_scaled: np.ndarray,
                     inverse: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """R² (mean over targets), MAE/RMSE on standardised targets, guarded MAPE in physical units."""
    err = y_pred_scaled - y_true_scaled
    mape, excluded = guarded_mape(inverse(y_true_scaled), inverse(y_pred_scaled))
    return {
        "r2": float(np.nanmean(r2_per_target(y_true_scaled, y_pred_scaled))),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mape_percent": float(np.nanmean(mape)) if np.isfinite(mape).any() else math.nan,
        "mape_excluded_fraction": float(np.mean(excluded)),
    }


def baseline_comparison(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                        inverse: Callable[[np.ndarray], np.ndarray], target_names: list[str], out_dir: Path, *,
                        network_predictions: np.ndarray | None = None, network_note: str | None = None,
                        seed: int = 0) -> SectionResult:
    """Section 6: table and bar chart of every model's test metrics.

    Args:
        X_train, y_train, X_test, y_test: the run's scaled split.
        inverse: maps scaled targets to physical units (the run's target scaler).
        target_names: one name per target.
        out_dir: where baseline_comparison.png goes.
        network_predictions: the run's network on X_test (scaled); None leaves it out.
        network_note: why the network is missing (shown in the notes).
        seed: random_state of the gradient-boosting models.
    """
    # One column per target: with a single target scikit-learn's predictors return a flat array.
    predictions: dict[str, np.ndarray] = {name: np.asarray(predict(X_test), float).reshape(len(X_test), -1)
                                          for name, predict in fit_baselines(X_train, y_train, seed=seed).items()}
    if network_predictions is not None:
        predictions["network (this run)"] = np.asarray(network_predictions, float)
    metrics: Mapping[str, dict[str, float]] = {name: baseline_metrics(y_test, pred, inverse)
                                               for name, pred in predictions.items()}
    table = pd.DataFrame([{"model": name, **m} for name, m in metrics.items()])
    per_target = pd.DataFrame({"target": target_names,
                               **{name: r2_per_target(y_test, pred) for name, pred in predictions.items()}})
    fig, axes = new_figure(1, 4, size=(18, 5))
    colors = [f"C{i}" for i in range(len(table))]
    for ax, (col, label) in zip(axes[0], (("r2", "R² (higher is better)"), ("mae", "MAE, standardised"),
                                          ("rmse", "RMSE, standardised"), ("mape_percent", "MAPE % (guarded)"))):
        values = table[col].to_numpy(dtype=float)
        bars = ax.bar(range(len(table)), np.nan_to_num(values), color=colors)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8)
        ax.set_xticks(range(len(table)), table["model"], rotation=30, ha="right")
        ax.set_title(label)
    path = save_figure(fig, out_dir / "baseline_comparison.png")
    notes = [
        "All models are fitted on the run's training split (standardised features and targets) and scored on "
        "its test split. R² is the mean of the per-target R²; MAE and RMSE are on standardised targets "
        "(1.0 = one standard deviation of the target), so the targets count equally.",
        f"MAPE is in physical units and leaves out test points whose |actual| is below "
        f"{MAPE_FLOOR_FRACTION:g} × the target's median |actual| (relative error is unbounded near zero); "
        "mape_excluded_fraction is the share left out.",
    ]
    if network_note:
        notes.append(f"The run's network is not in the table: {network_note}")
    summary = {name: m for name, m in metrics.items()}
    return SectionResult("baselines", "", tables={"test metrics": table, "R² per target": per_target},
                         figures=[path], summary=summary, notes=notes)
