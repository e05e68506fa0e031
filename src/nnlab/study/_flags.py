"""Cells whose setting did nothing: a constraint that never ran, or runs identical to another cell's.

A compare study whose variant never took effect (James-Stein for 3 epochs with
``constraint_interval`` 5: the constraint never runs) would otherwise report
identical results in every seed without a word. Two kinds of evidence, both
read from what the runs recorded:

* **the constraint never ran**: the run's ``training_results.csv`` has the
  epoch-level constraints' ``constraint/applied`` column (1 on the epochs where
  the chain ran) and it is 0 on every epoch; ``training_config.json`` gives the
  ``constraint_interval`` and ``epochs`` that explain why. A run without that
  column has no epoch-level constraint (none enabled, or only the per-step
  binary limits of ``constraint_schedule = "step"``, which run every step) and
  is never flagged.
* **identical to another cell**: for every seed of the cell, the run's test R²
  and best validation MSE equal, to full precision, those of the same seed in
  an earlier cell (the reference first). Two settings that both took effect
  practically never agree to the last bit on both.

:func:`unit_notes` says it for one finished run (the progress line), :func:`cell_flags`
for a whole study (its summary).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnlab._text import LINE_WIDTH

__all__ = ["APPLIED_COLUMN", "ConstraintRuns", "NOTE_WIDTH", "cell_flags", "constraint_runs", "flag_lines",
           "unit_notes"]

APPLIED_COLUMN = "constraint/applied"
NOTE_WIDTH = LINE_WIDTH  # a progress line's columns
_COMPARED = ("test_r2", "best_val_mse")


@dataclass(frozen=True)
class ConstraintRuns:
    """How often a run's epoch-level constraints ran.

    Attributes:
        applications: epochs on which the chain ran (``constraint/applied`` > 0).
        epochs_run: epochs the run trained.
        interval: its ``constraint_interval`` (None: not recorded).
        epochs: the epochs it was configured for (None: not recorded).
    """

    applications: int
    epochs_run: int
    interval: int | None = None
    epochs: int | None = None

    @property
    def why(self) -> str:
        """Why it never ran, in words: ``constraint_interval 5 > 3 epochs``.

        Example:
            >>> ConstraintRuns(0, 3, interval=5, epochs=3).why
            'constraint_interval 5 > 3 epochs'
        """
        if self.interval is not None and self.interval > self.epochs_run:
            return f"constraint_interval {self.interval} > {self.epochs_run} epochs"
        return f"{self.epochs_run} epochs"


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def constraint_runs(run_dir: str | Path | None) -> ConstraintRuns | None:
    """The run's epoch-level constraint applications, from its files; None when it has no epoch-level
    constraint (no ``constraint/applied`` column) or its files cannot be read."""
    if not run_dir or (isinstance(run_dir, float) and math.isnan(run_dir)):
        return None
    directory = Path(str(run_dir))
    try:
        with open(directory / "training_results.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows or APPLIED_COLUMN not in rows[0]:
        return None
    applied = sum(1 for row in rows if _number(row.get(APPLIED_COLUMN)) > 0)
    try:
        config = json.loads((directory / "training_config.json").read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError):
        config = {}
    interval, epochs = config.get("constraint_interval"), config.get("epochs")
    return ConstraintRuns(applied, len(rows), interval if isinstance(interval, int) else None,
                          epochs if isinstance(epochs, int) else None)


def _fit(template: str, label: str, width: int = NOTE_WIDTH) -> str:
    """``template`` with ``{label}`` filled in, the label shortened (…) so the line fits ``width`` columns."""
    room = width - len(template.replace("{label}", ""))
    if len(label) > room:
        label = label[:max(room - 1, 1)] + "…"
    return template.replace("{label}", label)


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two runs' test metrics are equal to full precision (finite test R², the same best val MSE)."""
    r2_a, r2_b = _number(a.get("test_r2")), _number(b.get("test_r2"))
    if not (math.isfinite(r2_a) and r2_a == r2_b):
        return False
    mse_a, mse_b = _number(a.get("best_val_mse")), _number(b.get("best_val_mse"))
    return mse_a == mse_b or (math.isnan(mse_a) and math.isnan(mse_b))


def unit_notes(study: Any, plan: Any, cell: Mapping[str, Any], seed: int, record: Any) -> list[str]:
    """The notes on one finished run of a study, for its progress output (each <= 120 columns).

    ``note: variant=js seed=0: the constraint never ran in this run (constraint_interval 5 > 3 epochs)``
    and ``note: variant=js seed=0: identical to variant=plain seed=0 (...)`` when an earlier-finished
    run of another cell with this seed has the same test metrics to full precision.
    """
    from nnlab.orchestration import OUTCOME_ATTR
    from nnlab.study._results import is_done

    notes = []
    label = plan.label(cell)
    ran = constraint_runs(getattr(record, "run_dir", "")) if is_done(getattr(record.status, "value", None)) else None
    if ran is not None and ran.applications == 0:
        notes.append(_fit(f"note: {{label}} seed={seed}: the constraint never ran in this run ({ran.why})",
                          label))
    metrics = getattr(record, "metrics", None) or {}
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        other = plan.cell_of(attrs.get("cell")) if attrs.get("cell") != cell["id"] else None
        if (other is not None and attrs.get("seed") == seed and trial.state.is_finished()
                and is_done(attrs.get(OUTCOME_ATTR)) and _same(metrics, attrs.get("metrics") or {})):
            other_label = plan.label(other)
            notes.append(_fit(f"note: {{label}} seed={seed}: identical to {other_label[:40]} seed={seed} "
                              "(same test R² and val MSE to full precision)", label))
            break
    return notes


def _constraint_flag(label: str, runs: Sequence[tuple[int, str, ConstraintRuns]]) -> dict[str, Any] | None:
    """The flag of a cell whose epoch-level constraint never ran in some or all of its runs."""
    never = [(seed, run_id, ran) for seed, run_id, ran in runs if ran.applications == 0]
    if not never:
        return None
    whys = sorted({ran.why for _, _, ran in never})
    how = f"in any of its {len(runs)} runs" if len(never) == len(runs) else f"in {len(never)} of its {len(runs)} runs"
    return {"flag": "constraint_never_ran", "label": label, "why": "; ".join(whys), "n_never": len(never),
            "message": f"{label}: the constraint never ran {how} ({'; '.join(whys)}): the cell trained as if it had "
                       "no epoch-level constraint",
            "runs": [{"seed": seed, "run_id": run_id, "constraint_applications": ran.applications,
                      "epochs_run": ran.epochs_run, "constraint_interval": ran.interval}
                     for seed, run_id, ran in runs]}


def _identical_flag(label: str, seeds: Mapping[int, Mapping[str, Any]],
                    earlier: Sequence[tuple[str, Mapping[int, Mapping[str, Any]]]]) -> dict[str, Any] | None:
    """The flag of a cell whose runs equal an earlier cell's in every one of its seeds."""
    if not seeds:
        return None
    for other_label, other in earlier:
        if set(seeds) <= set(other) and all(_same(seeds[s], other[s]) for s in seeds):
            return {"flag": "identical_to", "label": label, "duplicates": other_label, "seeds": sorted(seeds),
                    "message": f"{label}: identical to {other_label} in every seed ({len(seeds)} of {len(seeds)}: "
                               "the same test R² and best validation MSE to full precision): its setting made no "
                               "difference"}
    return None


def cell_flags(done: Any, cells: Sequence[tuple], cell_of_row: Callable[[Any], tuple], label: Callable[[tuple], str]
               ) -> dict[tuple, list[dict[str, Any]]]:
    """The flags of each cell of a study, from its counted runs.

    Args:
        done: the counted runs (a DataFrame: ``seed``, ``test_r2``, ``best_val_mse``, and ``run_dir``,
            ``run_id`` when the table has them), one per (cell, seed).
        cells: the cells in order, the reference first: a cell is compared with the cells before it.
        cell_of_row: a row's cell.
        label: a cell's label in messages.

    Returns:
        Per cell, its flags (``flag``, ``message`` and the evidence); cells without a flag are left out.
    """
    by_cell: dict[tuple, dict[int, dict[str, Any]]] = {cell: {} for cell in cells}
    for row in done.to_dict("records"):
        seed = _number(row.get("seed"))
        if math.isfinite(seed) and cell_of_row(row) in by_cell:
            by_cell[cell_of_row(row)][int(seed)] = row
    flags: dict[tuple, list[dict[str, Any]]] = {}
    for i, cell in enumerate(cells):
        seeds = by_cell[cell]
        runs = [(seed, str(row.get("run_id") or ""), ran) for seed, row in sorted(seeds.items())
                if (ran := constraint_runs(row.get("run_dir"))) is not None]
        found = [_constraint_flag(label(cell), runs) if runs else None,
                 _identical_flag(label(cell), {s: r for s, r in seeds.items() if _same(r, r)},
                                 [(label(c), by_cell[c]) for c in cells[:i]])]
        if any(found):
            flags[cell] = [f for f in found if f]
    return flags


def flag_lines(flags: Sequence[Mapping[str, Any]]) -> list[str]:
    """The summary's flags as console lines, each <= 120 columns (the whole sentences are in the findings).

    Example:
        >>> flag_lines([{"flag": "identical_to", "label": "js", "duplicates": "plain", "seeds": [0, 1]}])
        ["note: cell 'js' is identical to cell 'plain' in every seed (2 of 2): its setting made no difference"]
    """
    lines = []
    for flag in flags:
        if flag.get("flag") == "constraint_never_ran":
            n = len(flag.get("runs") or [])
            how = f"in any of its {n} runs" if flag.get("n_never") == n else f"in {flag.get('n_never')} of its {n} runs"
            lines.append(_fit(f"note: cell '{{label}}': the constraint never ran {how} ({flag.get('why')})",
                              str(flag.get("label"))))
        elif flag.get("flag") == "identical_to":
            n = len(flag.get("seeds") or [])
            lines.append(_fit(f"note: cell '{{label}}' is identical to cell '{str(flag.get('duplicates'))[:40]}' in "
                              f"every seed ({n} of {n}): its setting made no difference", str(flag.get("label"))))
    return lines
