"""Particle data: simulate -> validate -> derive features -> split and scale.

A 2-D particle of mass ``m`` and charge ``q`` moves in a uniform magnetic field
``B`` along z. The Lorentz force ``F = q v x B`` turns the velocity at the signed
cyclotron frequency ``w = qB/m``; the motion has an exact closed form, evaluated
here for all particles at once with NumPy.

Example:
    >>> from nnlab.data import generate_particle_data, preprocess_for_training
    >>> df = generate_particle_data(500, seed=1)
    >>> X_train, X_val, X_test, y_train, y_val, y_test = preprocess_for_training(df)
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from nnlab.config import GenerationConfig
from nnlab.errors import ConfigError, DataValidationError

logger = logging.getLogger("nnlab.data")

DATA_FORMAT_VERSION = 1
GENERATOR_NAME = "nnlab.generate_particle_data"
INITIAL_COLUMNS = ["mass", "initial_velocity_x", "initial_velocity_y", "initial_position_x",
                   "initial_position_y", "charge", "magnetic_field_strength", "simulation_time"]
FINAL_COLUMNS = ["final_velocity_x", "final_velocity_y", "final_position_x", "final_position_y",
                 "kinetic_energy", "displacement", "trajectory_length"]
REQUIRED_COLUMNS = ["particle_id", *INITIAL_COLUMNS, *FINAL_COLUMNS]
DERIVED_FEATURES = ["initial_speed", "initial_position_mag", "initial_momentum_x",
                    "initial_momentum_y", "initial_momentum_mag", "momentum_dot_position",
                    "charge_field_product", "abs_charge", "cyclotron_frequency", "cyclotron_phase",
                    "lorentz_force_mag", "sim_time_field", "time_squared",
                    "sin_cyclotron_phase", "cos_cyclotron_phase"]
FEATURE_COLUMNS = [*INITIAL_COLUMNS, *DERIVED_FEATURES]
DEFAULT_TARGETS = FINAL_COLUMNS[:6]
# Below this |phase| the two-term Taylor series of sin(x)/x and (1-cos x)/x is exact to
# double precision (next terms < 1e-18 relative) and avoids 0/0 and underflow.
_SMALL_PHASE = 1e-4


def _coerce_config(config: GenerationConfig | dict | None) -> GenerationConfig:
    if config is None:
        return GenerationConfig()
    if isinstance(config, GenerationConfig):
        return config
    if isinstance(config, dict):
        try:
            return GenerationConfig.model_validate(config)
        except ValidationError as exc:
            lines = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']} (got {e.get('input')!r})"
                     for e in exc.errors()]
            raise ConfigError("invalid particle generation config:\n  " + "\n  ".join(lines)) from None
    raise ConfigError(f"config must be a GenerationConfig, a dict or None, got {type(config).__name__}")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _rotation_integrals(phase: np.ndarray, sin_p: np.ndarray, cos_p: np.ndarray,
                        t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S = sin(wt)/w and C = (1 - cos wt)/w, exact for w = 0 and stable for tiny w."""
    small = np.abs(phase) < _SMALL_PHASE
    x2 = phase * phase
    # 1 - cos x cancels catastrophically near 0; sin^2/(1 + cos) is the same value without
    # cancellation wherever cos > 0, and 1 - cos is fine where cos <= 0.
    with np.errstate(divide="ignore", invalid="ignore"):  # the branch not taken at cos = -1
        one_minus_cos = np.where(cos_p > 0, sin_p * sin_p / (1.0 + cos_p), 1.0 - cos_p)
    safe = np.where(small, 1.0, phase)
    s_over = np.where(small, 1.0 - x2 / 6.0, sin_p / safe)
    c_over = np.where(small, phase * (0.5 - x2 / 24.0), one_minus_cos / safe)
    return t * s_over, t * c_over


def generate_particle_data(num_particles: int, config: GenerationConfig | dict | None = None,
                           seed: int | None = None) -> pd.DataFrame:
    """Simulate charged particles in a uniform magnetic field with the exact solution.

    Args:
        num_particles: how many particles (a positive int).
        config: a ``GenerationConfig``, a dict of its fields, or None for the defaults.
        seed: random seed; when None, ``config.random_seed`` is used (None there: fresh entropy).

    Returns:
        A DataFrame with ``REQUIRED_COLUMNS`` in that order, one row per particle.

    Raises:
        ConfigError: bad ``num_particles`` or config.

    Example:
        >>> df = generate_particle_data(3, seed=0)
        >>> list(df.columns[:3])
        ['particle_id', 'mass', 'initial_velocity_x']
    """
    n = _check_positive_int("num_particles", num_particles)
    cfg = _coerce_config(config)  # GenerationConfig guarantees ordered, finite, positive ranges
    rng = np.random.default_rng(cfg.random_seed if seed is None else seed)
    mass, vx0, vy0, x0, y0 = (rng.uniform(*r, n) for r in (
        cfg.mass_range, cfg.velocity_x_range, cfg.velocity_y_range,
        cfg.position_x_range, cfg.position_y_range))
    charge = rng.choice(np.asarray(cfg.charge_values, dtype=np.float64), size=n)
    field_b = rng.uniform(*cfg.magnetic_field_range, n)
    t = rng.uniform(*cfg.simulation_time_range, n)

    phase = (charge * field_b / mass) * t
    sin_p, cos_p = np.sin(phase), np.cos(phase)
    s_int, c_int = _rotation_integrals(phase, sin_p, cos_p, t)
    vfx = vx0 * cos_p + vy0 * sin_p
    vfy = vy0 * cos_p - vx0 * sin_p
    # Displacement from the increments, not from x_final - x0, to avoid cancellation.
    dx = vx0 * s_int + vy0 * c_int
    dy = vy0 * s_int - vx0 * c_int
    columns = {
        "particle_id": np.arange(n, dtype=np.int64), "mass": mass,
        "initial_velocity_x": vx0, "initial_velocity_y": vy0,
        "initial_position_x": x0, "initial_position_y": y0, "charge": charge,
        "magnetic_field_strength": field_b, "simulation_time": t,
        "final_velocity_x": vfx, "final_velocity_y": vfy,
        "final_position_x": x0 + dx, "final_position_y": y0 + dy,
        "kinetic_energy": 0.5 * mass * (vfx * vfx + vfy * vfy),
        "displacement": np.sqrt(dx * dx + dy * dy),
        "trajectory_length": np.sqrt(vx0 * vx0 + vy0 * vy0) * t,
    }
    # copy=False keeps one block per column: consolidating 16 x N floats costs more than
    # the whole simulation.
    return pd.DataFrame(columns, copy=False)


def add_derived_features(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` with the physics features in ``DERIVED_FEATURES``.

    Features (``v``, ``r`` initial velocity/position, ``w = qB/m``):
    ``initial_speed`` |v|; ``initial_position_mag`` |r|; ``initial_momentum_x/y`` m·v;
    ``initial_momentum_mag`` m|v|; ``momentum_dot_position`` p·r;
    ``charge_field_product`` qB; ``abs_charge`` |q|; ``cyclotron_frequency`` signed
    w = qB/m (0 for neutral particles); ``cyclotron_phase`` w·t (the rotation angle of
    the velocity); ``lorentz_force_mag`` |q|·|v|·|B|; ``sim_time_field`` t·B;
    ``time_squared`` t²; ``sin_cyclotron_phase``/``cos_cyclotron_phase`` sin/cos of w·t.

    Args:
        df: a frame holding at least ``INITIAL_COLUMNS``.

    Returns:
        A new DataFrame: the columns of ``df`` followed by the derived features.

    Example:
        >>> features = add_derived_features(generate_particle_data(2, seed=0))
        >>> features.shape
        (2, 31)
    """
    missing = [c for c in INITIAL_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(f"cannot derive features: missing column(s) {missing}")
    m, vx, vy, x, y, q, b, t = (df[c].to_numpy(dtype=np.float64) for c in INITIAL_COLUMNS)
    speed = np.sqrt(vx * vx + vy * vy)
    omega = q * b / m
    phase = omega * t
    new = {
        "initial_speed": speed, "initial_position_mag": np.sqrt(x * x + y * y),
        "initial_momentum_x": m * vx, "initial_momentum_y": m * vy,
        "initial_momentum_mag": m * speed, "momentum_dot_position": m * (vx * x + vy * y),
        "charge_field_product": q * b, "abs_charge": np.abs(q), "cyclotron_frequency": omega,
        "cyclotron_phase": phase, "lorentz_force_mag": np.abs(q) * speed * np.abs(b),
        "sim_time_field": t * b, "time_squared": t * t,
        "sin_cyclotron_phase": np.sin(phase), "cos_cyclotron_phase": np.cos(phase),
    }
    base = df.drop(columns=[c for c in DERIVED_FEATURES if c in df.columns])
    return pd.concat([base, pd.DataFrame(new, index=df.index, copy=False)], axis=1)


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


def load_particle_data(path: str | os.PathLike) -> pd.DataFrame:
    """Read a particle CSV; raise ``DataValidationError`` naming the file if it cannot.

    Does not check the physics: pass the result to ``validate_particle_data``.

    Args:
        path: the CSV file.

    Returns:
        The DataFrame as read by ``pandas.read_csv``.

    Example:
        >>> df = load_particle_data("data/particles.csv")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"particle data file not found: {p}")
    if p.is_dir():
        raise DataValidationError(f"particle data path {p} is a directory, expected a CSV file")
    try:
        if p.stat().st_size == 0:
            raise DataValidationError(f"particle data file {p} is empty (0 bytes)")
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"particle data file {p} is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"particle data file {p} is not valid CSV: {exc}") from exc
    except OSError as exc:
        raise DataValidationError(f"cannot read particle data file {p}: {exc}") from exc
    if len(df) == 0:
        raise DataValidationError(f"particle data file {p} has a header but no data rows")
    return df


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; data files are meant to be shared like any other.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def save_particle_data(df: pd.DataFrame, path: str | os.PathLike, *,
                       metadata: dict[str, Any] | None = None) -> Path:
    """Write ``df`` to CSV atomically, with a ``<path>.meta.json`` sidecar.

    Args:
        df: the particle data.
        path: the CSV file; parent directories are created.
        metadata: JSON-serialisable provenance (generation config, num_particles, seed).
            ``format_version``, ``num_rows`` and ``csv_bytes`` are added.

    Returns:
        The CSV path.

    Example:
        >>> save_particle_data(df, "data/particles.csv", metadata={"seed": 1})  # doctest: +SKIP
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    json.dumps(meta)  # fail on unserialisable metadata before anything is written
    _atomic_write(p, lambda fh: df.to_csv(fh, index=False))
    meta.update(format_version=DATA_FORMAT_VERSION, num_rows=len(df), csv_bytes=p.stat().st_size)
    _atomic_write(_sidecar_path(p), lambda fh: json.dump(meta, fh, indent=2))
    return p


class _TargetScaling:
    """Methods shared by ``Scalers`` and ``PreparedData`` (both hold the fitted scalers)."""

    x_scaler: StandardScaler
    y_scaler: StandardScaler
    feature_names: list[str]
    target_names: list[str]

    def inverse_transform_targets(self, y_scaled: np.ndarray) -> np.ndarray:
        """Map scaled targets, shape (n, n_targets) or (n_targets,), to physical units."""
        y = np.asarray(y_scaled, dtype=np.float64)
        if y.ndim == 1:  # one sample
            return self.y_scaler.inverse_transform(y.reshape(1, -1))[0]
        return self.y_scaler.inverse_transform(y)

    def save_scalers(self, directory: str | os.PathLike) -> Path:
        """Write ``scalers.json`` (names, mean_, scale_, var_) atomically; JSON, not pickle."""
        def state(s: StandardScaler) -> dict[str, Any]:
            return {"mean_": s.mean_.tolist(), "scale_": s.scale_.tolist(),
                    "var_": s.var_.tolist(), "n_samples_seen_": int(np.max(s.n_samples_seen_))}
        doc = {"format_version": DATA_FORMAT_VERSION, "feature_names": list(self.feature_names),
               "target_names": list(self.target_names),
               "x_scaler": state(self.x_scaler), "y_scaler": state(self.y_scaler)}
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "scalers.json", lambda fh: json.dump(doc, fh, indent=2, allow_nan=False))
        return out / "scalers.json"


@dataclass
class Scalers(_TargetScaling):
    """Fitted feature and target scalers plus the column names they belong to."""

    x_scaler: StandardScaler
    y_scaler: StandardScaler
    feature_names: list[str]
    target_names: list[str]


def load_scalers(directory: str | os.PathLike) -> Scalers:
    """Rebuild the fitted scalers written by ``save_scalers``.

    Args:
        directory: the folder holding ``scalers.json``.

    Returns:
        ``Scalers`` with fitted ``StandardScaler`` objects.

    Raises:
        DataValidationError: the file is missing, not JSON or incomplete.

    Example:
        >>> scalers = load_scalers("training_output/runs/r1")  # doctest: +SKIP
    """
    path = Path(directory) / "scalers.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        names = {"x_scaler": list(doc["feature_names"]), "y_scaler": list(doc["target_names"])}
        fitted = {}
        for key, cols in names.items():
            scaler = StandardScaler()
            for attr in ("mean_", "scale_", "var_"):
                values = np.asarray(doc[key][attr], dtype=np.float64)
                if values.shape != (len(cols),):
                    raise ValueError(f"{key}.{attr} has {values.size} values for {len(cols)} columns")
                setattr(scaler, attr, values)
            scaler.n_features_in_ = len(cols)
            scaler.n_samples_seen_ = int(doc[key]["n_samples_seen_"])
            fitted[key] = scaler
    except FileNotFoundError:
        raise DataValidationError(f"scalers file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise DataValidationError(f"scalers file {path} is unreadable or corrupt: {exc!r}") from exc
    return Scalers(fitted["x_scaler"], fitted["y_scaler"], names["x_scaler"], names["y_scaler"])


@dataclass(eq=False)  # field-wise == on arrays is ambiguous
class PreparedData(_TargetScaling):
    """Scaled float32 train/val/test arrays and their scalers; unpacks like a 6-tuple.

    Example:
        >>> X_train, X_val, X_test, y_train, y_val, y_test = prepared  # doctest: +SKIP
        >>> y_physical = prepared.inverse_transform_targets(y_test)  # doctest: +SKIP
    """

    X_train: np.ndarray
    X_val: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray
    x_scaler: StandardScaler
    y_scaler: StandardScaler
    feature_names: list[str]
    target_names: list[str]

    load_scalers = staticmethod(load_scalers)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.X_train, self.X_val, self.X_test, self.y_train, self.y_val, self.y_test)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self._arrays())

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> np.ndarray:
        return self._arrays()[index]


def preprocess_for_training(df: pd.DataFrame, test_size: float = 0.2, val_size: float = 0.2,
                            random_state: int | None = 42, *, targets: Sequence[str] | None = None,
                            features: Sequence[str] | None = None) -> PreparedData:
    """Split into train/val/test and standardise X and y with scalers fit on train only.

    The test set is split off first (``test_size`` of all rows); the validation set is
    then ``val_size`` of the *remaining* rows, so the defaults give 64/16/20 %.
    Derived features are added when any is missing.

    Args:
        df: particle data (validated).
        test_size: fraction of rows for the test set, in (0, 1).
        val_size: fraction of the non-test rows for validation, in (0, 1).
        random_state: seed of both splits.
        targets: target columns (default ``DEFAULT_TARGETS``).
        features: feature columns (default ``FEATURE_COLUMNS``).

    Returns:
        A ``PreparedData`` of float32 arrays and the fitted scalers.

    Raises:
        ConfigError: sizes outside (0, 1).
        DataValidationError: unknown/overlapping columns, non-finite values, too few rows.

    Example:
        >>> prepared = preprocess_for_training(generate_particle_data(100, seed=0))
        >>> prepared.X_train.shape
        (64, 23)
    """
    for name, value in (("test_size", test_size), ("val_size", val_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}")
    target_names = list(DEFAULT_TARGETS if targets is None else targets)
    feature_names = list(FEATURE_COLUMNS if features is None else features)
    for kind, names, allowed in (("target", target_names, FINAL_COLUMNS),
                                 ("feature", feature_names, FEATURE_COLUMNS)):
        unknown = [n for n in names if n not in allowed]
        if unknown or not names or len(set(names)) != len(names):
            raise DataValidationError(f"invalid {kind} names {names} (unknown: {unknown}); "
                                      f"choose distinct names from {allowed}")
    n = len(df)
    n_test = math.ceil(test_size * n)
    n_val = math.ceil(val_size * (n - n_test))
    if n - n_test - n_val < 2 or n_val < 1:
        raise DataValidationError(
            f"too few rows ({n}) to split with test_size={test_size}, val_size={val_size}: "
            f"would give {n - n_test - n_val} train / {n_val} val / {n_test} test rows; "
            "need at least 2 training rows and 1 validation row")
    if any(c not in df.columns for c in DERIVED_FEATURES):
        df = add_derived_features(df)
    missing = [c for c in [*feature_names, *target_names] if c not in df.columns]
    if missing:
        raise DataValidationError(f"particle data lacks column(s) {missing}")
    X = df[feature_names].to_numpy(dtype=np.float64)
    y = df[target_names].to_numpy(dtype=np.float64)
    finite = np.concatenate([np.isfinite(X).all(axis=0), np.isfinite(y).all(axis=0)])
    bad = [c for c, ok in zip([*feature_names, *target_names], finite) if not ok]
    if bad:
        raise DataValidationError(f"non-finite values in column(s) {bad}; validate the data first")
    rest, test = train_test_split(np.arange(n), test_size=test_size, random_state=random_state)
    train, val = train_test_split(rest, test_size=val_size, random_state=random_state)
    x_scaler = StandardScaler().fit(X[train])
    y_scaler = StandardScaler().fit(y[train])
    xs = x_scaler.transform(X).astype(np.float32)
    ys = y_scaler.transform(y).astype(np.float32)
    return PreparedData(xs[train], xs[val], xs[test], ys[train], ys[val], ys[test],
                        x_scaler, y_scaler, feature_names, target_names)


def _stale_reason(meta: dict[str, Any], expected: dict[str, Any], csv: Path) -> str | None:
    """Why the cached CSV does not hold the requested data, or None when it does."""
    if meta.get("format_version") != DATA_FORMAT_VERSION:
        return f"data format version {meta.get('format_version')} != {DATA_FORMAT_VERSION}"
    for key in ("num_particles", "seed"):
        if meta.get(key) != expected[key]:
            return f"it holds {key}={meta.get(key)!r}, {expected[key]!r} requested"
    # num_particles_default and random_seed do not shape the data once the effective
    # num_particles and seed (compared above) are known.
    ignored = {"num_particles_default", "random_seed"}
    old, new = meta.get("generation_config") or {}, expected["generation_config"]
    diff = sorted(k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k))
    if diff:
        return "generation config differs in " + ", ".join(
            f"{k} (file {old.get(k)!r}, requested {new.get(k)!r})" for k in diff)
    if meta.get("csv_bytes") != csv.stat().st_size:
        return "the CSV was modified after its metadata was written"
    return None


def complete_data_pipeline(csv_path: str | os.PathLike | None = None,
                           num_particles: int | None = 2000, *,
                           config: GenerationConfig | dict | None = None, seed: int | None = None,
                           test_size: float = 0.2, val_size: float = 0.2,
                           random_state: int | None = 42, targets: Sequence[str] | None = None,
                           drop_invalid: bool = False) -> PreparedData:
    """Get particle data (generate, reuse or load), validate it and prepare it for training.

    With ``csv_path``: a CSV whose sidecar records the same generation config,
    num_particles and seed is reused; one whose sidecar differs is regenerated and
    overwritten with a warning; a CSV without an nnlab sidecar is user data: it is
    loaded and validated (``num_particles`` ignored) and never overwritten; a missing
    CSV is generated and saved.

    Args:
        csv_path: cache/data file, or None to generate in memory.
        num_particles: particles to generate (None: ``config.num_particles_default``).
        config: generation config (``GenerationConfig``, dict or None).
        seed: generation seed (None: ``config.random_seed``).
        test_size, val_size, random_state, targets: see ``preprocess_for_training``.
        drop_invalid: see ``validate_particle_data``.

    Returns:
        The ``PreparedData``.

    Example:
        >>> X_train, X_val, X_test, y_train, y_val, y_test = complete_data_pipeline(
        ...     num_particles=200, seed=0)
    """
    cfg = _coerce_config(config)
    n = cfg.num_particles_default if num_particles is None else num_particles
    n = _check_positive_int("num_particles", n)
    expected = {"source": GENERATOR_NAME, "generation_config": cfg.model_dump(mode="json"),
                "num_particles": n, "seed": cfg.random_seed if seed is None else seed}

    def generate() -> pd.DataFrame:
        logger.info("generating %d particles (seed=%s)", n, expected["seed"])
        return generate_particle_data(n, cfg, expected["seed"])

    path = None if csv_path is None else Path(csv_path)
    meta_path = None if path is None else _sidecar_path(path)
    if path is None:
        df = generate()
    elif not path.exists():
        df = generate()
        save_particle_data(df, path, metadata=expected)
        logger.info("saved %d particles to %s", n, path)
    else:
        meta = None
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataValidationError(f"metadata file {meta_path} is unreadable ({exc}); "
                                          f"delete it to treat {path} as user data") from exc
        if not isinstance(meta, dict) or meta.get("source") != GENERATOR_NAME:
            df = load_particle_data(path)
            logger.info("using user-provided data %s (%d rows); num_particles=%d ignored",
                        path, len(df), n)
        elif (reason := _stale_reason(meta, expected, path)) is None:
            df = load_particle_data(path)
            logger.info("reusing cached particle data %s (%d rows)", path, len(df))
        else:
            warnings.warn(f"{path} is stale ({reason}); regenerating it", UserWarning, stacklevel=2)
            df = generate()
            save_particle_data(df, path, metadata=expected)
            logger.info("saved %d particles to %s", n, path)
    report = validate_particle_data(df, drop_invalid=drop_invalid, source=path)
    return preprocess_for_training(report.data, test_size, val_size, random_state, targets=targets)
