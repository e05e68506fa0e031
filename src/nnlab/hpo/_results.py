"""What a search writes: ``hpo_results.csv``, ``best_config.json``, ``hpo_study.json``.

All three are rebuilt from the study itself (so rows written by other workers
are never lost) under a file lock, and each is replaced atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnlab._files import atomic_write_json, locked, write_csv_rows
from nnlab.config import read_json_object
from nnlab.errors import ConfigError
from nnlab.hpo._study import OUTCOME_ATTR, counts_towards_budget

__all__ = [
    "RESULT_COLUMNS",
    "ResultPaths",
    "result_rows",
    "best_trial",
    "write_results",
    "check_results_owner",
    "format_progress",
    "format_best",
]

RESULT_COLUMNS = (
    "trial_number", "preset", "state", "overrides", "test_mse", "test_mae", "test_rmse", "test_r2",
    "best_r2", "final_r2", "avg_epoch_time", "total_epochs", "duration_s", "run_id", "error",
)
METRIC_COLUMNS = RESULT_COLUMNS[4:12]


class ResultPaths:
    """The results CSV and the two JSON files written next to it.

    Args:
        results: the CSV (``--output``).
    """

    def __init__(self, results: str | Path) -> None:
        self.results = Path(results)
        self.best_config = self.results.parent / "best_config.json"
        self.study_file = self.results.parent / "hpo_study.json"


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def _finished(study: Any) -> list[Any]:
    return sorted((t for t in study.get_trials(deepcopy=False)
                   if t.state.is_finished() and counts_towards_budget(t)), key=lambda t: t.number)


def trial_row(trial: Any) -> dict[str, Any]:
    """One results row from a finished trial's recorded attributes."""
    attrs = trial.user_attrs
    metrics = attrs.get("metrics", {})
    row = {
        "trial_number": trial.number,
        "preset": attrs.get("preset", ""),
        "state": attrs.get(OUTCOME_ATTR, ""),
        "overrides": json.dumps(attrs.get("overrides", {})),
        "duration_s": _cell(attrs.get("duration_s")),
        "run_id": attrs.get("run_id", ""),
        "error": attrs.get("error", ""),
    }
    row.update({column: _cell(metrics.get(column)) for column in METRIC_COLUMNS})
    return row


def result_rows(study: Any) -> list[dict[str, Any]]:
    """One row per finished trial (interrupted trials excluded), by trial number."""
    return [trial_row(t) for t in _finished(study)]


def best_trial(study: Any) -> Any | None:
    """The completed trial with the highest validation R², or None."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _best_summary(best: Any) -> dict[str, Any]:
    attrs = best.user_attrs
    return {
        "number": best.number, "preset": attrs.get("preset"), "best_val_r2": best.value,
        "overrides": attrs.get("overrides", {}), "metrics": attrs.get("metrics", {}),
        "run_id": attrs.get("run_id"), "run_dir": attrs.get("run_dir"),
    }


def write_results(study: Any, paths: ResultPaths, *, storage_label: str) -> Any | None:
    """Rewrite the CSV, ``best_config.json`` and ``hpo_study.json`` from the study.

    ``best_config.json`` holds only configuration keys (the best trial's whole
    resolved configuration), so ``python main.py --config best_config.json``
    retrains it; the trial's metadata goes to ``hpo_study.json``.

    Returns:
        The best trial, or None if no trial has completed.
    """
    paths.results.parent.mkdir(parents=True, exist_ok=True)
    with locked(paths.results):
        finished = _finished(study)
        write_csv_rows(paths.results, [trial_row(t) for t in finished], RESULT_COLUMNS)
        best = best_trial(study)
        if best is not None and "config" in best.user_attrs:
            atomic_write_json(paths.best_config, best.user_attrs["config"])
        states = [t.user_attrs.get(OUTCOME_ATTR) for t in finished]
        interrupted = sum(1 for t in study.get_trials(deepcopy=False)
                          if t.state.is_finished() and not counts_towards_budget(t))
        atomic_write_json(paths.study_file, {
            "study_name": study.study_name,
            "storage": storage_label,
            "settings": study.user_attrs.get("nnlab_settings", {}),
            "trials": {"complete": states.count("complete"), "pruned": states.count("pruned"),
                       "failed": states.count("failed"), "interrupted": interrupted},
            "best_trial": _best_summary(best) if best is not None else None,
            "best_config": str(paths.best_config) if best is not None else None,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
    return best


def check_results_owner(paths: ResultPaths, study_name: str, storage_label: str) -> None:
    """Refuse to overwrite results that another study wrote.

    Raises:
        ConfigError: ``hpo_study.json`` next to the CSV names another study or storage.
    """
    if not paths.study_file.exists():
        return
    info = read_json_object(paths.study_file)
    if (info.get("study_name"), info.get("storage")) != (study_name, storage_label):
        raise ConfigError(
            f"--output: {paths.results} holds the results of study '{info.get('study_name')}' "
            f"({info.get('storage')}), not '{study_name}' ({storage_label}); pass another --output "
            "(or --output-dir) to keep them")


def _r2(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def format_progress(trial: Any, best: Any | None, *, worker: int | None = None) -> str:
    """One line per finished trial: number, preset, state, val R², duration, best so far."""
    attrs = trial.user_attrs
    metrics = attrs.get("metrics", {})
    best_text = f"{_r2(best.value)} (trial {best.number})" if best is not None else "n/a"
    line = (f"trial {trial.number:>3}  {attrs.get('preset', ''):<18} {attrs.get(OUTCOME_ATTR, ''):<8}  "
            f"val R² {_r2(metrics.get('best_r2')):>7}  {attrs.get('duration_s', 0.0):7.1f} s  best {best_text}")
    if attrs.get("error"):
        line += f"  -- {attrs['error']}"
    return line if worker is None else f"[worker {worker}] {line}"


def format_best(best: Any | None, paths: ResultPaths, counts: Mapping[str, int]) -> str:
    """The end-of-search summary."""
    total = sum(counts.values())
    lines = [f"{total} trials finished: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
             f"{counts.get('failed', 0)} failed; results in {paths.results}"]
    if best is None:
        lines.append("no trial completed, so there is no best configuration")
        return "\n".join(lines) + "\n"
    attrs = best.user_attrs
    metrics = attrs.get("metrics", {})
    lines += [
        f"best trial {best.number} ({attrs.get('preset')}): val R² {_r2(best.value)}, "
        f"test R² {_r2(metrics.get('test_r2'))}, run {attrs.get('run_dir', attrs.get('run_id', ''))}",
        f"  overrides {json.dumps(attrs.get('overrides', {}))}",
        f"  configuration saved to {paths.best_config}; retrain it with: "
        f"python main.py --config {paths.best_config}",
    ]
    return "\n".join(lines) + "\n"
