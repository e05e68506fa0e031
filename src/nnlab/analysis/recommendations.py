"""Section 8: hyperparameter recommendations backed by a test, a fit or the history.

Every rule returns rows with the same keys (:data:`COLUMNS`); status ✓ means
"keep", ⚠ "worth changing", ✗ "a problem to fix".

Example:
    >>> rows = recommend(results, config)  # doctest: +SKIP
    >>> [r["status"] for r in rows if r["rule"] == "overfitting"]  # doctest: +SKIP
    ['✗']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab.analysis.artifacts import hidden_layers_of
from nnlab.analysis.base import SectionResult, SectionSkipped
from nnlab.analysis.heatmap import UNFINISHED
from nnlab.analysis.labels import (CONFIDENCE_HIGH_P, CONFIDENCE_MEDIUM_P, CONFIDENCE_MIN_N, CONFIDENCE_RULE,
                                   confidence_from_p)
from nnlab.analysis.significance import spearman
from nnlab.runs import RunStatus
from nnlab.stats import fit_exponential_decay, one_sample_ttest

__all__ = ["COLUMNS", "recommend", "learning_rate_rule", "overfitting_rule", "batch_size_rule",
           "convergence_rule", "historical_best_rules", "recommendations_section", "memory_status"]

COLUMNS = ("rule", "parameter", "current_value", "suggestion", "confidence", "confidence_basis", "evidence", "test", "statistic",
           "p_value", "correlation", "expected_impact", "priority", "status")
OK, WARN, BAD = "✓", "⚠", "✗"
ALPHA = 0.05
OVERFIT_MIN_RELATIVE_GAP = 0.10  # mean gap must also be >= 10% of the validation loss to matter
PLATEAU_MIN_IMPROVEMENT = 0.01   # < 1% better over the last window = plateau
CONVERGED_REMAINING = 0.05       # < 5% improvement left in the fitted trend = converged
_COMPARED_KEYS = ("learning_rate", "batch_size", "dropout_rate", "l2_regularization", "hidden_layers",
                  "activation", "optimizer", "loss_weighting_strategy")


def _row(rule: str, parameter: str, current: Any, suggestion: Any, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(rule=rule, parameter=parameter, current_value=current, suggestion=suggestion, **fields)
    return row


def _series(results: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(results[name], errors="coerce").to_numpy(float) if name in results else np.zeros(0)


def _confidence(p: float | None, n: int | None = None) -> dict[str, str]:
    """``confidence`` and ``confidence_basis`` from a p-value by :data:`~nnlab.analysis.labels.CONFIDENCE_RULE`."""
    label = confidence_from_p(p, n)
    if p is None or not np.isfinite(p):
        return {"confidence": label, "confidence_basis": "no p-value: Low"}
    if label == "High":
        why = f"p = {p:.3g} < {CONFIDENCE_HIGH_P} with n = {n} ≥ {CONFIDENCE_MIN_N}"
    elif label == "Medium":
        why = f"p = {p:.3g} < {CONFIDENCE_MEDIUM_P}" + (
            f" (not High: {'p ≥ ' + str(CONFIDENCE_HIGH_P) if p >= CONFIDENCE_HIGH_P else f'n = {n} < {CONFIDENCE_MIN_N}'})")
    else:
        why = f"p = {p:.3g} ≥ {CONFIDENCE_MEDIUM_P}"
    return {"confidence": label, "confidence_basis": f"{why} → {label}"}


def learning_rate_rule(results: pd.DataFrame, config: Mapping[str, Any],
                       history: pd.DataFrame | None = None) -> dict[str, Any]:
    """Plateau of the validation loss and the LR-R² correlation over the run history."""
    lr_now = config.get("learning_rate")
    val = _series(results, "val_loss")
    lr_curve = _series(results, "learning_rate")
    reductions = int(np.sum(np.diff(lr_curve[np.isfinite(lr_curve)]) < 0)) if lr_curve.size > 1 else 0
    w = max(3, min(10, len(val) // 4))
    plateau, improvement = False, math.nan
    if len(val) >= 2 * w and np.isfinite(val).any():
        before, recent = np.nanmin(val[:-w]), np.nanmin(val[-w:])
        improvement = (before - recent) / abs(before) if before else math.nan
        plateau = bool(np.isfinite(improvement) and improvement < PLATEAU_MIN_IMPROVEMENT)
    corr, too_small = None, None
    if history is not None and not history.empty and "learning_rate" in history:
        metric = "best_val_r2" if "best_val_r2" in history and history["best_val_r2"].notna().sum() >= 3 \
            else "final_val_r2"
        if metric in history:
            h = history[["learning_rate", metric]].apply(pd.to_numeric, errors="coerce").dropna()
            h = h[h["learning_rate"] > 0]
            found = spearman(np.log10(h["learning_rate"]), h[metric]) if len(h) >= 3 else None
            if found is not None and found["rho"] is not None:
                best_lr = float(h.loc[h[metric].idxmax(), "learning_rate"])
                corr = {"rho": found["rho"], "p": found["p_value"], "n": found["n"], "metric": metric,
                        "best_lr": best_lr, "method": found["method"]}
            elif found is not None:
                too_small = found["reason"]
    if not np.isfinite(improvement):
        plateau_text = "too few epochs for plateau detection"
    elif improvement > 0:
        plateau_text = f"the last {w} epochs improved the best validation loss by {improvement:.2%}"
    else:
        plateau_text = f"the last {w} epochs did not improve on the earlier best validation loss ({improvement:.2%})"
    evidence = f"{plateau_text}; learning rate reduced {reductions}x during the run"
    if corr is not None:
        evidence = (f"Spearman ρ(log10 LR, {corr['metric']}) = {corr['rho']:.2f}, p = {corr['p']:.3g} "
                    f"({corr['method']}), n = {corr['n']} runs; " + evidence)
    elif too_small is not None:
        evidence = f"learning rate vs R² over the history: {too_small}; " + evidence
    common = {"test": "Spearman correlation" if corr else "plateau detection",
              "statistic": corr["rho"] if corr else improvement, "p_value": corr["p"] if corr else None,
              "correlation": corr["rho"] if corr else None, "evidence": evidence}
    if corr is not None and corr["p"] < ALPHA and lr_now:
        lower = corr["rho"] < 0  # negative ρ: runs with smaller learning rates scored higher
        towards_best = corr["best_lr"] != lr_now and (corr["best_lr"] < lr_now) == lower
        wanted = corr["best_lr"] if towards_best else lr_now * (0.5 if lower else 2.0)
        return _row("learning_rate", "learning_rate", lr_now, float(wanted), **_confidence(corr["p"], corr["n"]),
                    expected_impact=f"higher {corr['metric']} (runs with {'lower' if lower else 'higher'} "
                                    "learning rates scored better)", priority="High", status=WARN, **common)
    if plateau and reductions == 0:
        return _row("learning_rate", "learning_rate", lr_now, float(lr_now) * 0.5 if lr_now else None,
                    confidence="Low", confidence_basis="plateau heuristic (< 1% improvement), no test: Low",
                    expected_impact="lower validation loss after the plateau "
                    "(or set reduce_lr_on_plateau=true)", priority="Medium", status=WARN, **common)
    return _row("learning_rate", "learning_rate", lr_now, lr_now, **_confidence(corr["p"] if corr else None,
                                                                               corr["n"] if corr else None),
                expected_impact="none expected", priority="Low", status=OK, **common)


def overfitting_rule(results: pd.DataFrame, config: Mapping[str, Any], *, last: int | None = None) -> dict[str, Any]:
    """One-sided one-sample t-test: is validation − train loss > 0 over the last epochs?"""
    train, val = _series(results, "train_loss"), _series(results, "val_loss")
    n = len(val)
    k = last or min(10, max(3, n // 5))
    gap = (val - train)[-k:]
    test = one_sample_ttest(gap, 0.0, alternative="greater")
    recent_val = float(np.nanmean(val[-k:])) if n else math.nan
    relative = test["mean"] / recent_val if recent_val and np.isfinite(recent_val) else math.nan
    dropout = float(config.get("dropout_rate", 0.0) or 0.0)
    p = test["p_value"]
    significant = bool(np.isfinite(p) and p < ALPHA)
    material = bool(np.isfinite(relative) and relative >= OVERFIT_MIN_RELATIVE_GAP)
    evidence = (f"one-sided one-sample t-test of validation − train loss over the last {test['n']} epochs: "
                f"mean gap {test['mean']:.4g} ({relative:.1%} of the validation loss), "
                f"t = {test['statistic']:.3g}, p = {p:.3g}; overfitting = p < {ALPHA} AND gap ≥ "
                f"{OVERFIT_MIN_RELATIVE_GAP:.0%} of the validation loss")
    common = {"test": "one-sample t-test (greater)", "statistic": test["statistic"], "p_value": p,
              "evidence": evidence, **_confidence(p, test["n"])}
    verdict = _overfitting_verdict(p, relative, significant, material)
    if significant and material:
        suggestion = round(min(0.5, dropout + 0.1), 3)
        l2 = float(config.get("l2_regularization", 0.0) or 0.0)
        extra = "" if l2 > 0 else ", l2_regularization=1e-4"
        return _row("overfitting", "dropout_rate", dropout, f"{suggestion}{extra} (or early_stopping_patience)",
                    expected_impact=f"smaller generalisation gap; {verdict}", priority="High", status=BAD, **common)
    return _row("overfitting", "dropout_rate", dropout, dropout, expected_impact=f"none: {verdict}",
                priority="Low", status=OK, **common)


def _overfitting_verdict(p: float, relative: float, significant: bool, material: bool) -> str:
    """The overfitting verdict with both thresholds that decide it, never contradicting the p-value."""
    gap = f"gap {relative:.1%} of the validation loss"
    threshold = f"{OVERFIT_MIN_RELATIVE_GAP:.0%} threshold"
    if not np.isfinite(p):
        return f"no test possible (too few epochs or a constant gap); {gap}"
    if significant and material:
        return f"overfitting: {gap} ≥ {threshold} and significant (p = {p:.3g} < {ALPHA})"
    if significant:
        return f"{gap} < {threshold}: not material, though significant (p = {p:.3g} < {ALPHA})"
    if material:
        return f"{gap} ≥ {threshold} but not significant (p = {p:.3g} ≥ {ALPHA}): no evidence of overfitting"
    return f"no significant overfitting (p = {p:.3g} ≥ {ALPHA}); {gap} < {threshold}"


def memory_status() -> dict[str, float]:
    """Total and available system memory in MiB (psutil)."""
    import psutil

    vm = psutil.virtual_memory()
    return {"total_mb": vm.total / 2**20, "available_mb": vm.available / 2**20}


def batch_size_rule(results: pd.DataFrame, config: Mapping[str, Any], *, n_train: int | None = None,
                    memory: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Memory headroom (psutil) and epoch time: can the batch grow, or must it shrink?"""
    memory = memory or memory_status()
    bs = int(config.get("batch_size", 0) or 0)
    peak = float(np.nanmax(_series(results, "memory_mb"))) if "memory_mb" in results else math.nan
    epoch_time = float(np.nanmedian(_series(results, "epoch_time"))) if "epoch_time" in results else math.nan
    steps = math.ceil(n_train / bs) if n_train and bs else None
    headroom = memory["available_mb"] / peak if peak and np.isfinite(peak) else math.nan
    evidence = (f"peak process memory {peak:.0f} MiB, {memory['available_mb']:.0f} of {memory['total_mb']:.0f} MiB "
                f"available now ({headroom:.1f}x the peak); median epoch {epoch_time:.3g} s"
                + (f"; {steps} steps per epoch" if steps else ""))
    common = {"test": "memory headroom (psutil) and epoch time", "statistic": headroom, "evidence": evidence}
    if np.isfinite(peak) and peak > 0.8 * memory["total_mb"]:
        return _row("batch_size", "batch_size", bs, max(1, bs // 2), confidence="High",
                    confidence_basis="measured: peak memory > 80% of the total memory → High",
                    expected_impact="avoids running out of memory", priority="High", status=BAD, **common)
    if steps is not None and steps < 10 and bs > 16:
        return _row("batch_size", "batch_size", bs, max(16, bs // 2), confidence="Low",
                    confidence_basis="heuristic (< 10 steps per epoch), no test: Low",
                    expected_impact="more optimizer steps per epoch (often faster convergence per epoch)",
                    priority="Low", status=WARN, **common)
    if np.isfinite(headroom) and headroom > 4 and epoch_time > 1.0:
        return _row("batch_size", "batch_size", bs, bs * 2, confidence="Low",
                    confidence_basis="heuristic (memory headroom > 4x, epoch > 1 s), no test: Low",
                    expected_impact="shorter epochs (scale learning_rate by about √2 with it)",
                    priority="Low", status=WARN, **common)
    return _row("batch_size", "batch_size", bs, bs, confidence="Medium",
                confidence_basis="measured memory and epoch time within the limits above → Medium",
                expected_impact="none expected",
                priority="Low", status=OK, **common)


def convergence_rule(results: pd.DataFrame, config: Mapping[str, Any]) -> dict[str, Any]:
    """Fit an exponential decay to the validation-loss tail; how much improvement is left?"""
    epochs_now = int(config.get("epochs", 0) or len(results))
    epoch, val = _series(results, "epoch"), _series(results, "val_loss")
    start = len(val) // 2
    fit = fit_exponential_decay(epoch[start:], val[start:], floor=0.0) if len(val) >= 8 else None
    common = {"test": "exponential decay fit a·exp(−b·t) + c", "p_value": None}
    if fit is None:
        return _row("convergence", "epochs", epochs_now, epochs_now, confidence="Low", confidence_basis="no fit: Low",
                    evidence="no decaying trend in the second half of the validation loss (flat, too short, "
                             "or the fit did not converge)", statistic=None, expected_impact="none expected",
                    priority="Low", status=OK, **common)
    evidence = (f"fit to epochs {int(epoch[start])}–{int(epoch[-1])}: asymptote {fit['c']:.4g}, "
                f"rate {fit['b']:.3g}/epoch, fit R² {fit['r2']:.2f}; extrapolated remaining improvement "
                f"{fit['remaining_fraction']:.1%}")
    confidence = "High" if fit["r2"] >= 0.9 else "Medium" if fit["r2"] >= 0.7 else "Low"
    if fit["e_foldings"] < 1.0 and confidence != "Low":
        confidence = "Medium" if confidence == "High" else "Low"  # little curvature: asymptote poorly pinned
    common["confidence_basis"] = (f"fit R² {fit['r2']:.2f} (High ≥ 0.9, Medium ≥ 0.7, else Low; one step lower "
                                  f"under 1 e-folding: {fit['e_foldings']:.2f}) → {confidence}")
    if fit["remaining_fraction"] > CONVERGED_REMAINING and fit["b"] > 0:
        extra = math.ceil(math.log(fit["remaining"] / (0.01 * abs(fit["last_fit"]))) / fit["b"])
        suggestion = epochs_now + min(max(extra, 1), 3 * max(epochs_now, 1))
        return _row("convergence", "epochs", epochs_now, suggestion, confidence=confidence, evidence=evidence,
                    statistic=fit["remaining_fraction"],
                    expected_impact=f"validation loss about {fit['remaining_fraction']:.0%} lower if the trend holds",
                    priority="Medium", status=WARN, **common)
    return _row("convergence", "epochs", epochs_now, epochs_now, confidence=confidence, evidence=evidence,
                statistic=fit["remaining_fraction"], expected_impact="little: the loss has converged",
                priority="Low", status=OK, **common)


def _same(a: Any, b: Any) -> bool:
    la, lb = hidden_layers_of(a), hidden_layers_of(b)
    if la is not None or lb is not None:
        return la == lb
    try:
        return bool(np.isclose(float(a), float(b)))
    except (TypeError, ValueError):
        return str(a) == str(b)


def _candidates(history: pd.DataFrame | None, hpo: pd.DataFrame | None) -> list[dict[str, Any]]:
    found = []
    seen: set[str] = set()
    if history is not None and not history.empty and "test_r2" in history:
        for row in history.to_dict("records"):
            if RunStatus.parse(row.get("status")) in UNFINISHED:
                continue
            if np.isfinite(row.get("test_r2", np.nan)):
                seen.add(str(row["run_id"]))
                found.append({"source": f"run {row['run_id']}", "run_id": str(row["run_id"]),
                              "test_r2": float(row["test_r2"]),
                              "params": {k: row[k] for k in _COMPARED_KEYS if row.get(k) is not None
                                         and not (isinstance(row[k], float) and math.isnan(row[k]))}})
    if hpo is not None and not hpo.empty and "test_r2" in hpo:
        for row in hpo.to_dict("records"):
            state = str(row.get("state", "COMPLETE"))
            if state.upper() != "COMPLETE" or not np.isfinite(row.get("test_r2", np.nan)):
                continue
            if str(row.get("run_id")) in seen:
                continue
            found.append({"source": f"HPO trial {row.get('trial_number')}", "run_id": str(row.get("run_id")),
                          "test_r2": float(row["test_r2"]),
                          "params": {k: row[k] for k in _COMPARED_KEYS if k in row and not
                                     (isinstance(row[k], float) and math.isnan(row[k]))}})
    return found


def historical_best_rules(config: Mapping[str, Any], run_id: str, current_r2: float | None,
                          history: pd.DataFrame | None = None, hpo: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """The settings of the best run or HPO trial by test R², where they differ from this run."""
    found = _candidates(history, hpo)
    if not found:
        return [_row("historical_best", "(all)", None, None, confidence="Low", test="historical comparison",
                     confidence_basis="nothing to compare: Low",
                     evidence="no run or HPO trial with a test R² to compare with", expected_impact="none",
                     priority="Low", status=OK)]
    best = max(found, key=lambda c: c["test_r2"])
    own = current_r2 if current_r2 is not None and np.isfinite(current_r2) else math.nan
    delta = best["test_r2"] - own if np.isfinite(own) else math.nan
    evidence = (f"best of {len(found)} runs/trials by test R²: {best['source']} {best['test_r2']:.4f} vs this run "
                f"{own:.4f}")
    if best["run_id"] == run_id or (np.isfinite(delta) and delta <= 1e-3):
        return [_row("historical_best", "(all)", "current settings", "keep", confidence="Medium",
                     confidence_basis="this run is the best (within 0.001) → Medium", test="historical comparison", statistic=delta, evidence=evidence,
                     expected_impact="none: this run is (within 0.001 R² of) the best", priority="Low", status=OK)]
    confidence = "High" if len(found) >= 10 and delta >= 0.01 else "Medium" if len(found) >= 3 else "Low"
    rows = [
        _row("historical_best", key, config.get(key), value, confidence=confidence, test="historical comparison",
             confidence_basis=f"{len(found)} runs/trials, Δ {delta:+.4f} (High: ≥ 10 and Δ ≥ 0.01; Medium: ≥ 3; "
                              f"else Low) → {confidence}",
             statistic=delta, evidence=evidence + f" (Δ {delta:+.4f})",
             expected_impact=f"up to {delta:+.4f} test R² (the best run's whole setting)",
             priority="High" if delta >= 0.05 else "Medium", status=WARN)
        for key, value in best["params"].items() if key in config and not _same(config.get(key), value)
    ]
    return rows or [_row("historical_best", "(all)", "current settings", "keep", confidence="Low",
                         confidence_basis="the better run has the same settings: Low", test="historical comparison", statistic=delta,
                         evidence=evidence + "; the better run has the same settings (seed or data differ)",
                         expected_impact="none from settings", priority="Low", status=OK)]


def recommend(results: pd.DataFrame, config: Mapping[str, Any], *, run_id: str = "",
              history: pd.DataFrame | None = None, hpo: pd.DataFrame | None = None,
              current_r2: float | None = None, n_train: int | None = None,
              memory: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """All rules for one run; one dict per recommendation, keys :data:`COLUMNS`."""
    if results.empty or not {"train_loss", "val_loss"} <= set(results.columns):
        raise SectionSkipped("training_results.csv is missing or lacks train_loss/val_loss")
    return [
        learning_rate_rule(results, config, history),
        overfitting_rule(results, config),
        batch_size_rule(results, config, n_train=n_train, memory=memory),
        convergence_rule(results, config),
        *historical_best_rules(config, run_id, current_r2, history, hpo),
    ]


def recommendations_section(results: pd.DataFrame, config: Mapping[str, Any], out_dir: Path, **kwargs: Any) -> SectionResult:
    """Section 8: the recommendations table (see :func:`recommend` for the arguments)."""
    rows = recommend(results, config, **kwargs)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    notes = ["Status ✓ keep, ⚠ worth changing, ✗ a problem to fix.",
             f"Confidence: a row with a test takes its {CONFIDENCE_RULE}; a row without one states its own "
             "rule. Column confidence_basis gives the value and the threshold that set each label.",
             f"Overfitting is declared only when the one-sided t-test gives p < {ALPHA} AND the mean gap is at "
             f"least {OVERFIT_MIN_RELATIVE_GAP:.0%} of the validation loss; the verdict names both.",
             "Historical suggestions copy the best run's setting; runs differ in several settings at once, "
             "so change one at a time and compare."]
    return SectionResult("recommendations", "", tables={"recommendations": table}, summary={"rows": rows},
                         notes=notes)
