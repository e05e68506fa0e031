"""What a search writes: ``hpo_results.csv``, ``best_config.json``, ``hpo_study.json``.

All three are rebuilt from the study itself (so rows written by other workers
are never lost) under a file lock, and each is replaced atomically.

Ownership: a search replaces only files its own study wrote. ``hpo_study.json``
records the study, the storage and the SHA-256 of each file written beside it;
an existing results CSV or ``best_config.json`` is replaced only when that
record names this study and storage and the file's digest matches -- anything
else (a particle CSV, a hand-edited ``best_config.json``, another study's
results) is refused before the search starts. The record is written first,
naming both the old and the new digests, so a search killed between two writes
still recognises all of its files.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
import math
import os
import stat
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnlab._files import atomic_write, atomic_write_json, locked, neutralised_row, special_file_kind
from nnlab._text import LINE_WIDTH, fit
from nnlab.config import read_json_object
from nnlab.errors import ConfigError
from nnlab.orchestration import OUTCOME_ATTR, counts_towards_budget

__all__ = [
    "RESULT_COLUMNS",
    "TrialOutcome",
    "ResultPaths",
    "result_rows",
    "best_trial",
    "write_results",
    "check_results_owner",
    "PROGRESS_WIDTH",
    "format_progress",
    "format_best",
    "retrain_command",
]

RESULT_COLUMNS = (
    "trial_number", "preset", "state", "overrides", "test_mse", "test_mae", "test_rmse", "test_r2",
    "best_r2", "final_r2", "avg_epoch_time", "total_epochs", "duration_s", "run_id", "error",
)
METRIC_COLUMNS = RESULT_COLUMNS[4:12]


class TrialOutcome(str, enum.Enum):
    """How nnlab finished a trial: the trial's ``outcome`` attribute and the results' ``state`` column.

    Not a run's status (:class:`nnlab.runs.RunStatus`): a diverged run is a
    failed trial, a completed run without a finite R² too. Stored as its value.

    Example:
        >>> TrialOutcome("pruned") is TrialOutcome.PRUNED, TrialOutcome.COMPLETE.value
        (True, 'complete')
    """

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


class ResultPaths:
    """The results CSV and the two JSON files written next to it.

    Args:
        results: the CSV (``--output``).

    Raises:
        ConfigError: ``results`` has the name of one of the two JSON files.
    """

    def __init__(self, results: str | Path) -> None:
        self.results = Path(results)
        self.best_config = self.results.parent / "best_config.json"
        self.study_file = self.results.parent / "hpo_study.json"
        if self.results.name in (self.best_config.name, self.study_file.name):
            raise ConfigError(f"--output: '{self.results}' has the name of a file the search writes beside the "
                              "results; choose another file name for the results CSV")


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    # Built in memory so that the digest recorded is that of the exact bytes written.
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(neutralised_row(row) for row in rows)  # no cell may start a spreadsheet formula
    return buffer.getvalue().encode("utf-8")


def write_results(study: Any, paths: ResultPaths, *, storage_label: str) -> Any | None:
    """Rewrite the CSV, ``best_config.json`` and ``hpo_study.json`` from the study.

    ``best_config.json`` holds only configuration keys (the best trial's whole
    resolved configuration), so ``python main.py --config best_config.json``
    retrains it; the trial's metadata goes to ``hpo_study.json``, with the
    SHA-256 of the two other files (see the module docstring).

    Returns:
        The best trial, or None if no trial has completed.

    Raises:
        ConfigError: a file there is not this study's own (see :func:`check_results_owner`).
    """
    paths.results.parent.mkdir(parents=True, exist_ok=True)
    with locked(paths.results):
        # Checked again under the lock: a file may have appeared since the search started.
        recorded, current = _owned_files(paths, study.study_name, storage_label)
        finished = _finished(study)
        outputs = {paths.results: _csv_bytes([trial_row(t) for t in finished])}
        best = best_trial(study)
        if best is not None and "config" in best.user_attrs:
            text = json.dumps(best.user_attrs["config"], indent=2) + "\n"
            outputs[paths.best_config] = text.encode("utf-8")
        states = [t.user_attrs.get(OUTCOME_ATTR) for t in finished]
        interrupted = sum(1 for t in study.get_trials(deepcopy=False)
                          if t.state.is_finished() and not counts_towards_budget(t))
        record = {
            "study_name": study.study_name,
            "storage": storage_label,
            "settings": study.user_attrs.get("nnlab_settings", {}),
            "trials": {**{o.value: states.count(o.value) for o in TrialOutcome}, "interrupted": interrupted},
            "best_trial": _best_summary(best) if best is not None else None,
            "best_config": str(paths.best_config) if best is not None else None,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        new = {path.name: _sha256(data) for path, data in outputs.items()}
        # Results of this study under another --output in the same directory stay
        # recognised while they exist.
        kept = {name: digests for name, digests in recorded.items()
                if name not in (paths.results.name, paths.best_config.name)
                and Path(name).name == name and (paths.study_file.parent / name).is_file()}
        final = {**kept, **{name: [digest] for name, digest in current.items()},
                 **{name: [digest] for name, digest in new.items()}}
        # The claim first, naming the old and the new content of each file about
        # to be replaced: killed anywhere below, every file still matches it.
        claim = {**final, **{name: sorted({current[name], new[name]}) for name in new if name in current}}
        atomic_write_json(paths.study_file, {**record, "files": claim})
        for path, data in outputs.items():
            atomic_write(path, lambda fh, data=data: fh.write(data), binary=True)
        atomic_write_json(paths.study_file, {**record, "files": final})
    return best


def check_results_owner(paths: ResultPaths, study_name: str, storage_label: str) -> None:
    """Refuse, before a search, to replace any file that this study did not write.

    Reads only (no lock file is created), so a refused search leaves nothing behind.

    Raises:
        ConfigError: naming the file: the results CSV or ``best_config.json``
            exists but is not recorded with its digest by this study's
            ``hpo_study.json``; ``hpo_study.json`` is not a study record or names
            another study or storage; or one of them is not a regular file.
    """
    _owned_files(paths, study_name, storage_label)


_BESIDE = " (written beside the results)"


def _owned_files(paths: ResultPaths, study_name: str,
                 storage_label: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Check ownership (see :func:`check_results_owner`).

    Returns:
        The digests the record holds by file name, and the digests of the
        results CSV and ``best_config.json`` now there (absent ones omitted).
    """
    present: list[Path] = []
    for path in (paths.results, paths.best_config, paths.study_file):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"--output: cannot check '{path}': {exc.strerror or exc}") from None
        # A link could point anywhere; the search never creates one.
        kind = "a symbolic link" if stat.S_ISLNK(mode) else special_file_kind(mode)
        if kind is not None:
            where = "" if path == paths.results else _BESIDE
            raise ConfigError(f"--output: '{path}'{where} is {kind}, not a file this study wrote; "
                              "choose another --output or move it")
        present.append(path)
    if paths.study_file not in present:
        if present:  # results without the record of who wrote them: not ours
            raise _not_ours(present[0], paths, study_name, storage_label)
        return {}, {}
    record = _read_record(paths.study_file)
    if (record["study_name"], record["storage"]) != (study_name, storage_label):
        raise ConfigError(
            f"--output: {paths.results} holds the results of study '{record['study_name']}' "
            f"({record['storage']}), not '{study_name}' ({storage_label}); pass another --output "
            "(or --output-dir) to keep them")
    recorded: dict[str, list[str]] = record["files"]
    current: dict[str, str] = {}
    for path in (paths.results, paths.best_config):
        if path in present:
            digest = _sha256(path.read_bytes())
            if path.name in recorded and digest not in recorded[path.name]:
                # Ours once, edited since: replacing it would lose the edit.
                where = "" if path == paths.results else _BESIDE
                raise ConfigError(f"--output: '{path}'{where} was changed after study '{study_name}' "
                                  f"({storage_label}) wrote it; choose another --output or move the file")
            if digest not in recorded.get(path.name, ()):
                raise _not_ours(path, paths, study_name, storage_label)
            current[path.name] = digest
    return recorded, current


def _not_ours(path: Path, paths: ResultPaths, study_name: str, storage_label: str) -> ConfigError:
    where = "" if path == paths.results else _BESIDE
    return ConfigError(f"--output: '{path}'{where} exists and was not written by study '{study_name}' "
                       f"({storage_label}); choose another --output or move the file")


def _read_record(path: Path) -> dict[str, Any]:
    """``hpo_study.json``, if it is a study record with file digests; else refuse."""
    def refuse(reason: str) -> ConfigError:
        return ConfigError(f"--output: '{path}'{_BESIDE} exists and is not a study record of nnlab hpo "
                           f"({reason}); choose another --output or move the file")

    try:
        record = read_json_object(path, str(path))
    except ConfigError as exc:
        raise refuse(str(exc).removeprefix(f"{path}: ")) from None
    files = record.get("files")
    if not (isinstance(record.get("study_name"), str) and isinstance(record.get("storage"), str)
            and isinstance(files, dict)
            and all(isinstance(digests, list) and all(isinstance(d, str) for d in digests)
                    for digests in files.values())):
        raise refuse("it lacks the study name, storage and file digests")
    return record


def _r2(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


PROGRESS_WIDTH = LINE_WIDTH
"""The widest progress line: a longer error is shortened to fit."""


def format_progress(trial: Any, best: Any | None, *, worker: int | None = None, eta: str = "") -> str:
    """One line per finished trial: number, preset, state, val R², duration, best so far, the time left.

    Args:
        trial: the finished trial.
        best: the best trial so far (None: none completed).
        worker: this worker's number when several run (the line starts ``[worker N]``).
        eta: the time left for the search (:func:`nnlab.orchestration.eta_text`), "" for none.

    Every line fits :data:`PROGRESS_WIDTH` columns: an error too long for the rest of the line
    goes on a second line, shortened if need be (the whole error is in the results CSV).
    """
    attrs = trial.user_attrs
    metrics = attrs.get("metrics", {})
    best_text = f"{_r2(best.value)} (trial {best.number})" if best is not None else "n/a"
    line = (f"trial {trial.number:>3}  {attrs.get('preset', ''):<18} {attrs.get(OUTCOME_ATTR, ''):<8}  "
            f"val R² {_r2(metrics.get('best_r2')):>7}  {attrs.get('duration_s', 0.0):7.1f} s  best {best_text}")
    if eta:
        line += f"  {eta}"
    if worker is not None:
        line = f"[worker {worker}] {line}"
    return line + _error_part(attrs.get("error"), PROGRESS_WIDTH - len(line))


def _error_part(error: Any, room: int) -> str:
    """``  -- <error>`` when it fits in ``room`` columns, else on a line of its own below (shortened with an
    ellipsis to :data:`PROGRESS_WIDTH`); "" when there is no error."""
    if not error:
        return ""
    text = f"  -- {' '.join(str(error).split())}"
    if len(text) <= room:
        return text
    text = "  " + text
    return "\n" + (text if len(text) <= PROGRESS_WIDTH else text[:PROGRESS_WIDTH - 1] + "…")


def _fill(text: str, indent: str = "    ") -> list[str]:
    """``text`` as lines of :data:`LINE_WIDTH` columns, continuations indented ``indent`` more; paths whole."""
    return fit(text, indent=indent).split("\n")


def _short(value: Any) -> Any:
    """Floats at 4 significant digits, for display (best_config.json keeps them exact)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        return [_short(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _short(item) for key, item in value.items()}
    return value


def retrain_command(best_config: str | os.PathLike, data: str | os.PathLike | None = None, *,
                    width: int = LINE_WIDTH) -> list[str]:
    """``nnlab train --config FILE [--data FILE]`` with absolute paths, so it runs from any directory.

    The table's keys (data_targets, ...) are in the configuration file itself.
    Returns the command as lines (`` \\`` continues a line) of at most ``width`` columns.

    Example:
        >>> retrain_command("/r/best_config.json")
        ['nnlab train --config /r/best_config.json']
    """
    import shlex

    words = [f"nnlab train --config {shlex.quote(os.path.abspath(best_config))}"]
    if data:
        words.append(f"--data {shlex.quote(os.path.abspath(data))}")
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) + 2 > width:
            lines[-1] += " \\"
            lines.append("  " + word)
        else:
            lines[-1] += " " + word
    return lines


def format_best(best: Any | None, paths: ResultPaths, counts: Mapping[str, int]) -> str:
    """The end-of-search summary, every line within :data:`LINE_WIDTH` columns (but for a longer path)."""
    total = sum(counts.values())
    lines = _fill(f"{total} trials finished: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
                  f"{counts.get('failed', 0)} failed; results in {paths.results}")
    if best is None:
        lines.append("no trial completed, so there is no best configuration")
        return "\n".join(lines) + "\n"
    attrs = best.user_attrs
    metrics = attrs.get("metrics", {})
    lines += _fill(f"best trial {best.number} ({attrs.get('preset')}): val R² {_r2(best.value)}, "
                   f"test R² {_r2(metrics.get('test_r2'))}, run {attrs.get('run_dir', attrs.get('run_id', ''))}")
    overrides = ", ".join(f"{key}={json.dumps(_short(value), separators=(',', ':'))}"
                          for key, value in attrs.get("overrides", {}).items())
    lines += _fill(f"  overrides {overrides or 'none'}", indent="          ")
    lines += _fill(f"  configuration saved to {os.path.abspath(paths.best_config)}; retrain it with:", indent="  ")
    lines += ["    " + line for line in retrain_command(paths.best_config, attrs.get("data"), width=LINE_WIDTH - 4)]
    return "\n".join(lines) + "\n"
