"""The human-readable end-of-run summary."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np

from nnlab._text import LINE_WIDTH


WIDTH = LINE_WIDTH
"""The widest summary line: longer ones wrap (a path longer than that stays whole)."""
_INDENT = " " * 23  # the value column


def _fit(line: str) -> list[str]:
    """``line`` within :data:`WIDTH` columns; a hint in parentheses goes to its own line first.

    Example:
        >>> _fit("  tensorboard          " + "d" * 90 + " (tensorboard --logdir runs)")[1]
        '                       (tensorboard --logdir runs)'
    """
    if len(line) <= WIDTH:
        return [line]
    head, sep, tail = line.partition(" (")
    for indent in (_INDENT, "    "):  # under the values, or further left for a long path
        wrap = dict(width=WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)
        if sep and head.strip() and len(head) <= WIDTH:
            lines = [head] + textwrap.wrap("(" + tail, initial_indent=indent, **wrap)
        else:
            lines = textwrap.wrap(line, **wrap)
        if all(len(part) <= WIDTH for part in lines):
            return lines
    return [line]  # a path longer than that: whole, on its label's line


def _fmt(value: Any, spec: str = ".4f") -> str:
    # None/NaN: not measured, or unavailable (R² of fewer than two rows) -- never 0.0000.
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def format_summary(results: Mapping[str, Any]) -> str:
    """The end-of-run summary printed by ``python main.py`` and kept in training_log.txt; lines fit 120 columns."""
    s = results["performance_summary"]
    lines = [
        f"run {s['run_id']}: {s['status']}",
        f"  epochs run           {s['total_epochs']}",
        f"  final val R²         {_fmt(s['current_r2'])}",
        f"  best val R²          {_fmt(s['best_r2'])} (epoch {_fmt(s['best_epoch'], 'd')})",
        f"  largest R² gain      {_fmt(s['greatest_r2_improvement'])} "
        f"(epoch {_fmt(s['greatest_r2_improvement_epoch'], 'd')})",
        f"  avg epoch time       {_fmt(s['avg_epoch_time'], '.3f')} s "
        f"(training {_fmt(s['total_training_time'], '.1f')} s, run {_fmt(s['total_time_s'], '.1f')} s)",
        f"  memory               {_fmt(s['current_memory_mb'], '.0f')} MiB now, "
        f"peak {_fmt(s['peak_memory_mb'], '.0f')} MiB",
        f"  test MSE / MAE / R²  {_fmt(s.get('test_mse'))} / {_fmt(s.get('test_mae'))} / "
        f"{_fmt(s.get('test_r2'))} (scaled)",
        f"  inference            {_fmt(s['inference_time_s'] * 1e3 if s.get('inference_time_s') else None, '.1f')}"
        f" ms for the test set ({_fmt(s.get('samples_per_second'), ',.0f')} samples/s)",
        f"  constraints          {', '.join(s['weight_modifications']) or 'none'} "
        f"(applied {s['constraint_applications']}x)",
        f"  loss strategy        {s['loss_weighting_strategy']}{_physics_term(s.get('physics_loss'))}",
        f"  errors               {s['error_count']}",
    ]
    if s.get("resumed_from_epoch") is not None:
        lines.insert(1, f"  resumed from epoch   {s['resumed_from_epoch']}")
    test = results.get("test") or {}
    if test.get("n_samples") is not None and test["n_samples"] < 2:
        lines.append(f"  (R² needs at least 2 rows; the test set has {test['n_samples']}: unavailable)")
    per_target = (results.get("test") or {}).get("per_target_physical")
    if per_target:
        lines.append("  test per target (physical units): R² / RMSE")
        lines += [f"    {name:<20} {_fmt(m['r2'])} / {_fmt(m['rmse'], '.4g')}" for name, m in per_target.items()]
    lines += _physics_lines(test.get("physics"))
    for entry in results.get("error_summary", {}).get("errors", []):
        lines.append(f"  ! {entry['component']}: {entry['message']}")
    if results.get("failure"):
        lines.append(f"  stopped              {results['failure']}")
    lines.append(f"  artifacts            {s['run_dir']}")
    for name, where in (results.get("tracking") or {}).items():
        lines.append(f"  {name:<20} {where}")
    return "\n".join(part for line in lines for piece in line.split("\n") for part in _fit(piece)) + "\n"


def _physics_term(term: Mapping[str, Any] | None) -> str:
    if not term:
        return ""
    return f" + physics term {term['weight']:g} x ({', '.join(term['terms'])})"


def _physics_lines(physics: Mapping[str, Any] | None) -> list[str]:
    """The test set's consistency metrics (and the true data's, the simulation's self-check)."""
    if not physics:
        return []
    if physics.get("applicable") is False:
        return [f"  physics consistency  not applicable: {physics.get('reason', '')}"]
    from nnlab.physics import PHYSICS_METRICS

    true = physics.get("true_data") or {}
    lines = ["  physics consistency  relative RMS violation on the test set: predictions (true data)"]
    for metric in PHYSICS_METRICS:
        value = physics.get(metric)
        shown = (f"{_fmt(value, '.4g')} ({_fmt(true.get(metric), '.1g')})" if value is not None
                 else f"n/a: {physics.get('not_applicable', {}).get(metric, 'not applicable')}")
        lines.append(f"    {metric.removesuffix('_violation'):<20} {shown}")
    return lines
