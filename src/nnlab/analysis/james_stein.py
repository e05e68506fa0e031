"""Section 7: binary constraints vs James-Stein shrinkage vs no constraints, trained for real.

Three variants of the run's configuration are trained on the run's particle
data for K seeds and E epochs each, as one ``compare`` study of
:mod:`nnlab.study`: every (variant, seed) is a normal run with its own run
directory under ``<analysis_dir>/james_stein_study/``, the runs go to parallel
worker processes, and the study directory stays behind (``nnlab analyze
--study DIR`` renders it again). Everything but the weight constraints is
identical within a seed (architecture, optimizer, learning rate, loss strategy,
batch size, data split, initial weights, shuffling), so the comparison is
paired by seed.

* ``binary_constraints``: the run's BinaryChangeMax/BinaryPrecisionMax settings;
  when precision is not limited (``enable_binary_precision_max`` off or
  ``max_binary_digits = 24``, a no-op) BinaryPrecisionMax at 16 bits is used.
* ``james_stein``: JamesSteinShrinkage with the run's target and noise variance.
* ``no_constraints``: no weight constraint at all.

The oscillation dampeners are off in all three, so each variant isolates one
family. Constraints run every ``min(constraint_interval, max(1, E // 5))``
epochs (at least five applications in a short comparison), early stopping is
off (curves of equal length) and XLA is off (``jit_compile = false``: for a few
dozen epochs its compile time outweighs its gain; results are the same). The
compared loss is the validation MSE: the adaptive loss reweights itself along
each variant's own trajectory, so its values are not comparable between
variants. Six seeds by default: the smallest number with which the exact
two-sided paired Wilcoxon test can reach p < 0.05 (its minimum is 2/2^K).
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab.analysis.base import SectionResult, new_figure, save_figure

__all__ = ["VARIANTS", "DEFAULT_JS_SEEDS", "DEFAULT_JS_EPOCHS", "STUDY_DIR_NAME", "variant_overrides",
           "convergence_epoch", "run_variant_study", "variant_records", "compare_variants",
           "james_stein_comparison"]

VARIANTS = ("binary_constraints", "james_stein", "no_constraints")
# The exact two-sided paired Wilcoxon test of K pairs cannot give p below 2/2^K:
# 0.0625 for 5 seeds, 0.031 for 6 -- the fewest seeds that can name a winner at 0.05.
DEFAULT_JS_SEEDS = 6
DEFAULT_JS_EPOCHS = 30
LOSS_METRIC = "val_mse"
STUDY_DIR_NAME = "james_stein_study"
STUDY_NAME = "nnlab-analysis-james-stein"
DATA_FILE = "particles.csv"
DONE_STATUSES = ("completed", "diverged")

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


def _new_study_dir(out_dir: Path) -> Path:
    """``<out_dir>/james_stein_study``, or ``..._2``, ``..._3``: a directory this call created (nothing reused)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        path = out_dir / (STUDY_DIR_NAME if attempt == 1 else f"{STUDY_DIR_NAME}_{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"too many {STUDY_DIR_NAME}_* directories in '{out_dir}'")  # pragma: no cover


def _study_base(config: Any, epochs: int) -> Any:
    """The run's whole configuration, checkpointed once at the end: these short runs are never resumed, and kept
    out of MLflow (the analysis is logged to the analysed run's own MLflow run, not as new runs)."""
    return config.updated({"checkpoint_every": int(epochs), "mlflow_tracking_uri": None}, source="james_stein")


def run_variant_study(particles: str | os.PathLike, config: Any, study_dir: str | os.PathLike, *,
                      seeds: Sequence[int], epochs: int, workers: int,
                      progress: Callable[[str], None] | None = None) -> Any:
    """Train every variant for every seed as one ``compare`` study; returns the :class:`~nnlab.study.StudyResult`.

    Args:
        particles: the particle CSV every run trains on (split per seed).
        config: the run's :class:`~nnlab.config.Config`: the base of every variant.
        study_dir: the study directory (runs/, the runs table, the study summary).
        seeds: the seeds (each one trains the three variants from the same initial weights).
        epochs: epochs per training.
        workers: worker processes (capped at the CPUs and the runs).
        progress: called with the study's lines (its start line, a line per finished run, its
            outputs); None is silent. Worker processes print their lines themselves.
    """
    from nnlab.study import StudySpec, run_study

    spec = StudySpec.compare(variant_overrides(config, epochs), seeds=[int(s) for s in seeds],
                             base=_study_base(config, epochs))
    # In this process the study's lines go through `progress`; spawned workers print their own.
    return run_study(spec, output_dir=study_dir, workers=int(workers), study_name=STUDY_NAME, data=particles,
                     progress=progress if progress is not None else False)


def _kernel_weights(weights_file: Path) -> np.ndarray:
    """Every kernel in a Keras weights file: the 2-D variables of its layers (biases and PReLU slopes are 1-D)."""
    import h5py

    kernels: list[np.ndarray] = []
    with h5py.File(weights_file, "r") as f:
        def visit(_name: str, node: Any) -> None:
            if isinstance(node, h5py.Dataset) and node.ndim == 2:
                kernels.append(np.asarray(node[()], np.float32).ravel())
        f["layers"].visititems(visit)
    return np.concatenate(kernels) if kernels else np.zeros(0, np.float32)


def _curve(run_dir: Path, epochs: int) -> np.ndarray:
    """The run's validation MSE per epoch, NaN-padded to ``epochs`` (a diverged run stops early).

    A run whose training_results.csv cannot be read gets an all-NaN curve, with a warning naming the file.
    """
    curve = np.full(int(epochs), math.nan)
    path = run_dir / "training_results.csv"
    try:
        values = pd.read_csv(path)[LOSS_METRIC].to_numpy(float)[:epochs]
    except (OSError, KeyError, ValueError) as exc:  # ValueError covers pandas' EmptyDataError and parse errors
        warnings.warn(f"james_stein: no {LOSS_METRIC} curve from {path} ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)
        return curve
    curve[:len(values)] = values
    return curve


def variant_records(runs: pd.DataFrame, *, epochs: int) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """One record per (variant, seed) from the study's runs table and run directories.

    Only seeds whose three runs finished (completed or diverged) are kept: the
    comparison is paired. Each record: ``seed``, ``curve`` (validation MSE per
    epoch, from training_results.csv), ``best_loss``, ``convergence_epoch``,
    ``test_r2``, ``mean_significant_bits`` (of the final kernels),
    ``diverged``, ``run_dir`` and, for the first seed only, ``weights`` (all
    kernel weights, for histograms).

    Returns:
        The records by variant, and one line per seed left out.
    """
    from nnlab.constraints import significant_bits

    seeds = list(dict.fromkeys(int(s) for s in runs["seed"]))
    by_unit = {(str(r.variant), int(r.seed)): r for r in runs.itertuples(index=False)}
    dropped: list[str] = []
    kept: list[int] = []
    for seed in seeds:
        missing = [f"{v} ({by_unit[(v, seed)].status if (v, seed) in by_unit else 'no run'})" for v in VARIANTS
                   if (v, seed) not in by_unit or by_unit[(v, seed)].status not in DONE_STATUSES]
        if missing:
            dropped.append(f"seed {seed}: no finished run of {', '.join(missing)}")
        else:
            kept.append(seed)
    records: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for seed in kept:
        for v in VARIANTS:
            row = by_unit[(v, seed)]
            run_dir = Path(row.run_dir)
            curve = _curve(run_dir, epochs)
            final = run_dir / "weights" / "final.weights.h5"
            weights = _kernel_weights(final) if final.is_file() else np.zeros(0, np.float32)
            record = {
                "seed": seed, "curve": curve, "run_dir": str(run_dir),
                "best_loss": float(np.nanmin(curve)) if np.isfinite(curve).any() else math.nan,
                "convergence_epoch": convergence_epoch(curve),
                "test_r2": float(row.test_r2),
                "mean_significant_bits": float(np.mean(significant_bits(weights))) if weights.size else math.nan,
                "diverged": row.status == "diverged",
            }
            if seed == kept[0]:
                record["weights"] = weights
            records[v].append(record)
    return records, dropped


def _pair(a: str, b: str) -> str:
    return f"{a}_vs_{b}"


SIGN_FLIPS = 10_000  # the paired permutation test is exact when 2**n is at most this


def wilcoxon_method(a: Any, b: Any) -> str:
    """How scipy computes the two-sided Wilcoxon p of the pairs (method="auto"): exact below 51 pairs
    without zero or tied differences, else the normal approximation."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    nonzero = d[d != 0]
    if d.size == 0 or nonzero.size == 0:
        return "none (no non-zero difference)"
    exact = d.size <= 50 and nonzero.size == d.size and np.unique(np.abs(nonzero)).size == nonzero.size
    return "exact Wilcoxon" if exact else "Wilcoxon, normal approximation"


def paired_permutation_p(a: Any, b: Any, *, seed: int = 0) -> float:
    """Two-sided sign-flip permutation test of the mean paired difference (exact for 2**n ≤ SIGN_FLIPS)."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    if d.size < 2 or not np.any(d):  # one pair: both sign patterns give the same |mean|, p = 1
        return 1.0 if d.size else math.nan
    result = stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                    n_resamples=SIGN_FLIPS, alternative="two-sided", rng=np.random.default_rng(seed))
    return float(min(1.0, result.pvalue))


def _with_methods(comparison: dict[str, Any], a: Any, b: Any, *, permutation: bool = True) -> dict[str, Any]:
    comparison["p_method"] = wilcoxon_method(a, b)
    comparison["permutation_p"] = paired_permutation_p(a, b) if permutation else None
    return comparison


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
    from nnlab.stats import bootstrap_ci, compare_paired, min_wilcoxon_p  # SciPy: only when compared

    best = {v: np.array([r["best_loss"] for r in runs[v]]) for v in VARIANTS}
    curves = {v: np.nanmean(np.vstack([r["curve"] for r in runs[v]]), axis=0) for v in VARIANTS}
    comparisons: dict[str, dict[str, Any]] = {}
    for a, b in itertools.combinations(VARIANTS, 2):
        comparisons[_pair(a, b)] = {
            "across_seeds": _with_methods(compare_paired(best[a], best[b], alpha=alpha, seed=seed), best[a], best[b]),
            "across_epochs": _with_methods(compare_paired(curves[a], curves[b], alpha=alpha, seed=seed),
                                           curves[a], curves[b], permutation=False),
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
    _plot_convergence(axes[0, 0], runs, x, colors)
    _plot_best_loss(axes[0, 1], runs, result, colors)
    _plot_test_r2(axes[0, 2], runs, colors)
    _plot_weights(axes[1, 0], runs, colors)
    _plot_epoch_differences(axes[1, 1], runs, x)
    _plot_summary(axes[1, 2], runs, result)
    return save_figure(fig, out_dir / "james_stein_comparison.png")


def _mean_curve(records: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.nanmean(np.vstack([r["curve"] for r in records]), axis=0)


def _plot_convergence(ax, runs, x: np.ndarray, colors: dict[str, str]) -> None:
    for v in VARIANTS:
        stack = np.vstack([r["curve"] for r in runs[v]])
        ax.plot(x, np.nanmean(stack, axis=0), color=colors[v], lw=2, label=v)
        ax.fill_between(x, np.nanmin(stack, axis=0), np.nanmax(stack, axis=0), color=colors[v], alpha=0.2)
    if all(np.nanmin(np.vstack([r["curve"] for r in runs[v]])) > 0 for v in VARIANTS):
        ax.set_yscale("log")
    ax.set(title="Convergence: validation MSE (mean, band = min–max over seeds)", xlabel="epoch",
           ylabel="validation MSE")
    ax.legend()


def _plot_best_loss(ax, runs, result, colors: dict[str, str]) -> None:
    means = [result["best_loss"][v] for v in VARIANTS]
    cis = [result["best_loss_ci"][v] for v in VARIANTS]
    err = np.array([[m - lo for m, (lo, _) in zip(means, cis)], [hi - m for m, (_, hi) in zip(means, cis)]])
    ax.bar(VARIANTS, means, yerr=np.nan_to_num(err), capsize=6, color=[colors[v] for v in VARIANTS], alpha=0.8)
    for i, v in enumerate(VARIANTS):
        ax.scatter([i] * len(runs[v]), [r["best_loss"] for r in runs[v]], color="black", s=15, zorder=3)
    ax.set(title="Best validation MSE per variant (95% bootstrap CI, dots = seeds)", ylabel="best validation MSE")


def _plot_test_r2(ax, runs, colors: dict[str, str]) -> None:
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


def _plot_weights(ax, runs, colors: dict[str, str]) -> None:
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


def _plot_epoch_differences(ax, runs, x: np.ndarray) -> None:
    for a, b in itertools.combinations(VARIANTS, 2):
        ax.plot(x, _mean_curve(runs[a]) - _mean_curve(runs[b]), lw=1.5, label=f"{a} − {b}")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set(title="Per-epoch difference of mean validation MSE (< 0: first is better)", xlabel="epoch",
           ylabel="difference")
    ax.legend(fontsize=8)


def _plot_summary(ax, runs, result) -> None:
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


def _json_pairs(comparisons: dict[str, Any], key: str) -> dict[str, dict[str, float]]:
    return {pair: {basis: comp[basis][key] for basis in ("across_seeds", "across_epochs")}
            for pair, comp in comparisons.items()}


def _study_data(particles: Any, study_dir: Path, metadata: dict[str, Any] | None) -> Path:
    """The CSV the study trains on: ``particles`` itself when it is a file, else the DataFrame written
    (with its provenance sidecar) into the study directory."""
    if isinstance(particles, pd.DataFrame):
        from nnlab.data import save_particle_data

        return save_particle_data(particles, study_dir / DATA_FILE, metadata=metadata)
    return Path(particles)


def james_stein_comparison(particles: str | os.PathLike | pd.DataFrame, config: Any, out_dir: Path, *,
                           study_root: Path | None = None, seeds: int = DEFAULT_JS_SEEDS, epochs: int = DEFAULT_JS_EPOCHS,
                           workers: int | None = None, alpha: float = 0.05,
                           data_metadata: dict[str, Any] | None = None,
                           progress: Callable[[str], None] | None = None) -> SectionResult:
    """Section 7: train the three variants as a study and compare them (see the module docstring).

    Args:
        particles: the run's particle data: a CSV file (trained on as found) or a
            DataFrame (written to ``<study dir>/particles.csv`` first).
        config: the run's :class:`~nnlab.config.Config` (every variant's base).
        out_dir: where james_stein_comparison.png goes.
        study_root: where the study directory (``james_stein_study``, or ``james_stein_study_<k>``
            when taken) goes (default: ``out_dir``); ``nnlab analyze`` puts it beside its analysis
            folders, so the runs' recorded paths stay valid when that folder is published.
        seeds: number of seeds K (seed s, s+1, ... from the run's ``seed``, 0 if none).
        epochs: epochs E per training.
        workers: worker processes (default: the CPUs available).
        alpha: significance level of the winner decision.
        data_metadata: the provenance sidecar of a DataFrame ``particles``.
        progress: called with the section's progress lines; with it the study
            also prints its own (a line per finished run); None is silent.

    Raises:
        ConfigError, DataValidationError: a bad option or data file (from the study).
        NnlabError: no seed has its three runs finished.
    """
    from nnlab.errors import NnlabError
    from nnlab.orchestration import available_cpus

    base = config.model.seed if config.model.seed is not None else 0
    seed_list = [base + k for k in range(int(seeds))]
    n_workers = available_cpus() if workers is None else int(workers)
    study_dir = _new_study_dir(Path(study_root if study_root is not None else out_dir))
    data_path = _study_data(particles, study_dir, data_metadata)
    if progress is not None:
        progress(f"james_stein: {len(VARIANTS)} variants × {len(seed_list)} seeds × {epochs} epochs as a study in "
                 f"{study_dir} ({n_workers} worker{'s' if n_workers != 1 else ''})")
    study = run_variant_study(data_path, config, study_dir, seeds=seed_list, epochs=int(epochs), workers=n_workers,
                              progress=progress)
    runs, dropped = variant_records(study.runs, epochs=int(epochs))
    if not runs[VARIANTS[0]]:
        raise NnlabError(f"no seed has its {len(VARIANTS)} runs finished ({'; '.join(dropped)}); "
                         f"see {study.paths['runs']}")
    used_seeds = [r["seed"] for r in runs[VARIANTS[0]]]
    result = compare_variants(runs, alpha=alpha)
    path = _figure(runs, result, out_dir, int(epochs))
    overrides = variant_overrides(config, epochs)
    summary = {
        **{f"{v}_best_loss": result["best_loss"][v] for v in VARIANTS},
        "p_values": _json_pairs(result["comparisons"], "p_value"),
        "effect_sizes": _json_pairs(result["comparisons"], "cohens_d"),
        "p_value_methods": _json_pairs(result["comparisons"], "p_method"),
        "permutation_p_values": _json_pairs(result["comparisons"], "permutation_p"),
        "winner": result["winner"],
        "winner_rule": f"lowest mean best {LOSS_METRIC}, significant (paired Wilcoxon across seeds, "
                       f"p < {alpha}) against both other variants",
        "loss_metric": LOSS_METRIC, "seeds": used_seeds, "seeds_left_out": dropped, "epochs": int(epochs),
        "alpha": alpha, "workers": n_workers,
        "study_dir": str(study.study_dir), "runs_csv": str(study.paths["runs"]), "data": str(data_path),
        "min_attainable_p_across_seeds": result["min_attainable_p_across_seeds"],
        "confidence_intervals": {v: list(result["best_loss_ci"][v]) for v in VARIANTS},
        "comparisons": result["comparisons"],
        "variants": {v: {"settings": overrides[v],
                         "best_loss_per_seed": [r["best_loss"] for r in runs[v]],
                         "convergence_epoch_per_seed": [r["convergence_epoch"] for r in runs[v]],
                         "test_r2_per_seed": [r["test_r2"] for r in runs[v]],
                         "mean_significant_bits": runs[v][0]["mean_significant_bits"],
                         "run_dirs": [r["run_dir"] for r in runs[v]]} for v in VARIANTS},
    }
    notes = _notes(result, study, used_seeds, dropped, epochs=epochs, alpha=alpha,
                   interval=overrides["no_constraints"]["constraint_interval"])
    study_runs = study.runs[["variant", "seed", "status", "test_r2", "best_val_mse", "epoch_time_mean", "run_id"]]
    return SectionResult("james_stein", "", tables={"variants": _variant_table(runs, result),
                                                    "paired tests": _paired_tests_table(result),
                                                    "study runs": study_runs},
                         figures=[path], summary=summary, notes=notes)


def _variant_table(runs: dict[str, list[dict[str, Any]]], result: dict[str, Any]) -> pd.DataFrame:
    """One row per variant: mean best loss with its CI, convergence epoch, test R², bits, diverged runs."""
    return pd.DataFrame([{
        "variant": v,
        "best_loss_mean": result["best_loss"][v],
        "best_loss_ci_low": result["best_loss_ci"][v][0], "best_loss_ci_high": result["best_loss_ci"][v][1],
        "convergence_epoch_mean": float(np.nanmean([r["convergence_epoch"] or np.nan for r in runs[v]])),
        "test_r2_mean": float(np.nanmean([r["test_r2"] for r in runs[v]])),
        "mean_significant_bits": runs[v][0]["mean_significant_bits"],
        "diverged_runs": int(sum(r["diverged"] for r in runs[v])),
    } for v in VARIANTS])


def _paired_tests_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per pair of variants and basis (across seeds, across epochs)."""
    return pd.DataFrame([{"comparison": pair.replace("_vs_", " vs "), "basis": basis, "n": c["n"],
                          "mean_diff": c["mean_diff"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                          "wilcoxon_W": c["wilcoxon_statistic"], "p_value": c["p_value"],
                          "p-value method": c.get("p_method"), "permutation_p (sign flips)": c.get("permutation_p"),
                          "cohens_d": c["cohens_d"],
                          "significant": c["significant"]}
                         for pair, comp in result["comparisons"].items() for basis, c in comp.items()])


def _notes(result: dict[str, Any], study: Any, used_seeds: Sequence[int], dropped: Sequence[str], *, epochs: int,
           alpha: float, interval: int) -> list[str]:
    """How the variants were trained and compared, the seeds left out, and whether a winner could be named."""
    notes = [
        f"{len(used_seeds)} seeds × {epochs} epochs per variant, the run's own architecture and data; "
        f"constraints every {interval} epochs; oscillation dampeners off "
        "in all variants; no XLA, no early stopping; compared on validation MSE.",
        f"Winner: {result['winner']}. A winner is named only when the paired Wilcoxon test across seeds gives "
        f"p < {alpha} against both other variants.",
        "p_value: two-sided Wilcoxon signed-rank, exact (scipy's exact null distribution) across seeds when the "
        "differences have no zeros or ties, else the normal approximation (column p-value method); "
        f"permutation_p: a sign-flip permutation test of the mean difference across seeds (exact: all 2^n sign "
        f"patterns up to 2^n = {SIGN_FLIPS}).",
        "Across-epochs tests pair the seed-averaged curves epoch by epoch; successive epochs are correlated, so "
        "those p-values overstate the evidence and are descriptive only.",
        f"The runs are a compare study in {study.study_dir} (runs table {study.paths['runs'].name}, one run "
        f"directory per variant and seed); `nnlab analyze --study {study.study_dir}` renders it again.",
    ]
    notes.extend(f"Left out of the paired comparison: {line}." for line in dropped)
    if result["min_attainable_p_across_seeds"] >= alpha:
        notes.append(f"With {len(used_seeds)} seeds the smallest p-value the exact Wilcoxon test can reach is "
                     f"{result['min_attainable_p_across_seeds']:.3g} ≥ {alpha}, so no winner can be named; "
                     "use --js-seeds 6 or more for a decision.")
    return notes
