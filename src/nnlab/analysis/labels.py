"""Names and units for what the analysis reports: target units, headline rows, the confidence rule.

The particle simulation is in consistent SI units (mass kg, charge C, field T, time s), so its
targets are in m, m/s and J. A user's table has no recorded units: its targets keep their plain
column names. Nothing here imports matplotlib or TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nnlab.data import TARGET_UNITS  # the particle task's targets in the simulation's SI units

__all__ = ["TARGET_UNITS", "target_unit", "with_unit", "headline_rows", "CONFIDENCE_HIGH_P",
           "CONFIDENCE_MEDIUM_P", "CONFIDENCE_MIN_N", "CONFIDENCE_RULE", "confidence_from_p", "unit_names"]


CONFIDENCE_HIGH_P = 0.01
CONFIDENCE_MEDIUM_P = 0.05
CONFIDENCE_MIN_N = 5
CONFIDENCE_RULE = (f"confidence from the p-value: High if p < {CONFIDENCE_HIGH_P} with n ≥ {CONFIDENCE_MIN_N}, "
                   f"Medium if p < {CONFIDENCE_MEDIUM_P}, Low otherwise (no test: Low)")


def confidence_from_p(p: float | None, n: int | None = None) -> str:
    """The label :data:`CONFIDENCE_RULE` states: High, Medium or Low from a p-value (and its n)."""
    if p is None or not math.isfinite(float(p)):
        return "Low"
    if p < CONFIDENCE_HIGH_P and (n is None or n >= CONFIDENCE_MIN_N):
        return "High"
    return "Medium" if p < CONFIDENCE_MEDIUM_P else "Low"


def target_unit(name: str, *, table: bool = False) -> str | None:
    """The unit of a particle target; None for a table's target (a table records no units)."""
    return None if table else TARGET_UNITS.get(str(name))


def with_unit(name: str, unit: str | None) -> str:
    """``"name (unit)"``, or the plain name without a unit."""
    return f"{name} ({unit})" if unit else str(name)


def _num(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def headline_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The report's headline: ``(what, value)`` with names and units; never a unit-mixing average.

    Per target the test-set MAE in that target's unit; R² (unitless) labelled with what it was
    computed on; the loss labelled as the training loss on standardised targets.
    """
    epoch = summary.get("best_r2_epoch")
    rows = [
        ("best validation loss (training loss on standardised targets, unitless)",
         _num(summary.get("best_validation_loss"))),
        ("best validation R²" + (f" (epoch {epoch})" if epoch is not None else ""), _num(summary.get("best_r2_score"))),
        ("test R² (standardised targets, mean over targets)", _num(summary.get("test_r2"))),
        ("epochs trained", _num(summary.get("total_training_epochs"), "d")),
    ]
    table = summary.get("task") == "table"
    per_target = summary.get("prediction_mae_per_target") or {}
    source = summary.get("prediction_mae_source")
    for name, mae in per_target.items():
        unit = target_unit(name, table=table)
        rows.append((f"test MAE of {name}" + (f" ({unit})" if unit else ""),
                     _num(mae) + (f" {unit}" if unit and mae is not None else "")))
    if per_target and source:
        rows.append(("MAE computed from", str(source)))
    return rows


def unit_names(names: Sequence[str], *, table: bool) -> list[str]:
    """Each target name with its unit (plain names for a table)."""
    return [with_unit(n, target_unit(n, table=table)) for n in names]
