"""Section 11: physics consistency of the predictions (speed, energy, displacement, gyration radius).

The metrics are those of :mod:`nnlab.physics`, recorded by every run in
``test_metrics.json`` under ``"physics"``. This section compares them across
the runs of the output directory (did the physics-informed loss term help?)
and, for the analysed run, plots per test sample how far a prediction breaks
each relation against how wrong it is, with a Spearman correlation: does
inconsistency go with error?

Example:
    >>> table, missing = physics_runs_table("training_output")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from nnlab._numbers import float_or_none
from nnlab.analysis.artifacts import list_runs, read_json_artifact
from nnlab.analysis.base import SectionResult, SectionSkipped, new_figure, save_figure
from nnlab.analysis.residuals import sample_indices
from nnlab.physics import (
    GYRATION_MIN_TURN,
    PHYSICS_METRICS,
    RELATIONS,
    consistency_residuals,
    gyration_sample_mask,
    physics_report,
)

__all__ = ["MAX_POINTS", "physics_consistency", "physics_runs_table", "prediction_errors"]

#: at most this many test samples are drawn in each panel (the statistics use all of them)
MAX_POINTS = 5000

# relation -> (x axis: the per-sample prediction error, y axis: the per-sample violation)
_AXES = {
    "speed": ("|v_pred − v_true| / RMS|v_true|", "||v_pred| − |v_0|| / RMS|v_0|"),
    "energy": ("|KE_pred − KE_true| / RMS(KE_true)", "|KE_pred − ½m|v_pred|²| / RMS(½m|v_pred|²)"),
    "displacement": ("|d_pred − d_true| / RMS(d_true)", "|d_pred − |r_pred − r_0|| / RMS|r_pred − r_0|"),
    "gyration": ("|r_pred − r_true| / RMS|r_true − r_0|",
                 "||r_pred − centre| − R| / RMS(R),  R = m|v_0|/(|q|B)"),
}
_MEANING = (
    "Each violation is a relative RMS over the test set, RMS(lhs − rhs) / RMS(rhs), of a relation a magnetic "
    "field imposes: speed conservation (|v_pred| = |v_0|), the energy relation (KE_pred = ½m|v_pred|²), the "
    "displacement relation (displacement_pred = |r_pred − r_0|) and the gyration radius (|r_pred − centre| = "
    f"m|v_0|/(|q|B), particles that turned ≥ {GYRATION_MIN_TURN:g} rad). 0 is perfectly consistent; the true "
    "test targets give ≈1e-8 (true_data_max, a self-check of the simulation)."
)


def _physics_config(config: Mapping[str, Any]) -> tuple[float, list[str] | None]:
    """(physics_loss_weight, its terms or None when the term was off); runs that predate it: (0, None)."""
    weight = float_or_none(config.get("physics_loss_weight")) or 0.0
    terms = config.get("physics_loss_terms")
    terms = [str(t) for t in terms] if weight > 0 and isinstance(terms, list) else None
    return weight, terms


def _true_max(physics: Mapping[str, Any]) -> float | None:
    true = physics.get("true_data") if isinstance(physics.get("true_data"), Mapping) else {}
    values = [v for v in (float_or_none(true.get(m)) for m in PHYSICS_METRICS) if v is not None]
    return max(values) if values else None


def _row(run_id: str, config: Mapping[str, Any], test_metrics: Mapping[str, Any],
         physics: Mapping[str, Any]) -> dict[str, Any]:
    weight, terms = _physics_config(config)
    scaled = test_metrics.get("scaled") if isinstance(test_metrics.get("scaled"), Mapping) else {}
    return {"run_id": run_id, "physics_loss_weight": weight,
            "physics_loss_terms": ", ".join(terms) if terms else None, "test_r2": float_or_none(scaled.get("r2")),
            **{m: float_or_none(physics.get(m)) for m in PHYSICS_METRICS}, "true_data_max": _true_max(physics)}


def physics_runs_table(output_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """The physics metrics recorded by every run of ``output_dir``, oldest first.

    Args:
        output_dir: the training output root.

    Returns:
        ``(table, without)``: one row per run whose ``test_metrics.json`` has a
        ``"physics"`` object — run_id, physics_loss_weight (0 when the run
        predates the key), physics_loss_terms (None when the term was off),
        test_r2 (scaled), the four violations and ``true_data_max``, the
        largest of the true-data values — and the ids of the other runs (older
        runs, or runs that did not finish). Runs on a user's table (physics
        ``{"applicable": false}``) are in neither.
    """
    rows, without = [], []
    for run_id in list_runs(output_dir):
        run_dir = Path(output_dir) / "runs" / run_id
        problems: dict[str, str] = {}
        test_metrics = read_json_artifact(run_dir / "test_metrics.json", problems)
        physics = test_metrics.get("physics")
        if isinstance(physics, Mapping) and physics.get("applicable") is False:
            continue  # a run on a user's table: the relations do not apply to it
        if not isinstance(physics, Mapping):
            without.append(run_id)
            continue
        record = read_json_artifact(run_dir / "training_config.json", problems)
        config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
        rows.append(_row(run_id, config, test_metrics, physics))
    columns = ["run_id", "physics_loss_weight", "physics_loss_terms", "test_r2", *PHYSICS_METRICS, "true_data_max"]
    return pd.DataFrame(rows, columns=columns), without


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2))) if values.size else math.nan


def _scaled(values: np.ndarray, scale: float) -> np.ndarray:
    return values / scale if math.isfinite(scale) and scale > 0 else np.full(values.shape, np.nan)


def prediction_errors(predicted: Mapping[str, Any], actual: Mapping[str, Any], initial: Mapping[str, Any],
                      residuals: Mapping[str, Any] | None = None) -> dict[str, np.ndarray | None]:
    """Per-sample prediction error in the quantities each relation involves, relative to their typical size.

    The samples match :func:`nnlab.physics.consistency_residuals` (for ``gyration``
    only the particles that turned at least ``GYRATION_MIN_TURN``): the x axes
    of the figure, see ``_AXES`` for the definitions.

    Args:
        predicted, actual: final quantities by target name, physical units.
        initial: initial quantities by column name.
        residuals: ``consistency_residuals(predicted, initial)`` when the caller has it.

    Returns:
        ``{relation: errors or None}``, None where the relation does not apply.
    """
    def col(values: Mapping[str, Any], name: str) -> np.ndarray:
        return np.asarray(values[name], dtype=np.float64).reshape(-1)

    if residuals is None:
        residuals = consistency_residuals(predicted, initial)
    out: dict[str, np.ndarray | None] = {}
    for relation in RELATIONS:
        if residuals[relation] is None or any(t not in actual for t in RELATIONS[relation][0]):
            out[relation] = None
            continue
        if relation == "speed":
            true = np.hypot(col(actual, "final_velocity_x"), col(actual, "final_velocity_y"))
            error = np.hypot(col(predicted, "final_velocity_x") - col(actual, "final_velocity_x"),
                             col(predicted, "final_velocity_y") - col(actual, "final_velocity_y"))
        elif relation in ("energy", "displacement"):
            name = "kinetic_energy" if relation == "energy" else "displacement"
            true = col(actual, name)
            error = np.abs(col(predicted, name) - true)
        else:
            # The same particles as consistency_residuals: those that turned far enough on their circle.
            turned = gyration_sample_mask(initial)
            true = np.hypot(col(actual, "final_position_x")[turned] - col(initial, "initial_position_x")[turned],
                            col(actual, "final_position_y")[turned] - col(initial, "initial_position_y")[turned])
            error = np.hypot(col(predicted, "final_position_x")[turned] - col(actual, "final_position_x")[turned],
                             col(predicted, "final_position_y")[turned] - col(actual, "final_position_y")[turned])
        if error.shape != residuals[relation][0].shape:  # pragma: no cover - nnlab.physics changed its sample set
            raise ValueError(f"{relation}: {error.size} prediction errors for {residuals[relation][0].size} "
                             "violations; prediction_errors no longer matches nnlab.physics.consistency_residuals")
        out[relation] = _scaled(error, _rms(true))
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    result = stats.spearmanr(x, y)
    rho, p = float(result.statistic), float(result.pvalue)
    return (rho if math.isfinite(rho) else None), (p if math.isfinite(p) else None)


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def _figure(panels: Sequence[dict[str, Any]], out_dir: Path, *, seed: int) -> tuple[Path, list[str]]:
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols, size=(6.5 * ncols, 5.2 * nrows))
    notes = []
    for k, panel in enumerate(panels):
        ax = axes[k // ncols, k % ncols]
        x, y = panel["error"], panel["violation"]
        idx = sample_indices(len(x), MAX_POINTS, seed=seed)
        x, y = x[idx], y[idx]
        shown = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)  # a log axis has no place for 0
        ax.scatter(x[shown], y[shown], s=5, alpha=0.6 if shown.sum() <= 1000 else 0.3, color=f"C{k}",
                   edgecolors="none", label=f"{int(shown.sum())} test samples")
        if panel["relative_rms"] is not None and panel["relative_rms"] > 0:
            ax.axhline(panel["relative_rms"], color="black", lw=1, ls="--", label="relative RMS (RMS of the points)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(title=f"{panel['relation']}: relative RMS violation {_fmt(panel['relative_rms'])}, "
                     f"Spearman ρ = {_fmt(panel['spearman'], '.2f')}",
               xlabel=f"prediction error  {_AXES[panel['relation']][0]}",
               ylabel=f"violation  {_AXES[panel['relation']][1]}")
        ax.legend(fontsize=8, loc="lower right")
        if int((~shown).sum()):
            notes.append(f"{panel['relation']}: {int((~shown).sum())} plotted samples with a zero error or violation "
                         "are not on the log-log panel.")
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    return save_figure(fig, out_dir / "physics_consistency.png"), notes


def physics_consistency(output_dir: str | os.PathLike, run_id: str, out_dir: Path, *,
                        config: Mapping[str, Any], test_metrics: Mapping[str, Any],
                        y_pred: np.ndarray | None = None, y_true: np.ndarray | None = None,
                        X: np.ndarray | None = None, target_names: Sequence[str] = (),
                        feature_names: Sequence[str] = (), unavailable: str | None = None,
                        seed: int = 0) -> SectionResult:
    """Section 11: physics violations per run, and per test sample for the analysed run.

    Args:
        output_dir: the training output root (every run's ``test_metrics.json`` is read).
        run_id: the analysed run.
        out_dir: where ``physics_consistency.png`` goes.
        config: the analysed run's flat configuration (``physics_loss_weight``/``_terms``).
        test_metrics: its ``test_metrics.json`` ({} when missing).
        y_pred, y_true: (n, n_targets) test predictions and true targets in physical
            units, or None when the network's predictions are not available.
        X: (n, n_features) test features in physical units.
        target_names, feature_names: the columns of ``y_*`` and ``X``.
        unavailable: why the predictions are not available (shown instead of the figure).
        seed: seed of the plotted sample when the test set exceeds :data:`MAX_POINTS`.

    Raises:
        SectionSkipped: the run recorded no physics metrics and its predictions
            are not available either, or its physics is not applicable (a run on
            a user's table: ``"not applicable: <reason>"``).
    """
    recorded = test_metrics.get("physics") if isinstance(test_metrics.get("physics"), Mapping) else None
    if recorded is not None and recorded.get("applicable") is False:
        raise SectionSkipped(f"not applicable: {recorded.get('reason') or 'the run is not on the particle task'}")
    have_predictions = y_pred is not None and y_true is not None and X is not None
    if recorded is None and not have_predictions:
        raise SectionSkipped(f"test_metrics.json of run {run_id} has no physics metrics (the run predates them or "
                             f"did not finish) and its test predictions are not available: {unavailable}")
    weight, terms = _physics_config(config)
    recomputed, panels = (_sample_panels(y_pred, y_true, X, target_names, feature_names) if have_predictions
                          else (None, []))
    physics = recorded if recorded is not None else recomputed
    not_applicable = dict(physics.get("not_applicable") or {})
    table, without, run_notes = _runs_table(output_dir, run_id, config, test_metrics,
                                            recomputed if recorded is None else None)
    figures, figure_notes = _figure_and_notes(panels, out_dir, seed=seed, n_test=len(y_pred) if have_predictions
                                              else 0, have_predictions=have_predictions, unavailable=unavailable)
    notes = [_MEANING, *run_notes, *_training_notes(run_id, weight, terms, table, not_applicable), *figure_notes,
             *_mismatch_notes(recorded, recomputed)]
    summary = {
        "run_id": run_id,
        "violations": {m: float_or_none(physics.get(m)) for m in PHYSICS_METRICS},
        "violations_source": "test_metrics.json" if recorded is not None else "recomputed from the test predictions",
        "true_data": {m: float_or_none((physics.get("true_data") or {}).get(m)) for m in PHYSICS_METRICS},
        "not_applicable": not_applicable,
        "physics_loss": {"weight": weight, "terms": terms},
        "spearman": {p["relation"]: p["spearman"] for p in panels},
        "spearman_p": {p["relation"]: p["spearman_p"] for p in panels},
        "panels": [p["relation"] for p in panels],
        "figure_unavailable": None if have_predictions else unavailable,
        "n_runs": len(table),
        "runs_without_physics": without,
    }
    return SectionResult("physics", "", tables={"violations per run": table,
                                                "this run per relation": _relation_rows(physics, panels)},
                         figures=figures, notes=notes, summary=summary)


def _sample_panels(y_pred: np.ndarray, y_true: np.ndarray, X: np.ndarray, target_names: Sequence[str],
                   feature_names: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The physics report recomputed from the test predictions, and a figure panel per relation that applies."""
    recomputed = physics_report(y_pred, y_true, X, target_names=list(target_names), feature_names=list(feature_names))
    names, features = list(target_names), list(feature_names)
    predicted = {name: y_pred[:, j] for j, name in enumerate(names)}
    actual = {name: y_true[:, j] for j, name in enumerate(names)}
    initial = {name: X[:, j] for j, name in enumerate(features)}
    residuals = consistency_residuals(predicted, initial)
    errors = prediction_errors(predicted, actual, initial, residuals)
    panels = []
    for relation in RELATIONS:
        metric = f"{relation}_violation"
        if residuals[relation] is None or errors[relation] is None or recomputed[metric] is None:
            continue
        violation, reference = residuals[relation]
        y = _scaled(np.abs(violation), _rms(reference))
        rho, p = _spearman(errors[relation], y)
        panels.append({"relation": relation, "error": errors[relation], "violation": y,
                       "relative_rms": recomputed[metric], "spearman": rho, "spearman_p": p,
                       "n": int(violation.size)})
    return recomputed, panels


def _runs_table(output_dir: str | os.PathLike, run_id: str, config: Mapping[str, Any],
                test_metrics: Mapping[str, Any],
                recomputed: Mapping[str, Any] | None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Every run's violations with the analysed one marked, the runs left out, and the notes on both.

    ``recomputed``: the analysed run's physics report when it recorded none (its row is added).
    """
    table, without = physics_runs_table(output_dir)
    notes = []
    if recomputed is not None:
        rows = [*table.to_dict("records"), _row(run_id, config, test_metrics, recomputed)]
        table = pd.DataFrame(sorted(rows, key=lambda row: row["run_id"]), columns=table.columns)
        without = [r for r in without if r != run_id]
        notes.append(f"Run {run_id} recorded no physics metrics (it predates them); its row is recomputed from "
                     "the network's test predictions.")
    table.insert(1, "this_run", table["run_id"] == run_id)
    if without:
        shown = ", ".join(without[-5:]) + (f" and {len(without) - 5} more" if len(without) > 5 else "")
        notes.append(f"{len(without)} run(s) without physics metrics in test_metrics.json (older runs, or runs "
                     f"that did not finish) are left out of the table: {shown}.")
    return table, without, notes


def _training_notes(run_id: str, weight: float, terms: list[str] | None, table: pd.DataFrame,
                    not_applicable: Mapping[str, str]) -> list[str]:
    """Whether the analysed run trained with the physics term, and the relations that do not apply to it."""
    if weight > 0:
        notes = [f"Run {run_id} trained with the physics-informed loss term: physics_loss_weight {weight:g}, "
                 f"terms {', '.join(terms or [])} (training_results.csv: physics_loss, val_physics_loss)."]
    else:
        trained = int((table["physics_loss_weight"] > 0).sum())
        notes = [f"Run {run_id} trained without the physics loss term (physics_loss_weight 0); "
                 f"{trained} of the {len(table)} runs in the table used it."]
    notes += [f"{metric}: not applicable ({why}); no panel." for metric, why in not_applicable.items()]
    return notes


def _figure_and_notes(panels: Sequence[dict[str, Any]], out_dir: Path, *, seed: int, n_test: int,
                      have_predictions: bool, unavailable: str | None) -> tuple[list[Path], list[str]]:
    """The per-sample figure (when a panel applies) and how to read it, or why there is none."""
    if not panels:
        if have_predictions:
            return [], ["No figure: no relation applies to this run's targets and inputs."]
        return [], [f"No figure: the network's test predictions are not available ({unavailable})."]
    path, notes = _figure(panels, out_dir, seed=seed)
    notes.append("Figure: one point per test sample; x is its prediction error in the quantities the relation "
                 "involves, y its violation, both relative to the typical size of the quantity (axis labels). "
                 "Spearman ρ near 1: the inconsistent predictions are the wrong ones, so a consistency check "
                 "flags bad predictions without knowing the true values; near 0: inconsistency says nothing "
                 "about the error.")
    if n_test > MAX_POINTS:
        notes.append(f"Each panel shows {MAX_POINTS} of the {n_test} test samples (seeded); ρ uses all of them.")
    return [path], notes


def _mismatch_notes(recorded: Mapping[str, Any] | None, recomputed: Mapping[str, Any] | None) -> list[str]:
    """A note when the recomputed violations differ from the recorded ones by more than 0.1 %."""
    if recorded is None or recomputed is None:
        return []
    differ = [m for m in PHYSICS_METRICS if recorded.get(m) is not None and recomputed.get(m) is not None
              and not math.isclose(recorded[m], recomputed[m], rel_tol=1e-3, abs_tol=1e-9)]
    if not differ:
        return []
    return [f"Recomputed from the network's predictions, {', '.join(differ)} differ(s) from "
            "test_metrics.json by more than 0.1 % (other weights or data than at training time?); "
            "the table and summary show the recorded values, the figure the recomputed ones."]


def _relation_rows(physics: Mapping[str, Any], panels: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The analysed run per relation: its violation, the true data's, and the panel's Spearman ρ."""
    by_panel = {p["relation"]: p for p in panels}
    rows = []
    for relation in RELATIONS:
        metric, panel = f"{relation}_violation", by_panel.get(relation, {})
        rows.append({"relation": relation, "violation": float_or_none(physics.get(metric)),
                     "true_data": float_or_none((physics.get("true_data") or {}).get(metric)),
                     "spearman_rho": panel.get("spearman"), "spearman_p": panel.get("spearman_p"),
                     "n_samples": panel.get("n"),
                     "prediction_error": _AXES[relation][0] if panel else None})
    return pd.DataFrame(rows)
