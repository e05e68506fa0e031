"""Section 9: how hyperparameters correlate with results over the run history and HPO trials."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from nnlab.analysis.artifacts import hidden_layers_of
from nnlab.analysis.base import SectionResult, SectionSkipped, new_figure, save_figure
from nnlab.analysis.significance import MIN_CORRELATION_N, PERMUTATION_MAX_N, spearman, too_small_text
from nnlab.runs import RunStatus

__all__ = ["hyperparameter_table", "impact_correlations", "hyperparameter_heatmap", "METRICS", "MIN_ROWS"]

MIN_ROWS = 3
# Statuses whose metrics describe a cut-short run.
UNFINISHED = (RunStatus.PRUNED, RunStatus.FAILED, RunStatus.RUNNING)
METRICS = ("best_r2", "test_r2", "test_mae", "training_time_s")
_SCALARS = ("dropout_rate", "batch_size", "epochs", "l2_regularization")


def _features(source: str, row: dict, metrics: dict) -> dict:
    lr = pd.to_numeric(row.get("learning_rate"), errors="coerce")
    layers = hidden_layers_of(row.get("hidden_layers"))
    out = {"source": source,
           "log10_learning_rate": math.log10(lr) if lr is not None and np.isfinite(lr) and lr > 0 else math.nan,
           **{k: pd.to_numeric(row.get(k), errors="coerce") for k in _SCALARS},
           "n_layers": float(len(layers)) if layers else math.nan,
           "total_units": float(sum(layers)) if layers else math.nan,
           "max_width": float(max(layers)) if layers else math.nan,
           "strategy": row.get("loss_weighting_strategy") if isinstance(row.get("loss_weighting_strategy"), str)
           else None}
    out.update({k: pd.to_numeric(v, errors="coerce") for k, v in metrics.items()})
    return out


def hyperparameter_table(history: pd.DataFrame | None, hpo: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished run (history) and per completed HPO trial not already in the history.

    History runs that were pruned, failed or are still running are left out;
    a history run that is an HPO trial is labelled as the trial.

    Columns: ``source``, the hyperparameter features (log10 learning rate,
    dropout, batch size, epochs, L2, layer count/units/max width,
    ``strategy=<name>`` indicators) and the metrics :data:`METRICS`.
    """
    rows = []
    seen: set[str] = set()
    trials = {}
    if hpo is not None and not hpo.empty and "run_id" in hpo:
        trials = {str(r): t for r, t in zip(hpo["run_id"], hpo.get("trial_number", hpo.index)) if isinstance(r, str) and r}
    if history is not None and not history.empty:
        for row in history.to_dict("records"):
            if RunStatus.parse(row.get("status")) in UNFINISHED:
                continue
            run_id = str(row.get("run_id"))
            seen.add(run_id)
            source = f"HPO trial {trials[run_id]}" if run_id in trials else f"run {run_id}"
            rows.append(_features(source, row, {
                "best_r2": row.get("best_val_r2"), "test_r2": row.get("test_r2"), "test_mae": row.get("test_mae"),
                "training_time_s": row.get("total_time_s")}))
    if hpo is not None and not hpo.empty:
        for row in hpo.to_dict("records"):
            if str(row.get("state", "COMPLETE")).upper() != "COMPLETE" or str(row.get("run_id")) in seen:
                continue
            rows.append(_features(f"HPO trial {row.get('trial_number')}", row, {
                "best_r2": row.get("best_r2"), "test_r2": row.get("test_r2"), "test_mae": row.get("test_mae"),
                "training_time_s": row.get("duration_s")}))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    strategies = sorted(s for s in table["strategy"].dropna().unique())
    if len(strategies) >= 2:
        for name in strategies:
            table[f"strategy={name}"] = (table["strategy"] == name).astype(float).where(table["strategy"].notna())
    return table.drop(columns=["strategy"])


def impact_correlations(table: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Spearman correlations hyperparameter × metric (pairwise complete; see :func:`~nnlab.analysis.significance.spearman`).

    Returns:
        ``(matrix, pairs)``: the matrix of varied hyperparameters by metrics (NaN where nothing
        could be computed or n < :data:`~nnlab.analysis.significance.MIN_CORRELATION_N`), and every
        pair that varies as ``{parameter, metric, rho, p_value, n, method, reason}``: the ones with
        a ρ first, strongest first, then the "n too small" ones (``rho`` and ``p_value`` None).
    """
    metrics = [m for m in METRICS if m in table and table[m].nunique() >= 2]
    params = [c for c in table.columns if c not in (*METRICS, "source") and table[c].nunique() >= 2]
    if not metrics or not params:
        return pd.DataFrame(), []
    matrix = pd.DataFrame(index=params, columns=metrics, dtype=float)
    pairs = []
    for p in params:
        for m in metrics:
            found = spearman(pd.to_numeric(table[p], errors="coerce"), pd.to_numeric(table[m], errors="coerce"))
            if found is None:
                continue
            if found["rho"] is not None:
                matrix.loc[p, m] = found["rho"]
            pairs.append({"parameter": p, "metric": m, **found})
    pairs.sort(key=lambda d: (d["rho"] is None, -abs(d["rho"] or 0.0)))
    return matrix, pairs


def _draw(matrix: pd.DataFrame, counts: pd.DataFrame, title: str, out_dir: Path) -> Path:
    """The heatmap: ρ in each cell, or "n < 8" (grey) where too few pairs."""
    fig, axes = new_figure(1, 1, size=(2.2 + 1.6 * matrix.shape[1], 1.6 + 0.6 * matrix.shape[0]))
    ax = axes[0, 0]
    ax.set_facecolor("#dddddd")
    image = ax.imshow(matrix.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns)
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value, n = matrix.iat[i, j], counts.iat[i, j]
            if np.isfinite(value):
                text = f"{value:.2f}"
            elif np.isfinite(n):
                text = f"n={int(n)}\ntoo small"
            else:
                continue
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(value) and abs(value) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="Spearman ρ")
    ax.set_title(title)
    return save_figure(fig, out_dir / "hyperparameter_impact_heatmap.png")


def _matrix_table(matrix: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """ρ per cell, or "n too small (n = k < 8)"; "—" where nothing could be computed."""
    shown = matrix.astype(object).copy()
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            n = counts.iat[i, j]
            if not np.isfinite(matrix.iat[i, j]) and np.isfinite(n):
                shown.iat[i, j] = too_small_text(int(n))
    return shown.reset_index(names="parameter")


def _pair_table(pairs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"parameter": p["parameter"], "metric": p["metric"], "n": p["n"],
                          "rho": p["rho"] if p["rho"] is not None else p["reason"],
                          "p_value": p["p_value"] if p["p_value"] is not None else "—",
                          "p-value method": p["method"] or "—"} for p in pairs])


def hyperparameter_heatmap(history: pd.DataFrame | None, hpo: pd.DataFrame | None, out_dir: Path, *,
                           top: int = 3) -> SectionResult:
    """Section 9: the heatmap and the strongest positive/negative correlations."""
    table = hyperparameter_table(history, hpo)
    n_runs = int(table["source"].str.startswith("run ").sum()) if not table.empty else 0
    n_trials = len(table) - n_runs
    if len(table) < MIN_ROWS:
        raise SectionSkipped(f"needs at least {MIN_ROWS} runs or HPO trials, found {len(table)} "
                             f"({n_runs} runs, {n_trials} HPO trials)")
    matrix, pairs = impact_correlations(table)
    if matrix.empty or not pairs:
        raise SectionSkipped(f"no hyperparameter varies together with a metric across the {len(table)} "
                             "runs/trials (need at least 3 rows with two different values)")
    counts = pd.DataFrame(index=matrix.index, columns=matrix.columns, dtype=float)
    for pair in pairs:
        counts.loc[pair["parameter"], pair["metric"]] = pair["n"]
    shown = counts.notna().any(axis=1)
    matrix, counts = matrix[shown], counts[shown]
    path = _draw(matrix, counts, f"Hyperparameter impact ({n_runs} runs, {n_trials} HPO trials)", out_dir)
    reported = [p for p in pairs if p["rho"] is not None]
    positive = [p for p in reported if p["rho"] > 0][:top]
    negative = [p for p in reported if p["rho"] < 0][:top]
    notes = [
        f"Spearman rank correlation over {n_runs} runs of the history and {n_trials} HPO trials "
        f"({'run history only: no hpo_results.csv' if hpo is None else 'HPO results included'}). "
        f"Only hyperparameters that vary appear. A correlation needs at least {MIN_CORRELATION_N} complete "
        f"pairs: below that a cell says \"n too small\" and no ρ or p is reported (with 4 runs ρ = ±1 "
        f"happens by chance). p-values: exact or random-permutation test up to {PERMUTATION_MAX_N} pairs, "
        "the t-approximation above (column p-value method).",
        "R² metrics: higher is better; test_mae and training time: lower is better. Correlation is not "
        "causation: settings that were changed together share their correlations.",
    ]
    return SectionResult(
        "heatmap", "",
        tables={"correlations (parameters × metrics)": _matrix_table(matrix, counts),
                "strongest positive": _pair_table(positive), "strongest negative": _pair_table(negative),
                "every pair": _pair_table(pairs)},
        figures=[path],
        summary={"n_runs": n_runs, "n_hpo_trials": n_trials, "uses_hpo_results": hpo is not None and n_trials > 0,
                 "strongest_positive": positive, "strongest_negative": negative,
                 "min_correlation_n": MIN_CORRELATION_N, "pairs_too_small": len(pairs) - len(reported)},
        notes=notes)
