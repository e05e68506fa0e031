"""Converting particle data of the original lab: every final quantity recomputed with nnlab's physics.

The original lab's CSVs have no ``displacement`` column, hold the displacement in
``trajectory_length`` and turn the velocity the opposite way for B along +z (see
``original_lab_signs``). Their initial quantities are sound, so the data is
converted by simulating it again from them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nnlab.data._io import sidecar_path, check_data_file, check_output_file, read_particle_csv, save_particle_data
from nnlab.data._simulate import FINAL_COLUMNS, INITIAL_COLUMNS, REQUIRED_COLUMNS, final_state
from nnlab.data._validate import _rows_text, validate_particle_data
from nnlab.errors import ConfigError, DataValidationError

RESIMULATOR_NAME = "nnlab.resimulate_particle_data"


def resimulate_particle_data(df: pd.DataFrame, *, source: str | os.PathLike | None = None) -> pd.DataFrame:
    """Recompute every final column of ``df`` from its initial columns with nnlab's exact physics.

    The initial columns (and ``particle_id``) are kept exactly as given -- strings
    stay the same strings -- so that a converted file differs from its original only
    in the final columns. A missing ``particle_id`` is numbered 0, 1, ...; columns
    that are not ``REQUIRED_COLUMNS`` are left out.

    Args:
        df: particle data holding at least ``INITIAL_COLUMNS``.
        source: file name to mention in errors.

    Returns:
        A new DataFrame of ``REQUIRED_COLUMNS``, in that order, that passes
        ``validate_particle_data``.

    Raises:
        DataValidationError: an initial column is missing or not numeric, or the
            result fails validation (NaN, mass <= 0, overflow, ...), listing every problem.

    Example:
        >>> from nnlab.data import generate_particle_data
        >>> old = generate_particle_data(5, seed=0).drop(columns=["displacement"])
        >>> list(resimulate_particle_data(old).columns) == REQUIRED_COLUMNS
        True
    """
    where = f" {source}" if source else " the particle data"
    missing = [c for c in INITIAL_COLUMNS if c not in df.columns]
    if missing:
        message = (f"cannot resimulate{where}: missing initial column(s) {', '.join(missing)}; the final "
                   f"quantities are computed from {', '.join(INITIAL_COLUMNS)}")
        raise DataValidationError(message, [message])
    initial: list[np.ndarray] = []
    problems: list[str] = []
    for name in INITIAL_COLUMNS:
        col = df[name]
        if pd.api.types.is_bool_dtype(col):
            problems.append(f"column '{name}' is not numeric (dtype bool)")
            continue
        values = col if pd.api.types.is_numeric_dtype(col) else pd.to_numeric(col, errors="coerce")
        bad = (values.isna() & col.notna()).to_numpy()
        if bad.any():
            problems.append(f"column '{name}' is not numeric: {_rows_text(bad)} hold non-numbers, "
                            f"e.g. {col[bad].iloc[0]!r}")
        initial.append(values.to_numpy(dtype=np.float64, na_value=np.nan))
    if problems:
        raise DataValidationError(f"cannot resimulate{where}:\n  - " + "\n  - ".join(problems), problems)
    with np.errstate(all="ignore"):  # NaN, mass 0 and overflow are reported by the validation below
        finals = final_state(*initial)
    ids = df["particle_id"] if "particle_id" in df.columns else np.arange(len(df), dtype=np.int64)
    out = pd.DataFrame({"particle_id": ids, **{c: df[c] for c in INITIAL_COLUMNS}, **finals},
                       index=df.index, copy=False).reset_index(drop=True)
    try:
        validate_particle_data(out)
    except DataValidationError as exc:
        raise DataValidationError(f"cannot resimulate{where}: the result is invalid (check its initial "
                                  f"columns):\n  - " + "\n  - ".join(exc.problems), exc.problems) from None
    return out


@dataclass
class Resimulation:
    """What ``resimulate_csv`` did.

    Args:
        old: the file read (never modified).
        new: the file written, with its ``.meta.json`` sidecar.
        num_rows: particles resimulated.
        old_sha256: SHA-256 of ``old`` as read.
        dropped_columns: columns of ``old`` that are not particle columns, left out.
        numbered: ``old`` had no ``particle_id``; the rows were numbered 0, 1, ...
    """

    old: Path
    new: Path
    num_rows: int
    old_sha256: str
    dropped_columns: list[str] = field(default_factory=list)
    numbered: bool = False

    def summary(self) -> str:
        """One line for the command line."""
        extra = "".join([f"; left out column(s) {', '.join(self.dropped_columns)}" if self.dropped_columns else "",
                         "; particle_id added (0, 1, ...)" if self.numbered else ""])
        return (f"resimulated {self.num_rows} particles from {self.old} into {self.new}: "
                f"{len(FINAL_COLUMNS)} final columns recomputed, initial columns kept{extra}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # b does not exist (yet)
        return False


def resimulate_csv(old: str | os.PathLike, new: str | os.PathLike, *, force: bool = False,
                   option: str | None = None) -> Resimulation:
    """Convert a particle CSV (e.g. the original lab's) into a new nnlab CSV.

    ``old`` is read and never written; ``new`` gets the same rows with their initial
    columns unchanged, byte for byte, and every final column recomputed (see
    :func:`resimulate_particle_data`). Its sidecar ``new.meta.json`` records
    ``resimulated_from`` (the absolute path of ``old``) and ``resimulated_from_sha256``.

    Args:
        old: the particle CSV to convert.
        new: the CSV to write (missing parent directories are created).
        force: replace ``new`` and its sidecar if they exist (``old`` itself, never).
        option: how ``new`` is named in messages (``"NEW"`` on the command line).

    Returns:
        A :class:`Resimulation`.

    Raises:
        DataValidationError: ``old`` is missing, not a regular file, not CSV, or its
            initial columns are missing or invalid.
        ConfigError: ``new`` exists (without ``force``), is ``old``, or cannot be written.

    Example:
        >>> resimulate_csv("old_lab/particles.csv", "particles.csv").summary()  # doctest: +SKIP
        'resimulated 2000 particles from old_lab/particles.csv into particles.csv: ...'
    """
    old_p, new_p = check_data_file(old), Path(new)
    prefix = f"{option}: " if option else ""
    for target in (new_p, sidecar_path(new_p)):
        if _same_file(old_p, target):
            raise ConfigError(f"{prefix}'{target}' is the file being converted ('{old_p}'), which is never "
                              "replaced; give another file to write")
    check_output_file(new_p, force=force, option=option)
    before = os.stat(old_p)
    digest = hashlib.sha256()
    with open(old_p, "rb") as fh:  # a regular file: check_data_file said so
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    # Every value as its text: the initial columns are written back exactly as they were.
    raw = read_particle_csv(old_p, dtype=str, keep_default_na=False)
    after = os.stat(old_p)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise DataValidationError(f"{old_p} changed while it was being read; try again when nothing writes it")
    out = resimulate_particle_data(raw, source=old_p)
    save_particle_data(out, new_p, metadata={
        "source": RESIMULATOR_NAME,
        "resimulated_from": os.path.abspath(old_p),
        "resimulated_from_sha256": digest.hexdigest(),
    })
    return Resimulation(old_p, new_p, len(out), digest.hexdigest(),
                        dropped_columns=[c for c in raw.columns if c not in REQUIRED_COLUMNS],
                        numbered="particle_id" not in raw.columns)
