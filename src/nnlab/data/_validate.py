"""Structural, sanity and physics checks of particle data."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nnlab.data._simulate import (
    DERIVED_FEATURES,
    FINAL_COLUMNS,
    INITIAL_COLUMNS,
    REQUIRED_COLUMNS,
    add_derived_features,
)
from nnlab.errors import DataValidationError

logger = logging.getLogger("nnlab.data")

# Largest |value| accepted in a column or derived feature. The physics checks, the
# features and the scalers square and sum values; beyond ~1e154 a square overflows
# float64 and the result (inf, or a variance of inf) would silently become NaN or inf
# in the float32 training arrays. 1e150 leaves room for sums over many rows.
MAX_ABS_VALUE = 1e150

_SEPARATORS = ((";", "';'"), ("\t", "tab"), ("|", "'|'"))


def separator_hint(names: list[str]) -> str | None:
    """A hint when header names look joined by another separator than ',' (else None).

    A ';'- or tab-separated file read as CSV gives one column named
    ``particle_id;mass;...``; say so instead of only listing every column as missing.

    Args:
        names: the column names as read.

    Returns:
        ``"looks ';'-separated; nnlab reads comma-separated CSV ..."`` or None.
    """
    for name in map(str, names):
        for sep, label in _SEPARATORS:
            parts = [part.strip() for part in name.split(sep)]
            if len(parts) >= 2 and any(part in REQUIRED_COLUMNS for part in parts):
                return (f"looks {label}-separated (header starts {name[:40]!r}); nnlab reads "
                        "comma-separated CSV: save it again with ',' between the values")
    return None


def _mostly(close: np.ndarray, counted: np.ndarray) -> bool:
    """True when most rows that can tell the two readings apart (``counted``) are ``close``."""
    n = int(counted.sum())
    return n > 0 and int((close & counted).sum()) * 2 > n


def original_lab_signs(df: pd.DataFrame) -> list[str]:
    """Why ``df`` looks like a particle CSV of the original lab, or ``[]`` when it does not.

    The original lab wrote no ``displacement`` column, put the displacement
    |r_final - r_initial| in ``trajectory_length`` (nnlab: the path length
    |v_initial|·t) and turned the velocity the opposite way (the other sign of
    ``w = qB/m``). The data is taken for the original's when ``displacement`` is
    missing while every other column is there, or when most rows rotate the other
    way; the signs found are listed. Rows where the readings cannot be told apart
    (neutral particles, tiny phases) or are not numbers do not count.

    Args:
        df: particle data as read.

    Returns:
        Short phrases, e.g. ``["no displacement column", ...]``.
    """
    others = [c for c in (*INITIAL_COLUMNS, *FINAL_COLUMNS) if c != "displacement"]
    if not isinstance(df, pd.DataFrame) or len(df) == 0 or any(c not in df.columns for c in others):
        return []
    if any(isinstance(df[c], pd.DataFrame) for c in others):  # a repeated name: reported elsewhere
        return []
    cols = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            for c in others}
    m, vx, vy, x0, y0, q, b, t = (cols[c] for c in INITIAL_COLUMNS)
    with np.errstate(all="ignore"):  # NaN rows compare False and do not count
        phase = q * b / m * t
        sin_p, cos_p = np.sin(phase), np.cos(phase)
        speed = np.hypot(vx, vy)
        fvx, fvy = cols["final_velocity_x"], cols["final_velocity_y"]
        to_nnlab = np.hypot(fvx - (vx * cos_p + vy * sin_p), fvy - (vy * cos_p - vx * sin_p))
        to_original = np.hypot(fvx - (vx * cos_p - vy * sin_p), fvy - (vy * cos_p + vx * sin_p))
        apart = 2 * np.abs(sin_p) * speed  # distance between the two rotated velocities
        # A negative mass or time turns the other way too: such rows are invalid, not the original's.
        sound = (m > 0) & (t >= 0)
        # "closer by far": tolerant of an original computed by numerical integration
        rotated = _mostly((to_original < 0.1 * apart) & ~(to_nnlab < 0.1 * apart), sound & (apart > 1e-3 * speed))
        arc = speed * t
        chord = np.hypot(cols["final_position_x"] - x0, cols["final_position_y"] - y0)
        tl = cols["trajectory_length"]
        holds_chord = _mostly(np.abs(tl - chord) < 0.1 * (arc - chord), sound & (arc - chord > 1e-3 * arc))
    missing = "displacement" not in df.columns
    if not (missing or rotated):
        return []
    return [sign for sign, found in (
        ("no displacement column", missing),
        ("trajectory_length holds the displacement |r_final - r_initial|, not |v_initial| * simulation_time",
         holds_chord),
        ("velocities rotate the opposite way for B along +z", rotated)) if found]


def original_lab_message(signs: list[str], source: str | os.PathLike | None = None) -> str:
    """The error for data ``original_lab_signs`` recognised, with the command that converts it."""
    if source is None:
        return (f"the particle data looks like that of the original lab ({'; '.join(signs)}): recompute its final "
                "columns with nnlab.data.resimulate_particle_data(df), or convert its file with "
                "`nnlab data resimulate OLD.csv NEW.csv`")
    name = os.fspath(source)
    return (f"{name} looks like a particle CSV of the original lab ({'; '.join(signs)}): convert it with "
            f"`nnlab data resimulate {shlex.quote(name)} NEW.csv`")


@dataclass
class ValidationReport:
    """What ``validate_particle_data`` kept and dropped.

    Args:
        data: the valid rows.
        n_rows_in: rows before validation.
        n_dropped: rows removed (only with ``drop_invalid=True``).
        problems: one line per rule that dropped rows, with its row count.
    """

    data: pd.DataFrame
    n_rows_in: int
    n_dropped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was wrong with the data."""
        return self.n_dropped == 0 and not self.problems

    def summary(self) -> str:
        """Human-readable summary, one problem per line."""
        head = (f"{self.n_rows_in} rows checked: {self.n_rows_in - self.n_dropped} kept, "
                f"{self.n_dropped} dropped")
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


def _rows_text(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:5])
    return f"{len(rows)} row(s) (rows {shown}{', ...' if len(rows) > 5 else ''})"


#: What a row rule finds: the subject of the message, what is wrong, and the offending rows.
Finding = tuple[str, str, np.ndarray]


@dataclass(frozen=True)
class RowRule:
    """A rule every row must keep; rows that break it are dropped (``drop_invalid``) or reported.

    Args:
        name: what the rule checks, for the reader of :data:`ROW_RULES`.
        needs: the columns it reads; it is checked only when all of them are numeric.
        find: ``find(cols, rtol, atol)`` -> the :data:`Finding` s (a subject, the
            message after the row count, a boolean mask of the offending rows);
            an all-False mask is no problem.
    """

    name: str
    needs: tuple[str, ...]
    find: Callable[[Mapping[str, np.ndarray], float, float], list[Finding]]


def _every_column(cols: Mapping[str, np.ndarray], rtol: float, atol: float) -> list[Finding]:
    found = []
    for name, values in cols.items():
        found.append((f"column '{name}'", "are NaN or infinite", ~np.isfinite(values)))
        if name != "particle_id":  # an identifier, never squared or trained on
            found.append((f"column '{name}'", f"are out of range (|value| > {MAX_ABS_VALUE:g}: squares and "
                          "sums of such values overflow float64)",
                          np.isfinite(values) & (np.abs(values) > MAX_ABS_VALUE)))
    return found


def _value_rule(column: str, what: str, broken: Callable[[np.ndarray], np.ndarray]) -> RowRule:
    """A rule on the values of one column."""
    return RowRule(f"{column}: {what}", (column,),
                   lambda cols, rtol, atol: [(f"column '{column}'", what, broken(cols[column]))])


def _relation_rule(subject: str, expr: str, inputs: tuple[str, ...],
                   value: Callable[[Mapping[str, np.ndarray]], np.ndarray],
                   computed: Callable[[Mapping[str, np.ndarray]], np.ndarray], *,
                   scales: tuple[str, ...] = (), broken: str = "") -> RowRule:
    """A physics relation ``value == computed`` within ``atol + rtol * max(|value|, |computed|, |scales|)``."""

    def find(cols: Mapping[str, np.ndarray], rtol: float, atol: float) -> list[Finding]:
        left, right = value(cols), computed(cols)
        # Rows with a non-finite input are reported once, by the NaN/inf rule. Where the
        # inputs are finite but a side of the comparison is not, the check overflowed:
        # inf - inf is NaN and inf > inf is False, so the comparison alone would let it pass.
        finite_in = np.logical_and.reduce([np.isfinite(cols[c]) for c in inputs])
        overflow = finite_in & ~(np.isfinite(left) & np.isfinite(right))
        scale = np.maximum.reduce([np.abs(left), np.abs(right), *(np.abs(cols[c]) for c in scales)])
        with np.errstate(invalid="ignore", over="ignore"):
            differ = np.abs(left - right) > atol + rtol * scale  # NaN compares False: reported once
        return [(subject, f"overflow: {expr} is out of the float64 range", overflow),
                (subject, broken or f"differ from {expr}", finite_in & ~overflow & differ)]

    return RowRule(f"{subject}: {expr}", inputs, find)


def _derived_features_overflow(cols: Mapping[str, np.ndarray], rtol: float, atol: float) -> list[Finding]:
    # Training recomputes these features; rows where that overflows must fail here,
    # not later as inf in the training arrays.
    initial = np.column_stack([cols[c] for c in INITIAL_COLUMNS])
    usable = (np.isfinite(initial) & (np.abs(initial) <= MAX_ABS_VALUE)).all(axis=1) & (cols["mass"] > 0)
    derived = add_derived_features(pd.DataFrame(dict(zip(INITIAL_COLUMNS, initial.T)), copy=False))
    broken = {name: usable & ~(np.abs(derived[name].to_numpy()) <= MAX_ABS_VALUE) for name in DERIVED_FEATURES}
    names = [name for name, mask in broken.items() if mask.any()]
    if not names:
        return []
    return [(f"derived feature(s) {', '.join(names)}",
             f"overflow (not finite or |value| > {MAX_ABS_VALUE:g}) when computed from the initial columns",
             np.logical_or.reduce([broken[n] for n in names]))]


_VEL0 = ("initial_velocity_x", "initial_velocity_y")
_VEL1 = ("final_velocity_x", "final_velocity_y")
_POS = ("initial_position_x", "initial_position_y", "final_position_x", "final_position_y")


def _speed0(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.hypot(cols["initial_velocity_x"], cols["initial_velocity_y"])


def _speed2(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    return cols["final_velocity_x"] ** 2 + cols["final_velocity_y"] ** 2


#: The row rules, in the order of their messages.
ROW_RULES: tuple[RowRule, ...] = (
    RowRule("every column: finite and |value| <= MAX_ABS_VALUE", (), _every_column),
    _value_rule("mass", "have mass <= 0", lambda mass: mass <= 0),
    _value_rule("simulation_time", "are negative", lambda time: time < 0),
    _relation_rule("column 'kinetic_energy'", "mass * |v_final|^2 / 2", ("kinetic_energy", "mass", *_VEL1),
                   lambda c: c["kinetic_energy"], lambda c: 0.5 * c["mass"] * _speed2(c)),
    _relation_rule("columns 'final_velocity_x', 'final_velocity_y'", "the speed |v_final| or |v_initial|",
                   (*_VEL1, *_VEL0), lambda c: np.sqrt(_speed2(c)), _speed0,
                   broken="break speed conservation (|v_final| != |v_initial|)"),
    _relation_rule("column 'displacement'", "|r_final - r_initial|", ("displacement", *_POS),
                   lambda c: c["displacement"],
                   lambda c: np.hypot(c["final_position_x"] - c["initial_position_x"],
                                      c["final_position_y"] - c["initial_position_y"]),
                   scales=_POS),
    _relation_rule("column 'trajectory_length'", "|v_initial| * simulation_time",
                   ("trajectory_length", "simulation_time", *_VEL0),
                   lambda c: c["trajectory_length"], lambda c: _speed0(c) * c["simulation_time"]),
    RowRule("derived features: finite and |value| <= MAX_ABS_VALUE", INITIAL_COLUMNS, _derived_features_overflow),
)


def _structure(df: pd.DataFrame) -> tuple[list[str], dict[str, np.ndarray]]:
    """The structural problems (no rows, missing or non-numeric columns), and the numeric columns as float64."""
    structural: list[str] = []
    if len(df) == 0:
        structural.append("the data has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        hint = separator_hint(list(df.columns))
        structural.append(f"missing required column(s): {', '.join(missing)}"
                          + (f"; the header {hint}" if hint else ""))
    cols: dict[str, np.ndarray] = {}
    for name in (c for c in REQUIRED_COLUMNS if c in df.columns):
        col = df[name]
        if isinstance(col, pd.DataFrame):
            structural.append(f"column '{name}' appears more than once")
        elif pd.api.types.is_bool_dtype(col):
            structural.append(f"column '{name}' is not numeric (dtype bool)")
        else:
            # Object columns of plain numbers are accepted; anything else names its rows.
            values = col if pd.api.types.is_numeric_dtype(col) else pd.to_numeric(col, errors="coerce")
            bad = (values.isna() & col.notna()).to_numpy()
            if bad.any():
                structural.append(f"column '{name}' is not numeric (dtype {col.dtype}): "
                                  f"{_rows_text(bad)} hold non-numbers, e.g. {col[bad].iloc[0]!r}")
            else:
                cols[name] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return structural, cols


def _broken_rows(cols: Mapping[str, np.ndarray], *, rtol: float, atol: float) -> list[tuple[np.ndarray, str]]:
    """Each row rule's offending rows and message, for the rules whose columns are all numeric."""
    found = []
    # Overflow and division by zero (mass 0) are what the rules report, by row.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for rule in ROW_RULES:
            if all(name in cols for name in rule.needs):
                found += [(mask, f"{subject}: {_rows_text(mask)} {what}")
                          for subject, what, mask in rule.find(cols, rtol, atol) if mask.any()]
    return found


def validate_particle_data(df: pd.DataFrame, *, drop_invalid: bool = False, rtol: float = 1e-6,
                           atol: float = 1e-9, source: str | os.PathLike | None = None
                           ) -> ValidationReport:
    """Check particle data for structure, sanity and physical consistency.

    Every problem is collected before raising: missing or non-numeric columns (with a
    hint when the header looks ';'- or tab-separated), an empty frame, NaN/inf values,
    values out of range (|value| > ``MAX_ABS_VALUE``), mass <= 0, negative simulation
    time, and rows where kinetic_energy != m|v_final|²/2, |v_final| != |v_initial|,
    displacement != |r_final - r_initial| or trajectory_length != |v_initial|·t beyond
    ``|a - b| <= atol + rtol * max(|a|, |b|, scale)``. A check whose computed side
    overflows float64 (e.g. mass 1e308 makes m|v|²/2 infinite) is a problem of its own,
    never a pass; so are derived features (``add_derived_features``) that overflow or
    fall out of range, so that data accepted here can be trained on. Row numbers in
    messages are 0-based positions in ``df`` (for a loaded CSV: data rows, header
    excluded).

    Args:
        df: the particle data.
        drop_invalid: drop rows that break a row rule instead of raising. Structural
            problems always raise.
        rtol: relative tolerance of the physics checks.
        atol: absolute tolerance of the physics checks.
        source: file name to mention in the error message.

    Returns:
        A ``ValidationReport``; ``report.data`` is ``df`` itself when nothing was dropped,
        else a new frame of the valid rows with a fresh 0-based index.

    Raises:
        DataValidationError: listing every problem (column, what, count, first rows);
            for data of the original lab (``original_lab_signs``), one problem saying
            so and how to convert it.

    Example:
        >>> validate_particle_data(generate_particle_data(10, seed=0)).ok
        True
    """
    where = f" in {source}" if source else ""
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(f"particle data{where} must be a DataFrame, got {type(df).__name__}")
    if signs := original_lab_signs(df):  # one message that says what to do, not a list of symptoms
        message = original_lab_message(signs, source or None)
        raise DataValidationError(message, [message])
    structural, cols = _structure(df)
    rules = _broken_rows(cols, rtol=rtol, atol=atol)
    problems = structural + [msg for _, msg in rules]
    if structural or (rules and not drop_invalid):
        raise DataValidationError(f"particle data{where} failed validation ({len(problems)} "
                                  "problem(s)):\n  - " + "\n  - ".join(problems), problems)
    if not rules:
        return ValidationReport(data=df, n_rows_in=len(df))
    invalid = np.logical_or.reduce([mask for mask, _ in rules])
    if invalid.all():
        raise DataValidationError(f"every row of the particle data{where} is invalid:\n  - "
                                  + "\n  - ".join(problems), problems)
    report = ValidationReport(data=df.loc[~invalid].reset_index(drop=True), n_rows_in=len(df),
                              n_dropped=int(invalid.sum()),
                              problems=[f"dropped: {msg}" for _, msg in rules])
    logger.warning("particle data%s: %s", where, report.summary())
    return report
