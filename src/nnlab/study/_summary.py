"""The statistics, figure and JSON summary of a multi-seed study (``precision`` or ``compare``).

Every (cell, seed) of a study is one training run; the engine collects them in
``<kind>_runs.csv`` and calls :func:`write_study_outputs`, which writes three
files next to it (each atomically):

* ``<kind>_study.csv``: one row per cell -- mean test R² with its 95 % bootstrap
  CI over seeds, validation MSE, epoch time, and the comparison with the
  reference cell paired by seed (mean difference with its bootstrap CI,
  Wilcoxon signed-rank p, Cohen's d);
* ``<kind>_study.png``: the figure (see :mod:`nnlab.study._figure`);
* ``<kind>_summary.json``: the table, the settings, and findings in words.

Only runs whose ``status`` is ``completed`` (or ``diverged``) count; the others
(failed, pending, running) are counted in ``n_failed``. A counted run whose test
R² is NaN diverged: it is left out of its cell's mean and counted in
``n_diverged``. Nothing here raises for missing cells, one-seed cells or a study
whose runs all failed: the statistics that cannot be computed are NaN and the
reason is in the summary's ``notes``.

:func:`read_study_dir` reads a study directory back (``nnlab analyze --study``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab._files import atomic_write_json, restore_csv_value, write_csv_rows
from nnlab._numbers import to_jsonable
from nnlab.errors import ArtifactError, ConfigError
from nnlab.stats import bootstrap_ci, compare_paired, min_wilcoxon_p
from nnlab.study._curves import TOLERANCES, precision_curves
from nnlab.study._flags import cell_flags

__all__ = [
    "KINDS",
    "check_inside",
    "check_study_outputs",
    "STUDY_COLUMNS",
    "TOLERANCES",
    "format_r2_difference",
    "precision_curves",
    "read_study_dir",
    "summarise_study",
    "write_study_outputs",
]

# The cell keys of each kind of study, in the engine's column order.
KINDS: dict[str, tuple[str, ...]] = {
    "precision": ("schedule", "rounding", "bits", "policy"),
    "compare": ("variant",),
}
# Columns every runs table must have besides its keys.
REQUIRED_COLUMNS = ("seed", "status", "test_r2", "best_val_mse", "epoch_time_mean")
# Runs that count. A diverged run is a result (a NaN test R², counted in n_diverged), not a failure.
DONE_STATUSES = ("completed", "diverged")
# The statistics columns of <kind>_study.csv, after the cell keys.
STUDY_COLUMNS = (
    "n_seeds", "n_failed", "n_diverged",
    "test_r2_mean", "test_r2_ci_low", "test_r2_ci_high", "val_mse_mean", "epoch_time_mean", "epoch_time_ratio",
    "diff_vs_ref_mean", "diff_ci_low", "diff_ci_high", "wilcoxon_p", "cohens_d", "n_pairs",
)
ROUNDING_ORDER = ("none", "truncate", "nearest", "stochastic")
STOCHASTIC = "stochastic"
FOCUS_BITS = 4  # float8 e4m3's significand: where the roundings are compared with stochastic in words


def _norm(value: Any) -> Any:
    """One spelling per key value, whether it came from a DataFrame, a CSV or JSON (24, 24.0, "24" -> 24)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return int(value) if float(value).is_integer() else float(value)
    text = restore_csv_value(str(value).strip())
    try:
        number = float(text)
    except ValueError:
        return text
    return _norm(number) if math.isfinite(number) else text


def _validate(kind: str, runs: Any, keys: Sequence[str], reference: Mapping[str, Any], alpha: float) -> list[str]:
    if kind not in KINDS:
        raise ConfigError(f"study kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(runs, pd.DataFrame):
        raise ConfigError(f"runs must be a pandas DataFrame (one row per cell and seed), got {type(runs).__name__}")
    keys = [str(k) for k in keys] if not isinstance(keys, str) else [keys]
    if not keys or len(set(keys)) != len(keys):
        raise ConfigError(f"keys must name the cell columns once each, got {keys}")
    missing = [c for c in (*keys, *REQUIRED_COLUMNS) if c not in runs.columns]
    if missing:
        raise ConfigError(f"the {kind} runs table has no column {', '.join(repr(c) for c in missing)} "
                          f"(needed: {', '.join((*keys, *REQUIRED_COLUMNS))})")
    if kind == "precision" and "bits" not in keys:
        raise ConfigError(f"a precision study needs 'bits' among its keys, got {keys}")
    if not isinstance(reference, Mapping) or set(reference) != set(keys):
        given = sorted(reference) if isinstance(reference, Mapping) else type(reference).__name__
        raise ConfigError(f"reference must give one value for each key {keys}, got {given}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be a number between 0 and 1, got {alpha!r}")
    return keys


def _format_columns(runs: pd.DataFrame) -> dict[str, str]:
    from nnlab.formats import REFERENCE_BITS  # imported here: it may load Keras

    return {fmt: f"format_r2_{fmt}" for fmt in REFERENCE_BITS if f"format_r2_{fmt}" in runs.columns}


def _sort_key(keys: Sequence[str], first_seen: dict[str, dict[Any, int]]):
    """Precision: by rounding, then the other keys in order of appearance, bits descending."""
    priority = [k for k in ("rounding",) if k in keys] + [k for k in keys if k not in ("rounding", "bits")] + \
        [k for k in ("bits",) if k in keys]

    def part(key: str, value: Any) -> tuple:
        if key == "rounding" and value in ROUNDING_ORDER:
            return (0, ROUNDING_ORDER.index(value), "")
        if key == "bits" and isinstance(value, (int, float)):
            return (0, -value, "")
        return (1, first_seen[key].get(value, 0), str(value))

    def sort_key(cell: tuple) -> tuple:
        values = dict(zip(keys, cell))
        return tuple(part(k, values[k]) for k in priority)
    return sort_key


def _mean(values: Any) -> float:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _cell_label(keys: Sequence[str], cell: Sequence[Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, cell)) if len(keys) > 1 else str(cell[0])


def summarise_study(kind: str, runs: pd.DataFrame, *, keys: Sequence[str], reference: Mapping[str, Any],
                    alpha: float = 0.05,
                    seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any], dict[tuple, pd.DataFrame]]:
    """The statistics of a study, without writing anything.

    Args: as :func:`write_study_outputs`.

    Returns:
        ``(table, summary, per_seed)``: the ``<kind>_study.csv`` table (cell keys,
        then :data:`STUDY_COLUMNS`), the summary (JSON-ready but for NaN), and
        per cell the completed runs indexed by seed (for the figure).

    Raises:
        ConfigError: an unknown kind, a missing column, a reference that does
            not name every key, an alpha outside (0, 1).
    """
    keys = _validate(kind, runs, keys, reference, alpha)
    df, formats = _runs_frame(runs, keys)
    ref_cell = tuple(_norm(reference[k]) for k in keys)
    cells, notes = _ordered_cells(kind, df, keys, ref_cell)
    cell_ids = {cell: i for i, cell in enumerate(cells)}
    df["_cid"] = [cell_ids[cell] for cell in df["_cell"]]  # an integer per cell: pandas compares tuples badly
    done, left_out = _counted_runs(df)
    notes += left_out
    per_seed = {cell: done[done["_cid"] == cell_ids[cell]].set_index("_seed").sort_index() for cell in cells}
    ref_runs = per_seed[ref_cell]
    ref_time = _mean(ref_runs["epoch_time_mean"])
    rows = [_cell_row(keys, cell, per_seed[cell], df[df["_cid"] == cell_ids[cell]], ref_runs, ref_time,
                      is_reference=cell == ref_cell, alpha=alpha, seed=seed) for cell in cells]
    table = _study_table(rows, keys)
    counts = _counts(df, table, done, alpha)
    notes += _coverage_notes(df, table, cells, keys, counts, alpha)

    summary: dict[str, Any] = {
        "kind": kind,
        "keys": keys,
        "reference": dict(zip(keys, ref_cell)),
        "alpha": float(alpha),
        "bootstrap_seed": int(seed),
        "n_cells": len(cells),
        **counts,
        "tolerances": list(TOLERANCES),
    }
    if kind == "precision":
        summary["formats"] = _format_results(ref_runs, formats, float(table.loc[0, "test_r2_mean"]), seed)
        summary["fewest_bits_within"] = _fewest_bits_within(table, keys)
        summary["stochastic_comparisons"] = _stochastic_comparisons(per_seed, table, keys, alpha, seed)
    flags = cell_flags(done, cells, lambda row: row["_cell"], lambda cell: _cell_label(keys, cell))
    summary["findings"] = _findings(kind, table, summary, keys, ref_cell, alpha) + [
        flag["message"] for cell in cells for flag in flags.get(cell, [])]
    summary["notes"] = notes
    summary["cells"] = [{**record, "flags": [flag["message"] for flag in flags.get(cell, [])]}
                        for cell, record in zip(cells, table.to_dict("records"))]
    summary["flags"] = [{"cell": dict(zip(keys, cell)), **flag} for cell in cells for flag in flags.get(cell, [])]
    return table, summary, per_seed


def _runs_frame(runs: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """A copy of ``runs`` with numeric metrics and the columns ``_cell``, ``_seed`` and ``_completed``;
    and the format columns it has (format -> column)."""
    df = runs.copy()
    formats = _format_columns(df)
    numeric = ["test_r2", "best_val_mse", "epoch_time_mean", *formats.values()]
    df["_unreadable"] = _unreadable(df["test_r2"])
    df["_test_r2_text"] = df["test_r2"]
    for column in numeric:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["_cell"] = [tuple(_norm(v) for v in row) for row in df[keys].itertuples(index=False, name=None)]
    df["_seed"] = pd.to_numeric(df["seed"], errors="coerce")
    df["_completed"] = _status(df).isin(DONE_STATUSES)
    return df, formats


# How a missing or non-finite test R² is written: a diverged run's, not an unreadable value.
_NO_NUMBER = {"", "nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "none", "null", "<na>"}


def _unreadable(values: pd.Series) -> pd.Series:
    """Where a value is text that is no number (``abc``): unreadable, which is not diverged."""
    parsed = pd.to_numeric(values, errors="coerce")
    text = values.astype(str).str.strip().str.lower()
    return parsed.isna() & values.notna() & ~text.isin(_NO_NUMBER)


def _status(df: pd.DataFrame) -> pd.Series:
    return df["status"].astype(str).str.strip().str.lower()


def _ordered_cells(kind: str, df: pd.DataFrame, keys: Sequence[str],
                   ref_cell: tuple) -> tuple[list[tuple], list[str]]:
    """The cells, the reference first (added when it has no runs, with a note); precision cells sorted."""
    notes = []
    first_seen: dict[str, dict[Any, int]] = {k: {} for k in keys}
    for cell in df["_cell"]:
        for k, v in zip(keys, cell):
            first_seen[k].setdefault(v, len(first_seen[k]))
    cells = list(dict.fromkeys(df["_cell"]))
    if ref_cell not in cells:
        cells.append(ref_cell)
        notes.append(f"The reference cell ({_cell_label(keys, ref_cell)}) has no runs at all: no comparison "
                     "with it is possible.")
    others = sorted((c for c in cells if c != ref_cell), key=_sort_key(keys, first_seen)) \
        if kind == "precision" else [c for c in cells if c != ref_cell]
    return [ref_cell, *others], notes


def _counted_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The completed runs with a seed, the last of each (cell, seed); and notes on the runs left out."""
    notes = []
    no_seed = df["_completed"] & ~np.isfinite(df["_seed"])
    if no_seed.any():
        notes.append(f"{int(no_seed.sum())} completed run(s) without a valid seed were left out.")
    unreadable = df["_completed"] & ~no_seed & df["_unreadable"]
    if unreadable.any():
        shown = ", ".join(f"'{str(v)[:20]}'" for v in df.loc[unreadable, "_test_r2_text"][:3])
        notes.append(f"{int(unreadable.sum())} completed run(s) have an unreadable test_r2 ({shown}) and were left "
                     "out: neither a result nor diverged; check the runs table.")
    done = df[df["_completed"] & ~no_seed & ~unreadable].copy()
    done["_seed"] = done["_seed"].astype(np.int64)
    duplicated = done.duplicated(["_cid", "_seed"], keep="last")
    if duplicated.any():
        notes.append(f"{int(duplicated.sum())} completed run(s) repeat a (cell, seed) pair; the last one in the "
                     "table was used.")
        done = done[~duplicated]
    return done, notes


def _cell_row(keys: Sequence[str], cell: tuple, frame: pd.DataFrame, all_rows: pd.DataFrame,
              ref_runs: pd.DataFrame, ref_time: float, *, is_reference: bool, alpha: float,
              seed: int) -> dict[str, Any]:
    """One row of ``<kind>_study.csv``: the cell's statistics and, but for the reference, its paired comparison."""
    r2 = frame["test_r2"].to_numpy(np.float64)
    finite = r2[np.isfinite(r2)]
    row: dict[str, Any] = dict(zip(keys, cell))
    row.update({
        "n_seeds": int(finite.size),
        "n_failed": int((~all_rows["_completed"]).sum()),
        "n_diverged": int(r2.size - finite.size),
        "test_r2_mean": float(finite.mean()) if finite.size else math.nan,
    })
    low, high = bootstrap_ci(finite, seed=seed) if finite.size >= 2 else (math.nan, math.nan)
    time_mean = _mean(frame["epoch_time_mean"])
    row.update({"test_r2_ci_low": low, "test_r2_ci_high": high, "val_mse_mean": _mean(frame["best_val_mse"]),
                "epoch_time_mean": time_mean,
                "epoch_time_ratio": time_mean / ref_time if ref_time > 0 else math.nan})
    row.update(dict.fromkeys(("diff_vs_ref_mean", "diff_ci_low", "diff_ci_high", "wilcoxon_p", "cohens_d"),
                             math.nan), n_pairs=0 if not is_reference else math.nan)
    if is_reference:
        return row
    common = frame.index.intersection(ref_runs.index)
    comparison = compare_paired(frame.loc[common, "test_r2"], ref_runs.loc[common, "test_r2"],
                                alpha=alpha, seed=seed)
    n_pairs = int(comparison["n"])
    row["n_pairs"] = n_pairs
    if n_pairs:
        row.update(diff_vs_ref_mean=comparison["mean_diff"], wilcoxon_p=comparison["p_value"],
                   cohens_d=comparison["cohens_d"])
    if n_pairs >= 2:  # a bootstrap CI of one difference is that difference: not an interval
        row.update(diff_ci_low=comparison["ci_low"], diff_ci_high=comparison["ci_high"])
    return row


def _study_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=[*keys, *STUDY_COLUMNS])
    for key in keys:  # keep 24 an int next to a missing value, not 24.0
        table[key] = pd.Series([row[key] for row in rows], dtype=object)
    table["n_pairs"] = table["n_pairs"].astype("Int64")
    return table


def _counts(df: pd.DataFrame, table: pd.DataFrame, done: pd.DataFrame, alpha: float) -> dict[str, Any]:
    """The summary's run counts, seeds, and whether a test can be significant at all."""
    n_completed = int(df["_completed"].sum())
    n_seeds_done = int(done.loc[np.isfinite(done["test_r2"]), "_seed"].nunique())  # what a test can pair at most
    min_p = min_wilcoxon_p(n_seeds_done)
    return {
        "seeds": sorted(int(s) for s in df.loc[np.isfinite(df["_seed"]), "_seed"].unique()),
        "n_runs": len(df),
        "n_completed": n_completed,
        "n_failed": len(df) - n_completed,
        "n_diverged": int(table["n_diverged"].sum()),
        "n_seeds_completed": n_seeds_done,
        "min_attainable_p": min_p,
        "significance_possible": bool(min_p < alpha),
    }


def _coverage_notes(df: pd.DataFrame, table: pd.DataFrame, cells: Sequence[tuple], keys: Sequence[str],
                    counts: Mapping[str, Any], alpha: float) -> list[str]:
    """What the statistics leave out or cannot say: unfinished and diverged runs, single seeds, too few seeds."""
    notes = []
    n_completed, diverged = counts["n_completed"], counts["n_diverged"]
    if len(df) == 0:
        notes.append("The runs table is empty: nothing to summarise.")
    elif n_completed == 0:
        notes.append(f"None of the {len(df)} runs completed: no statistics.")
    elif (~df["_completed"]).any():
        kinds = _status(df)[~df["_completed"]].str.split(":").str[0].str.strip().value_counts()
        notes.append(f"{int((~df['_completed']).sum())} of {len(df)} runs did not complete and were left out "
                     f"({', '.join(f'{k}: {n}' for k, n in kinds.items())}; n_failed per cell).")
    if diverged:
        where = "; ".join(f"{_cell_label(keys, c)}: {n}" for c, n in
                          zip(cells, table["n_diverged"]) if n)
        notes.append(f"{diverged} completed run(s) have no finite test R² (diverged) and are left out of the "
                     f"means and tests ({where}); their cells look better than they are.")
    single = [_cell_label(keys, c) for c, n in zip(cells, table["n_seeds"]) if n == 1]
    if single and len(single) == len(cells):
        notes.append("Every cell has a single seed: no confidence intervals.")
    elif single:
        shown = "; ".join(single[:5]) + (f"; and {len(single) - 5} more" if len(single) > 5 else "")
        notes.append(f"{len(single)} cell(s) have a single seed, so no confidence interval: {shown}.")
    if n_completed and table.loc[0, "n_seeds"] == 0:
        notes.append("The reference cell has no completed run with a finite test R²: no comparison with it.")
    n_seeds_done, min_p = counts["n_seeds_completed"], counts["min_attainable_p"]
    if min_p >= alpha and n_seeds_done:
        notes.append(f"With {n_seeds_done} seed(s) the smallest p-value the exact Wilcoxon test can reach is "
                     f"{min_p:.3g} ≥ alpha = {alpha}: no difference can be significant; use 6 seeds or more.")
    return notes


def _format_results(ref_runs: pd.DataFrame, formats: Mapping[str, str], ref_mean: float,
                    seed: int) -> dict[str, dict[str, Any]]:
    """The float32-trained reference network deployed in each hardware format or quantized (means over seeds)."""
    from nnlab.formats import REFERENCE_BITS

    out = {}
    for fmt, column in formats.items():
        values = ref_runs[column].to_numpy(np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            continue
        low, high = bootstrap_ci(values, seed=seed) if values.size >= 2 else (math.nan, math.nan)
        mean = float(values.mean())
        out[fmt] = {"bits": REFERENCE_BITS[fmt], "test_r2_mean": mean, "ci_low": low, "ci_high": high,
                    "n_seeds": int(values.size), "diff_vs_ref_mean": mean - ref_mean}
    return out


def _fewest_bits_within(table: pd.DataFrame, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per curve, the fewest bits k such that every cell with k bits or more has a mean within each tolerance.

    Requiring every count above k too keeps one lucky low-bit cell from being the answer.
    """
    ref_mean = float(table.loc[0, "test_r2_mean"]) if len(table) else math.nan
    out: dict[str, dict[str, Any]] = {}
    if not math.isfinite(ref_mean):
        return out
    for label, line in precision_curves(table, keys).items():
        if "rounding" in line.columns and line["rounding"].iloc[0] == "none":
            continue  # a policy at full precision, not a rounding curve over bits
        if not np.isfinite(line["test_r2_mean"].to_numpy(np.float64)).any():
            continue  # a curve with no data: nothing to say about it
        entry: dict[str, Any] = {}
        for tol in TOLERANCES:
            fewest = None
            for bits, mean in zip(line["bits"], line["test_r2_mean"]):  # bits descending
                if not (math.isfinite(mean) and mean >= ref_mean - tol):
                    break
                fewest = int(bits)
            entry[str(tol)] = fewest
        out[label] = entry
    return out


def _stochastic_comparisons(per_seed: Mapping[tuple, pd.DataFrame], table: pd.DataFrame, keys: Sequence[str],
                            alpha: float, seed: int) -> list[dict[str, Any]]:
    """At every bit count with a stochastic cell: each other rounding against it, paired by seed."""
    if "rounding" not in keys:
        return []
    rounding_at = keys.index("rounding")
    out = []
    cells = [tuple(row) for row in table[list(keys)].itertuples(index=False, name=None)]
    for cell in cells:
        if cell[rounding_at] != STOCHASTIC:
            continue
        for other in cells:
            if other == cell or other[rounding_at] in (STOCHASTIC, "none"):
                continue
            if any(a != b for i, (a, b) in enumerate(zip(cell, other)) if i != rounding_at):
                continue  # another bit count, policy or schedule
            a, b = per_seed[other], per_seed[cell]
            common = a.index.intersection(b.index)
            c = compare_paired(a.loc[common, "test_r2"], b.loc[common, "test_r2"], alpha=alpha, seed=seed)
            entry = dict(zip(keys, other))
            entry.update({
                "against": STOCHASTIC, "n_pairs": int(c["n"]), "mean": c["mean_a"], "stochastic_mean": c["mean_b"],
                "diff_mean": c["mean_diff"],
                "diff_ci_low": c["ci_low"] if c["n"] >= 2 else math.nan,
                "diff_ci_high": c["ci_high"] if c["n"] >= 2 else math.nan,
                "wilcoxon_p": c["p_value"], "cohens_d": c["cohens_d"],
                "significantly_worse": bool(c["significant"] and c["mean_diff"] < 0),
                "significantly_better": bool(c["significant"] and c["mean_diff"] > 0),
            })
            out.append(entry)
    return out


def format_r2_difference(value: float) -> str:
    """A difference of R²: four decimals, or two significant digits when that would read as zero."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.4f}" if abs(value) >= 5e-4 or value == 0 else f"{value:+.1e}"


def _p(p: float) -> str:
    return "p = n/a" if not math.isfinite(p) else f"p = {p:.2g}"


def _findings(kind: str, table: pd.DataFrame, summary: Mapping[str, Any], keys: Sequence[str], ref_cell: tuple,
              alpha: float) -> list[str]:
    findings: list[str] = []
    ref = table.iloc[0]
    ref_label = _cell_label(keys, ref_cell)
    if not math.isfinite(ref["test_r2_mean"]):
        findings.append(f"The reference ({ref_label}) has no usable run: nothing can be compared with it.")
        return findings
    ci = (f" [95 % CI {ref['test_r2_ci_low']:.4f}, {ref['test_r2_ci_high']:.4f}]"
          if math.isfinite(ref["test_r2_ci_low"]) else "")
    findings.append(f"Reference ({ref_label}): mean test R² {ref['test_r2_mean']:.4f}{ci} over "
                    f"{int(ref['n_seeds'])} seed(s).")
    body = table.iloc[1:]
    tested = body[np.isfinite(body["wilcoxon_p"].astype(float))]
    worse = tested[(tested["wilcoxon_p"] < alpha) & (tested["diff_vs_ref_mean"] < 0)]
    better = tested[(tested["wilcoxon_p"] < alpha) & (tested["diff_vs_ref_mean"] > 0)]

    if kind == "precision":
        for label, entry in summary["fewest_bits_within"].items():
            parts = [f"within {tol} of the reference from {entry[str(tol)]} bits up" if entry[str(tol)] is not None
                     else f"never within {tol} of the reference" for tol in TOLERANCES]
            findings.append(f"{label}: mean test R² {', '.join(parts)}.")
        varying = [k for k in keys if k not in ("rounding", "bits") and table[k].nunique(dropna=False) > 1]
        for c in (c for c in summary["stochastic_comparisons"] if c.get("bits") == FOCUS_BITS and c["n_pairs"]):
            verdict = ("significantly worse than" if c["significantly_worse"] else
                       "significantly better than" if c["significantly_better"] else
                       "not significantly different from")
            where = "".join(f", {k}={c[k]}" for k in varying)
            findings.append(
                f"At {FOCUS_BITS} bits{where}, {c['rounding']} rounding is {verdict} stochastic rounding "
                f"(mean test R² {c['mean']:.4f} vs {c['stochastic_mean']:.4f}, "
                f"difference {format_r2_difference(c['diff_mean'])}, "
                f"paired Wilcoxon {_p(c['wilcoxon_p'])}, {c['n_pairs']} pairs).")
        for fmt, entry in summary["formats"].items():
            findings.append(f"The float32-trained network deployed in {fmt} ({entry['bits']} bits): mean test R² "
                            f"{entry['test_r2_mean']:.4f} "
                            f"({format_r2_difference(entry['diff_vs_ref_mean'])} vs float32).")
        findings.append(f"{len(worse)} of {len(body)} cells are significantly worse than the reference and "
                        f"{len(better)} significantly better (paired Wilcoxon, p < {alpha}).")
    else:
        for _, row in body.iterrows():
            label = _cell_label(keys, tuple(row[k] for k in keys))
            if not row["n_seeds"]:
                continue  # no data: the notes say why
            if not math.isfinite(row["wilcoxon_p"]):
                findings.append(f"{label}: no seed paired with the reference; not compared.")
                continue
            significant = row["wilcoxon_p"] < alpha
            verdict = (("significantly better" if row["diff_vs_ref_mean"] > 0 else "significantly worse")
                       if significant else "not significantly different")
            findings.append(f"{label}: {verdict} than the reference {ref_label} (test R² difference "
                            f"{format_r2_difference(row['diff_vs_ref_mean'])}, {_p(row['wilcoxon_p'])}, Cohen's d "
                            f"{row['cohens_d']:.2f}, {int(row['n_pairs'])} pairs)."
                            .replace("not significantly different than", "not significantly different from"))
    if not summary["significance_possible"]:
        findings.append(f"With {summary['n_seeds_completed']} seed(s) no test can reach p < {alpha} "
                        f"(smallest attainable p {summary['min_attainable_p']:.3g}): none of the above is significant "
                        "by construction.")
    return findings


def output_paths(study_dir: Path, kind: str) -> dict[str, Path]:
    """The files :func:`write_study_outputs` writes, by role."""
    return {"csv": study_dir / f"{kind}_study.csv", "figure": study_dir / f"{kind}_study.png",
            "summary": study_dir / f"{kind}_summary.json"}


def check_inside(path: Path, directory: Path, option: str, shown: str | None = None,
                 shown_dir: str | None = None) -> None:
    """Refuse ``path`` when it is a symbolic link that leads out of ``directory`` (nothing is written
    through a link onto a file elsewhere); a link that stays inside is written through."""
    if not path.is_symlink():
        return
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(os.path.realpath(directory)):
        raise ConfigError(f"{option}: '{shown or path}' is a symbolic link to '{target}', outside "
                          f"'{shown_dir or directory}'; nnlab does not write through it. Remove the link or choose another "
                          f"{option}")


def _is_own_output(role: str, path: Path, kind: str) -> bool:
    """Whether an existing output is nnlab's: the CSV by its exact statistics header, the summary by
    its fields (``kind``, ``files``), the figure by the PNG text nnlab writes (``nnlab._plots``)."""
    from nnlab._plots import is_nnlab_figure

    if role == "figure":
        return is_nnlab_figure(path)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if role == "csv":
                header = next(csv.reader([fh.readline(1 << 16)]), [])
                return tuple(header[-len(STUDY_COLUMNS):]) == STUDY_COLUMNS
            record = json.loads(fh.read(64 << 20))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return False
    return isinstance(record, dict) and record.get("kind") == kind and isinstance(record.get("files"), dict)


_ROLE_WORDS = {"csv": "table of cells", "figure": "figure", "summary": "summary"}


def check_study_outputs(study_dir: Path, kind: str, *, option: str = "--output-dir",
                        shown: Callable[[Path], str] = str, shown_dir: str | None = None) -> None:
    """Refuse, before any work, to write a study's outputs over files that are not nnlab's.

    Reads only. Each of ``<kind>_study.csv``, ``<kind>_study.png`` and ``<kind>_summary.json``
    must be absent or recognisably nnlab's (see :func:`_is_own_output`), a regular file, and not a
    symbolic link out of ``study_dir``.

    Raises:
        ConfigError: naming the file and what to do.
    """
    for role, path in output_paths(Path(study_dir), kind).items():
        check_inside(path, study_dir, option, shown(path), shown_dir)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"{option}: '{shown(path)}' cannot be checked: {exc.strerror or exc}") from None
        from nnlab._files import special_file_kind

        what = special_file_kind(mode)
        if what is None and _is_own_output(role, path, kind):
            continue
        raise ConfigError(f"{option}: '{shown(path)}' exists and is {what or 'not a file nnlab wrote'}; a {kind} "
                          f"study writes its {_ROLE_WORDS[role]} there. Move the file or choose another {option}")


def write_study_outputs(study_dir: Path, kind: str, runs: pd.DataFrame, *, keys: Sequence[str],
                        reference: Mapping[str, Any], alpha: float = 0.05, seed: int = 0) -> dict:
    """Write ``<kind>_study.csv``, ``<kind>_study.png`` and ``<kind>_summary.json`` into ``study_dir``.

    Args:
        study_dir: the study directory (created if missing).
        kind: ``"precision"`` or ``"compare"``.
        runs: one row per (cell, seed): the ``keys`` columns, ``seed``, ``status``,
            ``test_r2``, ``best_val_mse``, ``epoch_time_mean`` and, for a precision
            study, ``format_r2_<format>`` (may be NaN or absent); other columns
            (``run_id``, ``run_dir``) are ignored.
        keys: the columns that identify a cell.
        reference: the reference cell, a value for every key.
        alpha: significance level of the Wilcoxon tests in the findings.
        seed: seed of the bootstrap resampling.

    Returns:
        The summary (as written to the JSON; NaN as None), with ``files``: the paths written.

    Raises:
        ConfigError: an unknown kind, a missing column (named), a reference that
            does not name every key, an alpha outside (0, 1).

    Example:
        >>> runs = pd.DataFrame({"variant": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1],
        ...                      "status": "completed", "test_r2": [0.99, 0.98, 0.97, 0.96],
        ...                      "best_val_mse": 0.01, "epoch_time_mean": 1.0})
        >>> write_study_outputs(Path("study"), "compare", runs, keys=["variant"],
        ...                     reference={"variant": "a"})["cells"][1]["diff_vs_ref_mean"]  # doctest: +SKIP
        -0.02
    """
    table, summary, per_seed = summarise_study(kind, runs, keys=keys, reference=reference, alpha=alpha, seed=seed)
    study_dir = Path(study_dir)
    check_study_outputs(study_dir, kind)  # again here: a file may have appeared since the study started
    study_dir.mkdir(parents=True, exist_ok=True)
    csv_path, figure_path, json_path = output_paths(study_dir, kind).values()
    write_csv_rows(csv_path, to_jsonable(table.to_dict("records")), list(table.columns))
    files = {"csv": str(csv_path), "figure": None, "summary": str(json_path)}
    try:
        from nnlab.study._figure import plot_study

        plot_study(kind, table, summary, per_seed, figure_path)
        files["figure"] = str(figure_path)
    except Exception as exc:  # a figure is optional (DESIGN: degrade): the table and summary still count
        warnings.warn(f"study figure {figure_path} not written: {type(exc).__name__}: {exc}", RuntimeWarning,
                      stacklevel=2)
        summary["notes"].append(f"The figure could not be drawn: {type(exc).__name__}: {exc}")
    summary["files"] = files
    result = to_jsonable(summary)
    atomic_write_json(json_path, result)
    return result


def read_study_dir(study_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The studies in a directory, ready for :func:`write_study_outputs`.

    Each ``<kind>_runs.csv`` found gives one entry: ``kind``, ``path``, ``runs``
    (the table), ``keys``, ``reference`` and ``alpha``. Keys, reference and alpha
    come from ``<kind>_summary.json`` when it holds them; otherwise the keys are
    :data:`KINDS`' and the reference is, for precision, rounding ``none`` at 24
    bits with the ``float32`` policy on the first schedule in the file, for
    compare, the first variant in the file.

    Raises:
        nnlab.errors.ArtifactError: the directory does not exist, holds no runs
            table, or a runs table cannot be read.
    """
    directory = Path(study_dir)
    if not directory.is_dir():
        raise ArtifactError(f"study directory '{directory}' does not exist or is not a directory")
    found = [kind for kind in KINDS if (directory / f"{kind}_runs.csv").is_file()]
    if not found:
        expected = " or ".join(f"{kind}_runs.csv" for kind in KINDS)
        raise ArtifactError(f"no study in '{directory}': expected {expected} (written by nnlab study)")
    studies = []
    for kind in found:
        path = directory / f"{kind}_runs.csv"
        try:
            runs = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path} cannot be read as a CSV table: {str(exc).strip().splitlines()[0]}") from None
        keys, reference, alpha = list(KINDS[kind]), None, 0.05
        saved = _read_saved_summary(directory / f"{kind}_summary.json")
        if isinstance(saved.get("keys"), list) and saved["keys"]:
            keys = [str(k) for k in saved["keys"]]
        if isinstance(saved.get("reference"), dict) and set(saved["reference"]) == set(keys):
            reference = saved["reference"]
        if isinstance(saved.get("alpha"), (int, float)) and 0 < saved["alpha"] < 1:
            alpha = float(saved["alpha"])
        if reference is None:
            reference = _default_reference(kind, runs, keys, path)
        studies.append({"kind": kind, "path": path, "runs": runs, "keys": keys, "reference": reference,
                        "alpha": alpha})
    return studies


def _read_saved_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _default_reference(kind: str, runs: pd.DataFrame, keys: Sequence[str], path: Path) -> dict[str, Any]:
    missing = [k for k in keys if k not in runs.columns]
    if missing:
        raise ConfigError(f"{path} has no column {', '.join(repr(c) for c in missing)} "
                          f"(a {kind} study's cells are {', '.join(keys)})")
    if runs.empty:
        first = dict.fromkeys(keys)
    else:
        first = {k: _norm(v) for k, v in runs.iloc[0][list(keys)].items()}
    if kind == "precision":
        return {**first, "rounding": "none", "bits": 24, "policy": "float32"}
    return first
