"""Section 7: binary constraints vs James-Stein shrinkage vs no constraints, trained for real.

Three variants of the run's configuration are trained on the run's data for K
seeds and E epochs each. Everything but the weight constraints is identical
within a seed (architecture, optimizer, learning rate, loss strategy, batch
size, initial weights, shuffling), so the comparison is paired by seed.

* ``binary_constraints``: the run's BinaryChangeMax/BinaryPrecisionMax settings;
  when precision is not limited (``enable_binary_precision_max`` off or
  ``max_binary_digits = 24``, a no-op) BinaryPrecisionMax at 16 bits is used.
* ``james_stein``: JamesSteinShrinkage with the run's target and noise variance.
* ``no_constraints``: no weight constraint at all.

The oscillation dampeners are off in all three, so each variant isolates one
family. Constraints run every ``min(constraint_interval, max(1, E // 5))``
epochs (at least five applications in a short comparison), early stopping is
off (curves of equal length) and XLA is off (``jit_compile = false``: for a few
dozen epochs its compile time outweighs its gain; results are the same). The compared loss is the validation MSE: the
adaptive loss reweights itself along each variant's own trajectory, so its
values are not comparable between variants.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab.analysis.base import SectionResult, new_figure, save_figure
from nnlab.analysis.stats import bootstrap_ci, compare_paired, min_wilcoxon_p

__all__ = ["VARIANTS", "DEFAULT_JS_SEEDS", "DEFAULT_JS_EPOCHS", "variant_overrides", "convergence_epoch",
           "train_variants", "compare_variants", "james_stein_comparison"]

VARIANTS = ("binary_constraints", "james_stein", "no_constraints")
DEFAULT_JS_SEEDS = 3
DEFAULT_JS_EPOCHS = 30
LOSS_METRIC = "val_mse"

_ALL_OFF = {"enable_weight_oscillation_dampener": False, "use_adaptive_oscillation_dampener": False,
            "enable_binary_change_max": False, "enable_binary_precision_max": False, "enable_james_stein": False}


def variant_overrides(config: Any, epochs: int) -> dict[str, dict[str, Any]]:
    """The configuration keys each variant changes (on top of the run's configuration)."""
    m = config.model
    # jit_compile off: for a few dozen epochs XLA's compile time (per model, and per constraint chain)
    # outweighs its per-step gain; it changes speed, not results.
    shared = {"epochs": int(epochs), "early_stopping_patience": None, "jit_compile": False,
              "constraint_interval": min(m.constraint_interval, max(1, int(epochs) // 5))}
    binary = {**_ALL_OFF, **shared, "enable_binary_change_max": m.enable_binary_change_max,
              "max_additional_binary_digits": m.max_additional_binary_digits}
    if m.enable_binary_precision_max and m.max_binary_digits < 24:
        binary.update(enable_binary_precision_max=True, max_binary_digits=m.max_binary_digits)
    else:
        binary.update(enable_binary_precision_max=True, max_binary_digits=16)
    return {
        "binary_constraints": binary,
        "james_stein": {**_ALL_OFF, **shared, "enable_james_stein": True},
        "no_constraints": {**_ALL_OFF, **shared},
    }


def convergence_epoch(curve: Sequence[float], tolerance: float = 0.01) -> int | None:
    """First epoch (1-based) whose value is within ``tolerance`` (relative) of the curve's minimum."""
    values = np.asarray(curve, float)
    if not np.isfinite(values).any():
        return None
    best = np.nanmin(values)
    hits = np.flatnonzero(values <= best + tolerance * abs(best))
    return int(hits[0]) + 1


def _kernel_weights(model) -> np.ndarray:
    kernels = [np.asarray(v.numpy()).ravel() for v in model.trainable_weights if "kernel" in v.path]
    return np.concatenate(kernels) if kernels else np.zeros(0, np.float32)


class _DropRetracingNotices(logging.Filter):
    """Training a fresh model per variant traces fresh functions by design; TF's
    "triggered tf.function retracing" notice about it is noise here (and only here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_retracing():
    logger = logging.getLogger("tensorflow")
    notice_filter = _DropRetracingNotices()
    logger.addFilter(notice_filter)
    try:
        yield
    finally:
        logger.removeFilter(notice_filter)


def train_variants(data: Any, config: Any, *, seeds: Sequence[int], epochs: int,
                   progress: Callable[[str], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train every variant for every seed; one record per (variant, seed).

    Each record: ``seed``, ``curve`` (validation MSE per epoch), ``best_loss``,
    ``convergence_epoch``, ``test_r2``, ``mean_significant_bits`` and, for the
    first seed only, ``weights`` (all kernel weights, for histograms).
    """
    import keras

    from nnlab.constraints import significant_bits
    from nnlab.model import AdvancedNeuralNetwork, regression_metrics

    overrides = variant_overrides(config, epochs)
    X_train, X_val, X_test, y_train, y_val, y_test = data
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    total, done = len(seeds) * len(VARIANTS), 0
    with _quiet_retracing():
        for seed, variant in itertools.product(seeds, VARIANTS):
            start = time.perf_counter()
            keras.backend.clear_session()
            cfg = config.updated({**overrides[variant], "seed": int(seed)}, source=f"james_stein/{variant}")
            net = AdvancedNeuralNetwork((X_train.shape[1],), y_train.shape[1], cfg)
            out = net.train_with_custom_constraints(X_train, y_train, X_val, y_val, epochs=int(epochs),
                                                    batch_size=cfg.training.batch_size, verbose=0)
            curve = np.asarray(out["history"].get(LOSS_METRIC, [math.nan] * int(epochs)), float)
            weights = _kernel_weights(net.model)
            record = {
                "seed": int(seed), "curve": curve,
                "best_loss": float(np.nanmin(curve)) if np.isfinite(curve).any() else math.nan,
                "convergence_epoch": convergence_epoch(curve),
                # A direct call: predict() would trace a predict function for a model used once.
                "test_r2": float(regression_metrics(y_test, np.asarray(net.model(X_test, training=False)))["r2"]),
                "mean_significant_bits": float(np.mean(significant_bits(weights))) if weights.size else math.nan,
                "diverged": bool(out["diverged"]),
            }
            if seed == seeds[0]:
                record["weights"] = weights
            runs[variant].append(record)
            done += 1
            if progress is not None:
                progress(f"james_stein: {variant}, seed {seed} ({done}/{total}) "
                         f"{time.perf_counter() - start:.1f} s, best {LOSS_METRIC} {record['best_loss']:.4g}")
    keras.backend.clear_session()
    return runs


def _pair(a: str, b: str) -> str:
    return f"{a}_vs_{b}"


def compare_variants(runs: dict[str, list[dict[str, Any]]], *, alpha: float = 0.05,
                     seed: int = 0) -> dict[str, Any]:
    """Paired statistics between the variants and the winner decision.

    For each pair: across seeds (best loss per seed) and across epochs (the
    seed-averaged validation curves, epoch by epoch), the Wilcoxon signed-rank
    test, paired Cohen's d and a bootstrap 95% CI of the mean difference.

    The winner is the variant with the lowest mean best loss, named only if the
    across-seeds test against each other variant gives p < alpha; otherwise
    "no significant difference". Epochs of one curve are autocorrelated, so the
    across-epochs p-values describe the curves but do not decide the winner.
    """
    best = {v: np.array([r["best_loss"] for r in runs[v]]) for v in VARIANTS}
    curves = {v: np.nanmean(np.vstack([r["curve"] for r in runs[v]]), axis=0) for v in VARIANTS}
    comparisons: dict[str, dict[str, Any]] = {}
    for a, b in itertools.combinations(VARIANTS, 2):
        comparisons[_pair(a, b)] = {
            "across_seeds": compare_paired(best[a], best[b], alpha=alpha, seed=seed),
            "across_epochs": compare_paired(curves[a], curves[b], alpha=alpha, seed=seed),
        }
    means = {v: float(np.nanmean(best[v])) for v in VARIANTS}
    leader = min(VARIANTS, key=lambda v: means[v] if np.isfinite(means[v]) else math.inf)
    beats_all = all(
        comparisons[_pair(*sorted((leader, other), key=VARIANTS.index))]["across_seeds"]["significant"]
        for other in VARIANTS if other != leader
    )
    n_seeds = len(next(iter(runs.values())))
    return {
        "best_loss": means,
        "best_loss_ci": {v: bootstrap_ci(best[v], seed=seed) for v in VARIANTS},
        "comparisons": comparisons,
        "winner": leader if beats_all else "no significant difference",
        "leader": leader,
        "min_attainable_p_across_seeds": min_wilcoxon_p(n_seeds),
    }


def _figure(runs, result, out_dir: Path, epochs: int) -> Path:
    fig, axes = new_figure(2, 3, size=(19, 10.5))
    x = np.arange(1, epochs + 1)
    colors = {v: f"C{i}" for i, v in enumerate(VARIANTS)}
    ax = axes[0, 0]
    for v in VARIANTS:
        stack = np.vstack([r["curve"] for r in runs[v]])
        ax.plot(x, np.nanmean(stack, axis=0), color=colors[v], lw=2, label=v)
        ax.fill_between(x, np.nanmin(stack, axis=0), np.nanmax(stack, axis=0), color=colors[v], alpha=0.2)
    if all(np.nanmin(np.vstack([r["curve"] for r in runs[v]])) > 0 for v in VARIANTS):
        ax.set_yscale("log")
    ax.set(title="Convergence: validation MSE (mean, band = min–max over seeds)", xlabel="epoch",
           ylabel="validation MSE")
    ax.legend()
    ax = axes[0, 1]
    means = [result["best_loss"][v] for v in VARIANTS]
    cis = [result["best_loss_ci"][v] for v in VARIANTS]
    err = np.array([[m - lo for m, (lo, _) in zip(means, cis)], [hi - m for m, (_, hi) in zip(means, cis)]])
    ax.bar(VARIANTS, means, yerr=np.nan_to_num(err), capsize=6, color=[colors[v] for v in VARIANTS], alpha=0.8)
    for i, v in enumerate(VARIANTS):
        ax.scatter([i] * len(runs[v]), [r["best_loss"] for r in runs[v]], color="black", s=15, zorder=3)
    ax.set(title="Best validation MSE per variant (95% bootstrap CI, dots = seeds)", ylabel="best validation MSE")
    ax = axes[0, 2]
    for i, v in enumerate(VARIANTS):
        r2 = [r["test_r2"] for r in runs[v]]
        ax.bar(i, np.nanmean(r2), color=colors[v], alpha=0.8)
        ax.scatter([i] * len(r2), r2, color="black", s=15, zorder=3)
    ax.set_xticks(range(len(VARIANTS)), VARIANTS)
    all_r2 = np.array([r["test_r2"] for v in VARIANTS for r in runs[v]], float)
    if np.isfinite(all_r2).any():
        low, high = np.nanmin(all_r2), np.nanmax(all_r2)
        pad = max(0.005, high - low)
        ax.set_ylim(low - 2 * pad, high + pad)
    ax.set(title="Test R² (bar = mean, dots = seeds; y axis zoomed)", ylabel="test R²")
    ax = axes[1, 0]
    for v in VARIANTS:
        w = runs[v][0].get("weights")
        if w is not None and w.size:
            lim = np.quantile(np.abs(w), 0.995)
            ax.hist(w, bins=120, range=(-lim, lim), histtype="step", lw=1.5, color=colors[v],
                    label=f"{v} ({runs[v][0]['mean_significant_bits']:.1f} bits avg)")
    ax.set_yscale("log")
    ax.set(title=f"Kernel weight distribution (seed {runs[VARIANTS[0]][0]['seed']})", xlabel="weight",
           ylabel="count")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    for a, b in itertools.combinations(VARIANTS, 2):
        diff = (np.nanmean(np.vstack([r["curve"] for r in runs[a]]), axis=0)
                - np.nanmean(np.vstack([r["curve"] for r in runs[b]]), axis=0))
        ax.plot(x, diff, lw=1.5, label=f"{a} − {b}")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set(title="Per-epoch difference of mean validation MSE (< 0: first is better)", xlabel="epoch",
           ylabel="difference")
    ax.legend(fontsize=8)
    ax = axes[1, 2]
    ax.axis("off")
    cells = [[v, f"{result['best_loss'][v]:.4g}",
              f"[{result['best_loss_ci'][v][0]:.3g}, {result['best_loss_ci'][v][1]:.3g}]",
              f"{np.nanmean([r['convergence_epoch'] or np.nan for r in runs[v]]):.1f}",
              f"{np.nanmean([r['test_r2'] for r in runs[v]]):.4f}"] for v in VARIANTS]
    table = ax.table(cellText=cells, colLabels=["variant", "best MSE", "95% CI", "conv. epoch", "test R²"],
                     loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(5)))
    table.scale(1.0, 1.6)
    lines = [f"winner: {result['winner']}"]
    for pair, comp in result["comparisons"].items():
        s = comp["across_seeds"]
        lines.append(f"{pair.replace('_vs_', ' vs ')}: p={s['p_value']:.3g}, d={s['cohens_d']:.2f} (seeds)")
    ax.text(0.0, 0.35, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=9, family="monospace")
    ax.set_title("Summary")
    return save_figure(fig, out_dir / "james_stein_comparison.png")


def _json_pairs(comparisons: dict[str, Any], key: str) -> dict[str, dict[str, float]]:
    return {pair: {basis: comp[basis][key] for basis in ("across_seeds", "across_epochs")}
            for pair, comp in comparisons.items()}


def james_stein_comparison(data: Any, config: Any, out_dir: Path, *, seeds: int = DEFAULT_JS_SEEDS,
                           epochs: int = DEFAULT_JS_EPOCHS, alpha: float = 0.05,
                           progress: Callable[[str], None] | None = None) -> SectionResult:
    """Section 7: train the three variants and compare them (see the module docstring).

    Args:
        data: the run's :class:`~nnlab.data.PreparedData` (or a 6-tuple of scaled arrays).
        config: the run's :class:`~nnlab.config.Config`.
        out_dir: where james_stein_comparison.png goes.
        seeds: number of seeds K (seed s, s+1, ... from the run's ``seed``, 0 if none).
        epochs: epochs E per training.
        alpha: significance level of the winner decision.
        progress: called with one line per finished training.
    """
    base = config.model.seed if config.model.seed is not None else 0
    seed_list = [base + k for k in range(int(seeds))]
    runs = train_variants(data, config, seeds=seed_list, epochs=epochs, progress=progress)
    result = compare_variants(runs, alpha=alpha)
    path = _figure(runs, result, out_dir, int(epochs))
    overrides = variant_overrides(config, epochs)
    per_variant = pd.DataFrame([{
        "variant": v,
        "best_loss_mean": result["best_loss"][v],
        "best_loss_ci_low": result["best_loss_ci"][v][0], "best_loss_ci_high": result["best_loss_ci"][v][1],
        "convergence_epoch_mean": float(np.nanmean([r["convergence_epoch"] or np.nan for r in runs[v]])),
        "test_r2_mean": float(np.nanmean([r["test_r2"] for r in runs[v]])),
        "mean_significant_bits": runs[v][0]["mean_significant_bits"],
        "diverged_runs": int(sum(r["diverged"] for r in runs[v])),
    } for v in VARIANTS])
    stats_rows = [{"comparison": pair.replace("_vs_", " vs "), "basis": basis, "n": c["n"],
                   "mean_diff": c["mean_diff"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                   "wilcoxon_W": c["wilcoxon_statistic"], "p_value": c["p_value"], "cohens_d": c["cohens_d"],
                   "significant": c["significant"]}
                  for pair, comp in result["comparisons"].items() for basis, c in comp.items()]
    summary = {
        **{f"{v}_best_loss": result["best_loss"][v] for v in VARIANTS},
        "p_values": _json_pairs(result["comparisons"], "p_value"),
        "effect_sizes": _json_pairs(result["comparisons"], "cohens_d"),
        "winner": result["winner"],
        "winner_rule": f"lowest mean best {LOSS_METRIC}, significant (paired Wilcoxon across seeds, "
                       f"p < {alpha}) against both other variants",
        "loss_metric": LOSS_METRIC, "seeds": seed_list, "epochs": int(epochs), "alpha": alpha,
        "min_attainable_p_across_seeds": result["min_attainable_p_across_seeds"],
        "confidence_intervals": {v: list(result["best_loss_ci"][v]) for v in VARIANTS},
        "comparisons": result["comparisons"],
        "variants": {v: {"settings": overrides[v],
                         "best_loss_per_seed": [r["best_loss"] for r in runs[v]],
                         "convergence_epoch_per_seed": [r["convergence_epoch"] for r in runs[v]],
                         "test_r2_per_seed": [r["test_r2"] for r in runs[v]],
                         "mean_significant_bits": runs[v][0]["mean_significant_bits"]} for v in VARIANTS},
    }
    notes = [
        f"{len(seed_list)} seeds × {epochs} epochs per variant, the run's own architecture and data; "
        f"constraints every {overrides['no_constraints']['constraint_interval']} epochs; oscillation dampeners off "
        "in all variants; no XLA, no early stopping; compared on validation MSE.",
        f"Winner: {result['winner']}. A winner is named only when the paired Wilcoxon test across seeds gives "
        f"p < {alpha} against both other variants.",
        "Across-epochs tests pair the seed-averaged curves epoch by epoch; successive epochs are correlated, so "
        "those p-values overstate the evidence and are descriptive only.",
    ]
    if result["min_attainable_p_across_seeds"] >= alpha:
        notes.append(f"With {len(seed_list)} seeds the smallest p-value the exact Wilcoxon test can reach is "
                     f"{result['min_attainable_p_across_seeds']:.3g} ≥ {alpha}, so no winner can be named; "
                     "use --js-seeds 6 or more for a decision.")
    return SectionResult("james_stein", "", tables={"variants": per_variant, "paired tests": pd.DataFrame(stats_rows)},
                         figures=[path], summary=summary, notes=notes)
