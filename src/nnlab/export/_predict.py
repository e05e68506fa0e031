"""Predictions of a trained run for the raw rows of a CSV: the input columns plus one ``predicted_<target>`` each.

Everything that can be refused is refused before the network (and TensorFlow) is
loaded: the destination (an existing file without ``force``; a directory, named
pipe or device ever), the input file (missing, not a regular file, empty, not CSV,
another separator, repeated or missing columns), and the input values (the
particle task's initial quantities are checked like training data; a table's
columns by :func:`nnlab.data.encode_table`). The output is written atomically, so
a refused or failed prediction leaves nothing behind.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nnlab._files import atomic_write
from nnlab.errors import ConfigError, DataValidationError

__all__ = ["PREDICTED_PREFIX", "Prediction", "predict_csv"]

#: The output column of target ``t`` is ``predicted_t``.
PREDICTED_PREFIX = "predicted_"

_SEPARATORS = ((";", "';'"), ("\t", "tab"), ("|", "'|'"))


@dataclass(frozen=True)
class _Names:
    """How messages name the input, the destination and the way to replace it."""

    input: str
    out: str
    force: str


_API = _Names("input_csv", "out_csv", "use force=True")
CLI_NAMES = _Names("INPUT", "--out", "pass --force")


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict_rows` wrote: the file, its row count, the run and its weights."""

    path: Path
    rows: int
    run_id: str
    weights: str

    def summary(self) -> str:
        return (f"predicted {self.rows} row(s) with run {self.run_id} ({self.weights} weights): "
                f"wrote {self.path}")


def predict_csv(input_csv: str | os.PathLike, out_csv: str | os.PathLike, *,
                output_dir: str | os.PathLike = "training_output", run: str = "latest",
                weights: str = "final", force: bool = False) -> Path:
    """Predict the targets of a trained run for the raw rows of ``input_csv``; write them to ``out_csv``.

    The output holds the input's columns exactly as read, followed by one
    ``predicted_<target>`` column per target of the run, in physical units.

    Args:
        input_csv: raw rows: for the particle task the simulator's 8 initial
            columns (other columns, e.g. the final ones, are carried along); for a
            table run its feature columns.
        out_csv: the CSV to write (missing parent directories are created).
        output_dir: the training output root holding ``runs/``.
        run: a run id, or ``"latest"``.
        weights: ``"final"`` or ``"best"``.
        force: replace an existing ``out_csv``.

    Returns:
        ``out_csv`` as a ``Path``.

    Raises:
        ConfigError: ``out_csv`` exists (without ``force``), is a directory, pipe or
            device, is the input file, or cannot be created.
        DataValidationError: the input file or its values, naming columns and rows.
        NnlabError: no such run, or its weights are missing.

    Example:
        >>> predict_csv("new_particles.csv", "predicted.csv", run="latest")  # doctest: +SKIP
        PosixPath('predicted.csv')
    """
    return predict_rows(input_csv, out_csv, output_dir=output_dir, run=run, weights=weights, force=force).path


def predict_rows(input_csv: str | os.PathLike, out_csv: str | os.PathLike, *,
                 output_dir: str | os.PathLike = "training_output", run: str = "latest", weights: str = "final",
                 force: bool = False, names: _Names = _API) -> Prediction:
    """:func:`predict_csv`, returning what was written; ``names`` words the messages (CLI or API)."""
    from nnlab.data import check_data_file
    from nnlab.export._run import TrainedRun

    out = check_destination(out_csv, force=force, names=names)
    source = check_data_file(input_csv, option=names.input, what="input file")
    if out.exists() and os.path.samefile(source, out):
        raise ConfigError(f"{names.out}: '{out}' is the input file; write the predictions to another file")
    if source.stat().st_size == 0:
        raise DataValidationError(f"{names.input}: input file {source} is empty (0 bytes)")
    trained = TrainedRun.load(output_dir, run, weights=weights)  # no TensorFlow yet
    where = f"input file {source}"
    raw, header = _read_raw(source, where)
    _check_columns(raw, header, trained.inputs, trained.targets, where)
    rows = _read_inputs(source, trained, where)
    if trained.task != "table":
        _check_particles(rows, where)
    predicted = trained.predict(rows, source=where)
    for j, target in enumerate(trained.targets):
        raw[PREDICTED_PREFIX + target] = predicted[:, j]
    columns = [*header, *(PREDICTED_PREFIX + t for t in trained.targets)]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda fh: raw.to_csv(fh, index=False, header=columns))
    return Prediction(out, len(raw), trained.run_id, weights)


# --- the destination ----------------------------------------------------------------------------------


def check_destination(path: str | os.PathLike, *, force: bool, names: _Names = _API) -> Path:
    """Refuse, before any work, an output CSV that may not or cannot be written.

    An existing file is replaced only with ``force``; a directory, named pipe,
    device or socket never. Missing parent directories are allowed where they
    can be created (probed with a temporary file, removed at once).

    Raises:
        ConfigError: naming the path and why.
    """
    from nnlab.data import check_output_file

    return check_output_file(path, force=force, option=names.out, sidecar=False, example="predicted.csv",
                             advice=f"{names.force} to replace it")


# --- reading the input ------------------------------------------------------------------------------


def _read_raw(path: Path, where: str) -> tuple[pd.DataFrame, list[str]]:
    """Every column as the text it holds (what the output carries), and the header as written."""
    from nnlab.data import read_header

    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{where} is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"{where} is not valid CSV: {str(exc).strip()}") from None
    header = read_header(path)
    if header is None or len(header) != len(raw.columns):
        header = [str(c) for c in raw.columns]
    return raw, header


def _separator_hint(header: list[str], expected: list[str]) -> str:
    if len(header) != 1:
        return ""
    for sep, label in _SEPARATORS:
        parts = [part.strip() for part in header[0].split(sep)]
        if len(parts) >= 2 and any(part in expected for part in parts):
            return (f"; the header looks {label}-separated ({header[0][:40]!r}): nnlab reads comma-separated CSV, "
                    "save it again with ',' between the values")
    return ""


def _check_columns(raw: pd.DataFrame, header: list[str], inputs: list[str], targets: list[str], where: str) -> None:
    """Repeated names, missing input columns, names the output would add, rows: all reported at once."""
    problems = []
    repeated = sorted(name for name, count in Counter(header).items() if count > 1)
    if repeated:
        problems.append(f"column name(s) repeated in the header: {repeated}; every column name must be unique")
    missing = [c for c in inputs if c not in header]
    if missing:
        problems.append(f"missing input column(s) {missing}; the run's network takes {inputs}"
                        + _separator_hint(header, inputs))
    taken = [PREDICTED_PREFIX + t for t in targets if PREDICTED_PREFIX + t in header]
    if taken:
        problems.append(f"column(s) {taken} already exist; the predictions are written under these names: "
                        "rename or drop them in the input")
    if not problems and len(raw) == 0:
        problems.append("a header but no data rows")
    if problems:
        raise _refused(where, problems)


def _read_inputs(path: Path, trained, where: str) -> pd.DataFrame:
    """The input columns parsed as training reads them (a table: '?' missing, text columns as text)."""
    from nnlab.data import MISSING_MARKERS

    options: dict = {}
    if trained.task == "table":
        options = {"na_values": list(MISSING_MARKERS), "dtype": {c: "string" for c in trained.text_inputs}}
    try:
        return pd.read_csv(path, usecols=list(trained.inputs), low_memory=False, **options)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataValidationError(f"{where} is not valid CSV: {str(exc).strip()}") from None


def _refused(where: str, problems: list[str]) -> DataValidationError:
    if len(problems) == 1:
        return DataValidationError(f"{where}: {problems[0]}", problems)
    return DataValidationError(f"{where}: {len(problems)} problems:\n  " + "\n  ".join(problems), problems)


# --- the particle task's initial quantities -----------------------------------------------------------


def _rows_text(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask) + 1
    shown = ", ".join(str(r) for r in rows[:5])
    return f"{len(rows)} row(s) (data row{'s' if len(rows) > 1 else ''} {shown}{', ...' if len(rows) > 5 else ''})"


def _column_problems(name: str, column: pd.Series) -> tuple[list[str], np.ndarray | None]:
    """One column's non-numbers, missing, non-finite and out-of-range values; its values when numeric."""
    from nnlab.data import MAX_ABS_VALUE

    if pd.api.types.is_bool_dtype(column):
        return [f"column '{name}' holds true/false values, not numbers"], None
    values = column if pd.api.types.is_numeric_dtype(column) else pd.to_numeric(column, errors="coerce")
    text = (values.isna() & column.notna()).to_numpy()
    if text.any():
        return [f"column '{name}': {_rows_text(text)} hold non-numbers, e.g. {column[text].iloc[0]!r}"], None
    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(numbers)
    found = [(~finite, "are missing, NaN or infinite"),
             (finite & (np.abs(numbers) > MAX_ABS_VALUE), f"are out of range (|value| > {MAX_ABS_VALUE:g}: squares "
                                                          "and sums of such values overflow float64)")]
    return [f"column '{name}': {_rows_text(mask)} {what}" for mask, what in found if mask.any()], numbers


def _check_particles(rows: pd.DataFrame, where: str) -> None:
    """The rules of training data that concern the initial columns; every problem reported at once."""
    from nnlab.data import INITIAL_COLUMNS

    problems, cols = [], {}
    for name in INITIAL_COLUMNS:
        found, values = _column_problems(name, rows[name])
        problems += found
        if values is not None:
            cols[name] = values
    with np.errstate(invalid="ignore"):
        for name, what, broken in (("mass", "have mass <= 0 (a particle's mass must be positive)", np.less_equal),
                                   ("simulation_time", "are negative (a simulation time is >= 0)", np.less)):
            if name in cols and (mask := broken(cols[name], 0)).any():
                problems.append(f"column '{name}': {_rows_text(mask)} {what}")
    if len(cols) == len(INITIAL_COLUMNS) and not problems:
        problems += _derived_overflow(cols)
    if problems:
        raise _refused(where, problems)


def _derived_overflow(cols: dict[str, np.ndarray]) -> list[str]:
    """Rows whose derived features (what the network is fed) overflow or leave the accepted range."""
    from nnlab.data import DERIVED_FEATURES, INITIAL_COLUMNS, MAX_ABS_VALUE, add_derived_features

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        derived = add_derived_features(pd.DataFrame(cols, columns=INITIAL_COLUMNS))
        broken = {n: ~(np.abs(derived[n].to_numpy()) <= MAX_ABS_VALUE) for n in DERIVED_FEATURES}
    names = [n for n, mask in broken.items() if mask.any()]
    if not names:
        return []
    mask = np.logical_or.reduce([broken[n] for n in names])
    return [f"derived feature(s) {', '.join(names)}: {_rows_text(mask)} overflow (not finite or |value| > "
            f"{MAX_ABS_VALUE:g}) when computed from the initial columns"]
