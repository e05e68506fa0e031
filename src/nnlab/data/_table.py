"""A user's regression table: columns chosen, checked, text one-hot encoded, split and scaled.

The table is read in chunks into one growing block per kind: numeric feature
columns as float32 offsets from a per-column reference value (so a column like a
timestamp keeps its resolution), targets as float64; text columns as pandas
categoricals. The input matrix is then filled in split order (train, validation,
test), so the three parts are views of it, not copies. A 1,000,000 x 20 table is
prepared in about 2 s with a peak under three times its float32 array
(``benchmarks/table_load.py``, docs/performance.md).

Example:
    >>> prepared = prepare_table("my.csv", targets=["price"])  # doctest: +SKIP
    >>> prepared.feature_names[:3]  # doctest: +SKIP
    ['rooms', 'area', 'district=north']
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from nnlab.data._io import read_header
from nnlab.errors import ConfigError, DataValidationError

logger = logging.getLogger("nnlab.data")

__all__ = ["MAX_CATEGORIES", "MISSING_MARKERS", "ROWS_PER_CATEGORY", "TableEncoding", "encode_table",
           "prepare_table"]

# Read as missing besides pandas' own markers (NA, N/A, null, nan, an empty field, ...): UCI tables use '?'.
MISSING_MARKERS = ("?",)
# A text column may have at most this many categories among the training rows ...
MAX_CATEGORIES = 1000
# ... and at most one per this many training rows (a category seen a handful of times cannot be learnt).
ROWS_PER_CATEGORY = 5
# Names under which pandas (an unnamed index column) and R (write.csv, Rdatasets) write row numbers.
ROW_INDEX_NAMES = ("Unnamed: 0", "rownames", "")
CHUNK_ROWS = 16_384
ONE_HOT_SEPARATOR = "="


@dataclass(frozen=True)
class TableEncoding:
    """How raw rows of a table become network inputs: columns, categories, scalers.

    ``columns`` are the raw feature columns in order; ``encodings`` maps each
    text column to its categories (learnt from the training rows), one-hot
    encoded in place as ``column=category``. ``x_scaler`` standardises numeric
    columns and leaves the one-hot columns 0/1.
    """

    columns: tuple[str, ...]
    encodings: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for column in self.columns:
            if column in self.encodings:
                names += [f"{column}{ONE_HOT_SEPARATOR}{c}" for c in self.encodings[column]]
            else:
                names.append(column)
        return names


def encode_table(df: pd.DataFrame, encoding: TableEncoding, x_scaler: StandardScaler, *,
                 source: str = "the rows") -> np.ndarray:
    """Scaled float32 inputs of raw rows ``df`` (prediction): numeric columns scaled, text one-hot.

    Raises:
        DataValidationError: a feature column is missing, a numeric column holds text
            or missing values, or a text column holds a category unseen in training.
    """
    missing = [c for c in encoding.columns if c not in df.columns]
    if missing:
        raise DataValidationError(f"{source} lack the feature column(s) {missing} the network was trained on")
    blocks, problems = [], []
    for column in encoding.columns:
        values = df[column]
        if column in encoding.encodings:
            known = encoding.encodings[column]
            text = values.astype("string")
            unseen = sorted(set(text.dropna()) - set(known))
            if unseen or text.isna().any():
                shown = ", ".join(repr(u) for u in unseen[:5]) or "a missing value"
                problems.append(f"column '{column}' holds {shown}, not a category seen in training "
                                f"(known: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''})")
                continue
            codes = pd.Categorical(text, categories=list(known)).codes
            blocks.append(np.eye(len(known), dtype=np.float64)[codes])
        else:
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.isfinite(numbers).all():
                problems.append(f"column '{column}' holds {int((~np.isfinite(numbers)).sum())} missing, "
                                "infinite or non-numeric value(s)")
                continue
            blocks.append(numbers[:, None])
    if problems:
        raise _refused(source, problems)
    X = np.hstack(blocks) if blocks else np.zeros((len(df), 0))
    return ((X - x_scaler.mean_) / x_scaler.scale_).astype(np.float32)


# --- choosing columns ------------------------------------------------------------------------------


def _unknown(names: Sequence[str], header: Sequence[str], option: str) -> list[str]:
    problems = []
    for name in names:
        if name not in header:
            close = difflib.get_close_matches(name, list(header), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"the columns are {_listed(header)}"
            problems.append(f"{option}: no column '{name}' in the table; {hint}")
    return problems


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} columns)" if len(names) > limit else "")


def _choose_columns(header: list[str], targets: Sequence[str], features: Sequence[str] | None,
                    where: str) -> tuple[list[str], list[str] | None]:
    """Check the chosen names against the header; the features (None: decided after reading)."""
    problems = []
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        problems.append(f"column name(s) repeated in the header: {repeated}; every column name must be unique")
    targets = list(targets)
    if not targets:
        problems.append("--targets: name at least one column to predict")
    problems += _unknown(targets, header, "--targets (data_targets)")
    if features is not None:
        features = list(features)
        problems += _unknown(features, header, "--features (data_features)")
        both = [f for f in features if f in targets]
        if both:
            problems.append(f"column(s) {both} are given both as target and as feature; a target cannot be "
                            "an input: drop them from --features (data_features)")
        if not features:
            problems.append("--features: name at least one input column")
    for kind, names in (("targets", targets), ("features", features or [])):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"--{kind}: column(s) {twice} named more than once")
    if problems:
        raise _refused(where, problems)
    return targets, features


def _refused(where: str, problems: list[str]) -> DataValidationError:
    """One problem on the line of the file's name; several, one per line below it."""
    if len(problems) == 1:
        return DataValidationError(f"{where}: {problems[0]}", problems)
    return DataValidationError(f"{where}: {len(problems)} problems:\n  " + "\n  ".join(problems), problems)


# --- reading ----------------------------------------------------------------------------------------


class _Rows:
    """A growing 2-D block of one dtype, filled chunk by chunk.

    One large allocation rather than a list of small chunks: freed, it goes back to
    the system at once (glibc keeps small freed chunks in the process's heap).
    """

    def __init__(self, width: int, dtype: type, capacity: int) -> None:
        self.data, self.size = np.empty((max(capacity, 1), width), dtype=dtype), 0

    def append(self, block: np.ndarray) -> None:
        need = self.size + len(block)
        if need > len(self.data):  # the row estimate was short: grow by half
            grown = np.empty((max(need, len(self.data) * 3 // 2), self.data.shape[1]), dtype=self.data.dtype)
            grown[:self.size] = self.data[:self.size]
            self.data = grown
        self.data[self.size:need] = block
        self.size = need

    @property
    def values(self) -> np.ndarray:
        return self.data[:self.size]


@dataclass
class _Column:
    """What the pass over the rows learnt of one column."""

    name: str
    role: str  # "target" | "feature" | "index?" (a row-index candidate, kept exact and as a feature)
    text: bool = False
    chunks: list = field(default_factory=list)  # a text column's categoricals, chunk by chunk
    offset: float = 0.0  # a numeric feature is stored as float32(value - offset)
    slot: int = -1  # its column in the feature block
    exact: int = -1  # its column in the float64 block (targets, row-index candidates)
    missing: int = 0
    infinite: int = 0
    example: Any = None


class _TextFound(Exception):
    """A column read as numbers in an earlier chunk holds text: read again with it as text."""

    def __init__(self, names: set[str]) -> None:
        super().__init__(names)
        self.names = names


@dataclass
class _Pass:
    """One pass over the rows: the columns, and the numeric blocks once the first chunk has been seen."""

    columns: dict[str, _Column]
    capacity: int
    features: _Rows | None = None
    exact: _Rows | None = None
    dropped: int = 0

    def start(self, chunk: pd.DataFrame) -> None:
        """Allocate the blocks and the reference values (offsets) from the first chunk."""
        numeric = [c for c in self.columns.values() if not c.text]
        for slot, col in enumerate(c for c in numeric if c.role != "target"):
            col.slot = slot
            finite = chunk[col.name].to_numpy(dtype=np.float64, na_value=np.nan)
            finite = finite[np.isfinite(finite)]
            col.offset = float(np.median(finite)) if finite.size else 0.0
        for slot, col in enumerate(c for c in numeric if c.role != "feature"):
            col.exact = slot
        self.features = _Rows(sum(c.slot >= 0 for c in numeric), np.float32, self.capacity)
        self.exact = _Rows(sum(c.exact >= 0 for c in numeric), np.float64, self.capacity)

    def store(self, chunk: pd.DataFrame, keep: np.ndarray | None) -> None:
        """Append one chunk (``keep``: the complete rows when dropping missing ones)."""
        if keep is not None:
            chunk = chunk[keep]
        block = np.empty((len(chunk), self.features.data.shape[1]), dtype=np.float32)
        exact = np.empty((len(chunk), self.exact.data.shape[1]), dtype=np.float64)
        for col in self.columns.values():
            if col.text:
                col.chunks.append(pd.Categorical(chunk[col.name].astype("string")))
                continue
            values = chunk[col.name].to_numpy(dtype=np.float64, na_value=np.nan)
            if col.slot >= 0:
                block[:, col.slot] = values - col.offset
            if col.exact >= 0:
                exact[:, col.exact] = values
        self.features.append(block)
        self.exact.append(exact)


def _count(col: _Column, values: pd.Series) -> np.ndarray:
    """Count the chunk's missing and infinite values; returns the rows that are missing."""
    missing = values.isna().to_numpy()
    col.missing += int(missing.sum())
    if not col.text:
        inf = np.isinf(values.to_numpy(dtype=np.float64, na_value=np.nan))
        col.infinite += int(inf.sum())
    return missing


def _estimated_rows(path: Path) -> int:
    """Data rows in the file, estimated from the length of its first lines (the blocks grow if it is short)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    lines = max(head.count(b"\n"), 1)
    return int(path.stat().st_size / (len(head) / lines) * 1.02) + 16


def _read_pass(path: Path, run: _Pass, drop_missing: bool) -> None:
    """One pass over the rows, in chunks."""
    columns = run.columns
    text = {name: "string" for name, col in columns.items() if col.text}
    reader = pd.read_csv(path, usecols=list(columns), dtype=text, na_values=list(MISSING_MARKERS),
                         chunksize=CHUNK_ROWS, low_memory=False)
    with reader:
        for chunk in reader:
            found = {c for c in columns if not columns[c].text and not pd.api.types.is_numeric_dtype(chunk[c])}
            if found:
                raise _TextFound(found)
            if run.features is None:
                run.start(chunk)
            gaps = np.zeros(len(chunk), dtype=bool)
            for name, col in columns.items():
                if col.example is None and col.text and chunk[name].notna().any():
                    col.example = chunk[name].dropna().iloc[0]
                gaps |= _count(col, chunk[name])
            keep = ~gaps if drop_missing and gaps.any() else None
            run.dropped += int(gaps.sum()) if keep is not None else 0
            run.store(chunk, keep)


def _read(path: Path, roles: dict[str, str], drop_missing: bool, where: str) -> _Pass:
    """Read the chosen columns (text columns found on the way are read again as text)."""
    text: set[str] = set()
    capacity = _estimated_rows(path)
    while True:
        run = _Pass({name: _Column(name, role, text=name in text) for name, role in roles.items()}, capacity)
        try:
            _read_pass(path, run, drop_missing)
        except _TextFound as exc:
            text |= exc.names
            continue
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataValidationError(f"{where} is not valid CSV: {exc}") from exc
        except OSError as exc:
            raise DataValidationError(f"cannot read {where}: {exc}") from exc
        if run.features is None:  # a header and no rows
            run.start(pd.DataFrame({name: pd.Series(dtype=float) for name in roles}))
        return run


def _is_row_index(values: np.ndarray) -> bool:
    """Integers that number the rows: 0, 1, 2, ... or 1, 2, 3, ..."""
    return values.size > 0 and values[0] in (0, 1) and bool(np.all(values == values[0] + np.arange(values.size)))


# --- checking ---------------------------------------------------------------------------------------


def _problems(columns: dict[str, _Column], drop_missing: bool) -> list[str]:
    problems = []
    for col in columns.values():
        if col.role == "target" and col.text:
            problems.append(f"target column '{col.name}' is not numeric (it holds text, e.g. {col.example!r}); "
                            "a target must be a number")
    missing = {c.name: c.missing for c in columns.values() if c.missing}
    if missing and not drop_missing:
        problems.append("missing values in " + ", ".join(f"'{n}' ({_rows(k)})" for n, k in missing.items())
                        + "; pass --drop-missing (config key data_drop_missing) to leave those rows out, or fill "
                          "them in")
    infinite = {c.name: c.infinite for c in columns.values() if c.infinite}
    if infinite:
        problems.append("infinite values in " + ", ".join(f"'{n}' ({_rows(k)})" for n, k in infinite.items())
                        + "; replace or remove them")
    return problems


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _categories(col: _Column, train: np.ndarray, problems: list[str]) -> tuple[np.ndarray, tuple]:
    """The column's category codes against the categories of the training rows (-1: unseen there)."""
    from pandas.api.types import union_categoricals

    merged = union_categoricals(col.chunks, sort_categories=True) if col.chunks else pd.Categorical([])
    col.chunks = []
    codes = np.asarray(merged.codes)
    present = np.unique(codes[train])
    present = present[present >= 0]
    known = tuple(str(c) for c in np.asarray(merged.categories)[present])
    limit = min(MAX_CATEGORIES, max(2, len(train) // ROWS_PER_CATEGORY))
    if len(known) > limit:
        problems.append(f"text column '{col.name}' has {len(known)} categories in {len(train)} training rows; at "
                        f"most {limit} are allowed (one per {ROWS_PER_CATEGORY} training rows, at most "
                        f"{MAX_CATEGORIES}): leave it out of --features, or encode it as a number")
    remap = np.full(len(merged.categories) + 1, -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    return remap[codes], known


# --- assembling --------------------------------------------------------------------------------------


def _header(path: Path, where: str) -> list[str]:
    """The column names as pandas reads them (an unnamed column is ``Unnamed: i``); refuses what is not CSV."""
    from nnlab.data._io import check_data_file

    check_data_file(path, what="data file")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{where} is empty (0 bytes)")
    raw = read_header(path)
    if raw is None:
        raise DataValidationError(f"{where} has no header row")
    if len(raw) == 1 and any(sep in raw[0] for sep in (";", "\t", "|")):
        raise DataValidationError(f"{where} looks ';'-, tab- or '|'-separated (header {raw[0][:60]!r}); nnlab "
                                  "reads comma-separated CSV: save it again with ',' between the values")
    repeated = sorted({h for h in raw if raw.count(h) > 1 and h.strip()})
    if repeated:
        raise DataValidationError(f"{where}: column name(s) repeated in the header: {repeated}; every column "
                                  "name must be unique")
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataValidationError(f"{where} is not valid CSV: {exc}") from exc


def _roles(header: list[str], targets: list[str], features: list[str] | None) -> dict[str, str]:
    if features is not None:
        return {**{t: "target" for t in targets}, **{f: "feature" for f in features}}
    return {name: "target" if name in targets else "index?" if name in ROW_INDEX_NAMES else "feature"
            for name in header}


def _settle_index_columns(run: _Pass, where: str) -> None:
    """Leave out a row-number column (with a note); any other candidate is a feature."""
    for name in [n for n, c in run.columns.items() if c.role == "index?"]:
        col = run.columns[name]
        if not col.text and _is_row_index(run.exact.values[:, col.exact]):
            logger.info("%s: column '%s' numbers the rows (a row index); it is left out of the features",
                        where, name)
            del run.columns[name]
            continue
        col.role = "feature"


def _check(run: _Pass, feature_cols: list[_Column], split: dict[str, Any], drop_missing: bool, where: str
           ) -> tuple[np.ndarray, tuple[int, int], dict[str, tuple[np.ndarray, tuple]]]:
    """Every problem of the table at once; the rows in split order (train, validation, test), the
    sizes of the first two parts, and each text column's codes (in split order) and categories."""
    from nnlab.data._prepare import split_indices

    problems = _problems(run.columns, drop_missing)
    if not feature_cols:
        problems.append("no feature column is left besides the targets; the table needs at least one input column")
    indices: tuple[np.ndarray, ...] = ()
    try:
        indices = split_indices(run.features.size, **split)
    except DataValidationError as exc:
        problems.append(str(exc))
    encoded = {c.name: _categories(c, indices[0], problems) for c in feature_cols if c.text and indices}
    if problems:
        raise _refused(where, problems)
    order = np.concatenate(indices)
    return order, (len(indices[0]), len(indices[1])), {k: (v[0][order], v[1]) for k, v in encoded.items()}


def _fill_inputs(run: _Pass, features: list[_Column], order: np.ndarray,
                 encoded: dict[str, tuple[np.ndarray, tuple]]) -> tuple[np.ndarray, list[tuple[_Column, int]]]:
    """The unscaled input matrix, rows in split order (numeric offsets, one-hot 0/1), and each numeric
    column's index in it; the feature block is freed."""
    width = sum(len(encoded[c.name][1]) if c.text else 1 for c in features)
    X = np.empty((len(order), width), dtype=np.float32)
    numeric, j = [], 0
    for col in features:
        if col.text:
            codes, known = encoded[col.name]
            X[:, j:j + len(known)] = 0.0
            rows = np.flatnonzero(codes >= 0)
            X[rows, j + codes[rows]] = 1.0
            j += len(known)
            continue
        X[:, j] = run.features.values[order, col.slot]  # a gather: one column at a time
        numeric.append((col, j))
        j += 1
    run.features = None
    return X, numeric


def _scale_inputs(X: np.ndarray, numeric: list[tuple[_Column, int]], n_train: int, where: str) -> StandardScaler:
    """Standardise the numeric columns in place with the training rows' statistics (the first
    ``n_train``); one-hot columns stay 0/1. The fitted scaler."""
    mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
    for col, j in numeric:
        values = X[:, j].astype(np.float64)
        if values.size and values.min() == values.max():
            warnings.warn(f"{where}: column '{col.name}' is constant ({values[0] + col.offset:g}); it "
                          "carries no information", UserWarning, stacklevel=4)
        m = float(values[:n_train].mean())
        with np.errstate(over="ignore", invalid="ignore"):
            s = float(values[:n_train].std())
            s = s if s > 0 else 1.0
            X[:, j] = (values - m) / s
        mean[j], scale[j] = m + col.offset, s
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = mean, scale, scale ** 2
    scaler.n_features_in_, scaler.n_samples_seen_ = X.shape[1], n_train
    return scaler


def _warn_unseen(encoded: dict[str, tuple[np.ndarray, tuple]], where: str) -> None:
    for name, (codes, _) in encoded.items():
        unseen = int((codes < 0).sum())
        if unseen:
            warnings.warn(f"{where}: {unseen} validation/test row(s) hold a category of '{name}' that no training "
                          "row has; they are encoded as none of the known categories", UserWarning, stacklevel=4)


def _scaled_targets(run: _Pass, targets: list[str], order: np.ndarray, n_train: int
                    ) -> tuple[np.ndarray, StandardScaler]:
    y = run.exact.values[order][:, [run.columns[t].exact for t in targets]]
    run.exact = None
    y_scaler = StandardScaler().fit(y[:n_train])
    with np.errstate(over="ignore", invalid="ignore"):
        return y_scaler.transform(y).astype(np.float32), y_scaler


def prepare_table(path: str | os.PathLike, *, targets: Sequence[str], features: Sequence[str] | None = None,
                  test_size: float = 0.2, val_size: float = 0.2, random_state: int | None = 42,
                  drop_missing: bool = False) -> Any:
    """Read, check, split and scale a user's regression table (a CSV) for training.

    Numeric columns are standardised with statistics of the training rows; text
    columns are one-hot encoded with the categories of the training rows (a
    category seen only in validation/test rows is encoded as none, with a
    warning). Without ``features`` every column but the targets is used, except a
    column that numbers the rows (pandas' ``Unnamed: 0``, R's ``rownames``).

    Args:
        path: the CSV file (never modified).
        targets: the column(s) to predict (numeric).
        features: the input columns (None: all the others).
        test_size, val_size, random_state: the split, as for the particle data.
        drop_missing: leave out rows with a missing value in a used column (else refused).

    Returns:
        A :class:`~nnlab.data.PreparedData` with ``task == "table"``, its ``columns``
        and ``encodings``.

    Raises:
        DataValidationError: every problem at once, naming the columns: unknown or
            repeated columns, a target given as a feature, a non-numeric target,
            missing or infinite values, too many categories, too few rows.

    Warns:
        UserWarning: a constant column; categories unseen in the training rows.
    """
    from nnlab.data._prepare import TABLE_TASK, PreparedData

    p = Path(path)
    where = f"data file {p}"
    header = _header(p, where)
    targets, features = _choose_columns(header, targets, features, where)
    run = _read(p, _roles(header, targets, features), drop_missing, where)
    _settle_index_columns(run, where)
    feature_cols = [c for c in run.columns.values() if c.role == "feature"]
    if run.dropped:
        logger.info("%s: --drop-missing left out %d of %d rows with a missing value", where, run.dropped,
                    run.features.size + run.dropped)
    split = dict(test_size=test_size, val_size=val_size, random_state=random_state)
    order, (n_train, n_val), encoded = _check(run, feature_cols, split, drop_missing, where)
    _warn_unseen(encoded, where)
    ys, y_scaler = _scaled_targets(run, targets, order, n_train)  # first: its block is freed before X is made
    X, numeric = _fill_inputs(run, feature_cols, order, encoded)
    x_scaler = _scale_inputs(X, numeric, n_train, where)
    encoding = TableEncoding(tuple(c.name for c in feature_cols), {k: v[1] for k, v in encoded.items()})
    names = encoding.feature_names
    finite = np.concatenate([np.isfinite(X).all(axis=0), np.isfinite(ys).all(axis=0)])
    bad = [name for name, ok in zip([*names, *targets], finite) if not ok]
    if bad:
        raise DataValidationError(f"{where}: column(s) {bad} hold values too large to standardise into float32")
    cut = (n_train, n_train + n_val)  # the parts are views of one array, rows in split order: no copies
    return PreparedData(X[:cut[0]], X[cut[0]:cut[1]], X[cut[1]:], ys[:cut[0]], ys[cut[0]:cut[1]], ys[cut[1]:],
                        x_scaler, y_scaler, names, list(targets), task=TABLE_TASK,
                        columns=list(encoding.columns), encodings={k: list(v) for k, v in encoding.encodings.items()})
