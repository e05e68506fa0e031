"""Structural, sanity and physics checks of particle data."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nnlab.data._simulate import REQUIRED_COLUMNS
from nnlab.errors import DataValidationError

logger = logging.getLogger("nnlab.data")


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


def validate_particle_data(df: pd.DataFrame, *, drop_invalid: bool = False, rtol: float = 1e-6,
                           atol: float = 1e-9, source: str | os.PathLike | None = None
                           ) -> ValidationReport:
    """Check particle data for structure, sanity and physical consistency.

    Every problem is collected before raising: missing or non-numeric columns, an empty
    frame, NaN/inf values, mass <= 0, negative simulation time, and rows where
    kinetic_energy != m|v_final|²/2, |v_final| != |v_initial|, displacement !=
    |r_final - r_initial| or trajectory_length != |v_initial|·t beyond
    ``|a - b| <= atol + rtol * max(|a|, |b|, scale)``. Row numbers in messages are
    0-based positions in ``df`` (for a loaded CSV: data rows, header excluded).

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
        DataValidationError: listing every problem (column, what, count, first rows).

    Example:
        >>> validate_particle_data(generate_particle_data(10, seed=0)).ok
        True
    """
    where = f" in {source}" if source else ""
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(f"particle data{where} must be a DataFrame, got {type(df).__name__}")
    structural: list[str] = []
    if len(df) == 0:
        structural.append("the data has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        structural.append(f"missing required column(s): {', '.join(missing)}")
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

    rules: list[tuple[np.ndarray, str]] = []

    def check(label: str, what: str, mask: np.ndarray) -> None:
        if mask.any():
            rules.append((mask, f"{label}: {_rows_text(mask)} {what}"))

    def differ(a: np.ndarray, b: np.ndarray, *scales: np.ndarray) -> np.ndarray:
        scale = np.maximum.reduce([np.abs(a), np.abs(b), *map(np.abs, scales)])
        with np.errstate(invalid="ignore", over="ignore"):
            return np.abs(a - b) > atol + rtol * scale  # NaN compares False: reported once

    def have(*names: str) -> bool:
        return all(n in cols for n in names)

    with np.errstate(invalid="ignore", over="ignore"):
        for name, values in cols.items():
            check(f"column '{name}'", "are NaN or infinite", ~np.isfinite(values))
        if have("mass"):
            check("column 'mass'", "have mass <= 0", cols["mass"] <= 0)
        if have("simulation_time"):
            check("column 'simulation_time'", "are negative", cols["simulation_time"] < 0)
        if have("initial_velocity_x", "initial_velocity_y"):
            speed0 = np.hypot(cols["initial_velocity_x"], cols["initial_velocity_y"])
        if have("final_velocity_x", "final_velocity_y"):
            speed2 = cols["final_velocity_x"] ** 2 + cols["final_velocity_y"] ** 2
        if have("kinetic_energy", "mass", "final_velocity_x", "final_velocity_y"):
            check("column 'kinetic_energy'", "differ from mass * |v_final|^2 / 2",
                  differ(cols["kinetic_energy"], 0.5 * cols["mass"] * speed2))
        if have("final_velocity_x", "final_velocity_y", "initial_velocity_x", "initial_velocity_y"):
            check("columns 'final_velocity_x', 'final_velocity_y'",
                  "break speed conservation (|v_final| != |v_initial|)",
                  differ(np.sqrt(speed2), speed0))
        pos = ("initial_position_x", "initial_position_y", "final_position_x", "final_position_y")
        if have("displacement", *pos):
            x0, y0, x1, y1 = (cols[c] for c in pos)
            check("column 'displacement'", "differ from |r_final - r_initial|",
                  differ(cols["displacement"], np.hypot(x1 - x0, y1 - y0), x0, y0, x1, y1))
        if have("trajectory_length", "simulation_time", "initial_velocity_x", "initial_velocity_y"):
            check("column 'trajectory_length'", "differ from |v_initial| * simulation_time",
                  differ(cols["trajectory_length"], speed0 * cols["simulation_time"]))

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
