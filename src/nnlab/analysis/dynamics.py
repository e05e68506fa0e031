"""Sections built from per-epoch records: training dynamics (2), learning rate (3),
adaptive-loss weights and constraint statistics (10)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab.analysis.base import SectionResult, SectionSkipped, new_figure, save_figure
from nnlab.analysis.significance import MIN_CORRELATION_N, PERMUTATION_MAX_N, spearman

__all__ = ["training_dynamics", "learning_rate_analysis", "loss_and_constraint_evolution", "run_curve_summary"]

CONSTRAINT_PREFIX = "constraint/"


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float) if name in df else np.full(len(df), np.nan)


def run_curve_summary(results: pd.DataFrame) -> dict[str, float | int | None]:
    """Best/final losses and R², epochs, timing and memory of one run's training_results.csv."""
    if results.empty:
        raise SectionSkipped("training_results.csv is missing or empty")
    epoch = _col(results, "epoch")
    val_loss, r2 = _col(results, "val_loss"), _col(results, "r2_score")
    times, memory, lr = _col(results, "epoch_time"), _col(results, "memory_mb"), _col(results, "learning_rate")

    def at_best(values: np.ndarray, fn) -> tuple[float | None, int | None]:
        if not np.isfinite(values).any():
            return None, None
        i = int(fn(values))
        return float(values[i]), int(epoch[i])

    best_loss, best_loss_epoch = at_best(val_loss, np.nanargmin)
    best_r2, best_r2_epoch = at_best(r2, np.nanargmax)
    finite_lr = lr[np.isfinite(lr)]
    return {
        "total_training_epochs": int(len(results)),
        "best_validation_loss": best_loss,
        "best_validation_loss_epoch": best_loss_epoch,
        "best_r2_score": best_r2,
        "best_r2_epoch": best_r2_epoch,
        "final_r2_score": float(r2[-1]) if np.isfinite(r2[-1]) else None,
        "final_validation_loss": float(val_loss[-1]) if np.isfinite(val_loss[-1]) else None,
        "final_train_loss": float(_col(results, "train_loss")[-1]),
        "avg_epoch_time_s": float(np.nanmean(times)) if np.isfinite(times).any() else None,
        "total_training_time_s": float(np.nansum(times)) if np.isfinite(times).any() else None,
        "peak_memory_mb": float(np.nanmax(memory)) if np.isfinite(memory).any() else None,
        "initial_learning_rate": float(finite_lr[0]) if finite_lr.size else None,
        "final_learning_rate": float(finite_lr[-1]) if finite_lr.size else None,
        "learning_rate_reductions": int(np.sum(np.diff(finite_lr) < 0)) if finite_lr.size > 1 else 0,
    }


def _band(values: np.ndarray, window: int, *, log: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred rolling mean ± 1 rolling s.d.; with ``log``, computed on log10 values (a geometric band)."""
    series = pd.Series(np.log10(values) if log else values)
    roll = series.rolling(window, center=True, min_periods=1)
    mean, sd = roll.mean().to_numpy(), roll.std().fillna(0.0).to_numpy()
    if log:
        return 10**mean, 10 ** (mean - sd), 10 ** (mean + sd)
    return mean, mean - sd, mean + sd


def training_dynamics(results: pd.DataFrame, out_dir: Path) -> SectionResult:
    """Section 2: the 2×2 dashboard (losses with bands, R², time/memory, generalisation gap)."""
    summary = run_curve_summary(results)
    epoch = _col(results, "epoch")
    train, val = _col(results, "train_loss"), _col(results, "val_loss")
    r2 = _col(results, "r2_score")
    window = max(3, len(results) // 20)
    fig, axes = new_figure(2, 2, size=(13, 9.5))
    ax = axes[0, 0]
    log = bool(np.nanmin(np.concatenate([train, val])) > 0)
    for values, label, color in ((train, "train loss", "tab:blue"), (val, "validation loss", "tab:orange")):
        mean, low, high = _band(values, window, log=log)
        ax.plot(epoch, values, color=color, alpha=0.35, lw=1)
        ax.plot(epoch, mean, color=color, lw=2, label=f"{label} (rolling mean)")
        ax.fill_between(epoch, low, high, color=color, alpha=0.2)
    if log:
        ax.set_yscale("log")
    kind = "geometric rolling mean ± 1 s.d. of log10" if log else "rolling mean ± 1 s.d."
    ax.set(title=f"Loss (band: {kind}, window {window})", xlabel="epoch", ylabel="loss")
    ax.legend()

    ax = axes[0, 1]
    ax.plot(epoch, r2, color="tab:green", lw=2, label="validation R²")
    if summary["best_r2_epoch"] is not None:
        ax.axvline(summary["best_r2_epoch"], color="gray", ls="--", lw=1)
        ax.plot([summary["best_r2_epoch"]], [summary["best_r2_score"]], "*", color="red", ms=14,
                label=f"best {summary['best_r2_score']:.4f} (epoch {summary['best_r2_epoch']})")
    finite = r2[np.isfinite(r2)]
    if finite.size and finite.max() > 0:
        ax.set_ylim(max(min(0.0, finite.min()), np.quantile(finite, 0.05) - 0.05), min(1.0, finite.max() + 0.02))
    ax.set(title="Validation R²", xlabel="epoch", ylabel="R²")
    ax.legend(loc="lower right")

    ax = axes[1, 0]
    ax.plot(epoch, _col(results, "epoch_time"), color="tab:purple", lw=1.5, label="epoch time")
    ax.set(title="Epoch time and memory", xlabel="epoch", ylabel="seconds")
    twin = ax.twinx()
    twin.plot(epoch, _col(results, "memory_mb"), color="tab:brown", lw=1.5, label="memory (RSS)")
    twin.set_ylabel("MiB")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")

    ax = axes[1, 1]
    gap = val - train
    mean, low, high = _band(gap, window)
    ax.plot(epoch, gap, color="tab:red", alpha=0.35, lw=1)
    ax.plot(epoch, mean, color="tab:red", lw=2, label="validation − train loss")
    ax.fill_between(epoch, low, high, color="tab:red", alpha=0.2)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set(title="Generalisation gap (> 0: validation worse than training)", xlabel="epoch", ylabel="loss gap")
    ax.legend()
    path = save_figure(fig, out_dir / "training_dynamics_dashboard.png")

    table = pd.DataFrame({"metric": list(summary), "value": list(summary.values())})
    notes = [
        "Loss is the adaptive MSE/MAE combination the network was trained on; its weights change per epoch, "
        "so compare train and validation at the same epoch rather than across epochs.",
        "A widening positive gap in the lower-right panel is the sign of overfitting (tested in section 8).",
    ]
    return SectionResult("dynamics", "", tables={"run summary": table}, figures=[path], summary=summary, notes=notes)


def _spearman(x: pd.Series, y: pd.Series) -> dict[str, Any] | None:
    """Spearman ρ with its p-value and method, "n too small" below the minimum (nnlab.analysis.significance)."""
    return spearman(pd.to_numeric(x, errors="coerce"), pd.to_numeric(y, errors="coerce"))


def learning_rate_analysis(history: pd.DataFrame, results: pd.DataFrame, run_id: str, out_dir: Path) -> SectionResult:
    """Section 3: learning rate against final R² and loss over the run history, and this run's schedule."""
    if history.empty or "learning_rate" not in history or history["learning_rate"].notna().sum() == 0:
        raise SectionSkipped("no run in the history records a learning_rate")
    h = history[history["learning_rate"].notna()].copy()
    h["log10_learning_rate"] = np.log10(h["learning_rate"])
    fig, axes = new_figure(1, 3, size=(17, 5.5))
    current = h["run_id"] == run_id
    for ax, metric, label in ((axes[0, 0], "final_val_r2", "final validation R²"),
                              (axes[0, 1], "best_val_loss", "best validation loss")):
        y = pd.to_numeric(h[metric], errors="coerce") if metric in h else pd.Series(np.nan, index=h.index)
        shown = np.isfinite(y) & (h["learning_rate"] > 0)
        if shown.any():
            ax.scatter(h.loc[shown & ~current, "learning_rate"], y[shown & ~current], color="tab:blue", alpha=0.7,
                       label="other runs")
            ax.scatter(h.loc[shown & current, "learning_rate"], y[shown & current], color="red", marker="*", s=200,
                       label="this run")
            ax.set_xscale("log")
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no run records a {label}", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="learning rate", ylabel=label, title=f"Learning rate vs {label} ({int(shown.sum())} runs)")
    ax = axes[0, 2]
    epoch, lr = _col(results, "epoch"), _col(results, "learning_rate")
    if np.isfinite(lr).any():
        ax.plot(epoch, lr, color="tab:green", lw=2, label="learning rate")
        ax.set_yscale("log")
        twin = ax.twinx()
        twin.plot(epoch, _col(results, "val_loss"), color="tab:orange", lw=1, alpha=0.8, label="validation loss")
        twin.set_ylabel("validation loss")
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [line.get_label() for line in lines])
    ax.set(xlabel="epoch", ylabel="learning rate", title="This run: learning-rate schedule")
    path = save_figure(fig, out_dir / "learning_rate_analysis.png")

    correlations = {
        metric: _spearman(h["log10_learning_rate"], h[metric]) if metric in h else None
        for metric in ("final_val_r2", "best_val_r2", "best_val_loss", "test_r2")
    }
    cols = [c for c in ("run_id", "status", "learning_rate", "batch_size", "final_val_r2", "best_val_r2",
                        "best_val_loss", "test_r2") if c in h]
    table = h[cols].sort_values("learning_rate").reset_index(drop=True)
    corr_rows = [{"metric": m, "n": c["n"] if c else None,
                  "rho": (c["rho"] if c["rho"] is not None else c["reason"]) if c else "no variation",
                  "p_value": c["p_value"] if c else None, "p-value method": c["method"] if c else None}
                 for m, c in correlations.items()]
    notes = ["Spearman correlation between log10(learning rate) and each metric over the run history; "
             f"ρ and p are reported from {MIN_CORRELATION_N} runs with at least 2 different learning rates "
             "(fewer: \"n too small\"); p from an exact or random-permutation test up to "
             f"{PERMUTATION_MAX_N} runs, the t-approximation above. "
             "Runs differ in more than the learning rate, so read it as a hint, not a controlled experiment."]
    return SectionResult("learning_rate", "", tables={"runs by learning rate": table,
                                                      "correlations with log10(learning rate)": pd.DataFrame(corr_rows)},
                         figures=[path], summary={"runs": int(len(h)), "correlations": correlations}, notes=notes)


def loss_and_constraint_evolution(results: pd.DataFrame, loss_history: pd.DataFrame, out_dir: Path) -> SectionResult:
    """Section 10: adaptive-loss weights per epoch and the constraints' per-application statistics."""
    if results.empty:
        raise SectionSkipped("training_results.csv is missing or empty")
    epoch = _col(results, "epoch")
    mse_w, mae_w = _col(results, "mse_weight"), _col(results, "mae_weight")
    if not np.isfinite(mse_w).any() and not loss_history.empty and "mse_weight" in loss_history:
        epoch = _col(loss_history, "epoch") + 1  # loss_history.csv counts epochs from 0
        mse_w, mae_w = _col(loss_history, "mse_weight"), _col(loss_history, "mae_weight")
    stat_cols = sorted(c for c in results.columns if c.startswith(CONSTRAINT_PREFIX) and c.count("/") == 2)
    has_weights = bool(np.isfinite(mse_w).any())
    if not has_weights and not stat_cols:
        raise SectionSkipped("the run records neither loss weights nor constraint statistics")
    applied = _col(results, CONSTRAINT_PREFIX + "applied") > 0
    fig, axes = new_figure(1, 2, size=(15, 5.5))
    ax = axes[0, 0]
    if has_weights:
        ax.plot(epoch, mse_w, lw=2, label="MSE weight")
        ax.plot(epoch, mae_w, lw=2, label="MAE weight")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
    ax.set(title="Adaptive-loss weights", xlabel="epoch", ylabel="weight (sum 1)")
    ax = axes[0, 1]
    rows = []
    for name in sorted({c.split("/")[1] for c in stat_cols}):
        changed = _col(results, f"{CONSTRAINT_PREFIX}{name}/fraction_changed")
        oscillating = _col(results, f"{CONSTRAINT_PREFIX}{name}/fraction_oscillating")
        factor = _col(results, f"{CONSTRAINT_PREFIX}{name}/mean_factor")
        abs_change = _col(results, f"{CONSTRAINT_PREFIX}{name}/mean_abs_change")
        if applied.any():
            ax.plot(epoch[applied], changed[applied], "o-", label=f"{name}: fraction changed")
            if np.isfinite(oscillating).any():
                ax.plot(epoch[applied], oscillating[applied], "s--", label=f"{name}: fraction oscillating")
        rows.append({
            "constraint": name, "applications": int(applied.sum()),
            "mean_fraction_changed": float(np.nanmean(changed[applied])) if applied.any() else math.nan,
            "max_fraction_changed": float(np.nanmax(changed[applied])) if applied.any() else math.nan,
            "mean_fraction_oscillating": (float(np.nanmean(oscillating[applied]))
                                          if applied.any() and np.isfinite(oscillating).any() else math.nan),
            "mean_abs_change": float(np.nanmean(abs_change[applied])) if applied.any() else math.nan,
            "mean_shrinkage_factor": (float(np.nanmean(factor[applied]))
                                      if applied.any() and np.isfinite(factor).any() else math.nan),
        })
    if rows and applied.any():
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no constraint applications recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="Constraint statistics at each application", xlabel="epoch", ylabel="fraction of weights")
    path = save_figure(fig, out_dir / "loss_weights_and_constraints.png")
    tables = {"constraint statistics (applications only)": pd.DataFrame(rows)} if rows else {}
    if has_weights:
        tables["loss weights"] = pd.DataFrame({
            "statistic": ["first", "last", "mean", "min", "max"],
            "mse_weight": [mse_w[0], mse_w[-1], np.nanmean(mse_w), np.nanmin(mse_w), np.nanmax(mse_w)],
            "mae_weight": [mae_w[0], mae_w[-1], np.nanmean(mae_w), np.nanmin(mae_w), np.nanmax(mae_w)],
        })
    summary = {"constraints": rows, "constraint_applications": int(applied.sum()),
               "final_mse_weight": float(mse_w[-1]) if has_weights else None,
               "final_mae_weight": float(mae_w[-1]) if has_weights else None}
    notes = ["Constraint statistics are recorded only on epochs where the chain ran (every constraint_interval "
             "epochs); a fraction changed near 0 means the limit rarely binds."]
    return SectionResult("loss_and_constraints", "", tables=tables, figures=[path], summary=summary, notes=notes)
