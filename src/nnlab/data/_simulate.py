"""Particle columns, the exact cyclotron-motion simulation and the derived features."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from nnlab.config import GenerationConfig
from nnlab.errors import ConfigError, DataValidationError

INITIAL_COLUMNS = ["mass", "initial_velocity_x", "initial_velocity_y", "initial_position_x",
                   "initial_position_y", "charge", "magnetic_field_strength", "simulation_time"]
FINAL_COLUMNS = ["final_velocity_x", "final_velocity_y", "final_position_x", "final_position_y",
                 "kinetic_energy", "displacement", "trajectory_length"]
REQUIRED_COLUMNS = ["particle_id", *INITIAL_COLUMNS, *FINAL_COLUMNS]
# The targets in the simulation's consistent SI units (mass kg, charge C, field T, time s).
TARGET_UNITS: dict[str, str] = {
    "final_velocity_x": "m/s", "final_velocity_y": "m/s",
    "final_position_x": "m", "final_position_y": "m",
    "kinetic_energy": "J", "displacement": "m", "trajectory_length": "m",
}
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


def final_state(mass: np.ndarray, vx0: np.ndarray, vy0: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                charge: np.ndarray, field_b: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """The exact final quantities (``FINAL_COLUMNS``) of particles from their initial ones.

    The velocity turns by the phase ``w t`` with ``w = qB/m`` (B along +z), clockwise
    for ``w > 0``: ``v_x(t) = v_x cos wt + v_y sin wt``, ``v_y(t) = v_y cos wt - v_x sin wt``.

    Args:
        mass, vx0, vy0, x0, y0, charge, field_b, t: float64 arrays of one shape, the
            ``INITIAL_COLUMNS`` in that order.

    Returns:
        ``{column: array}`` for every column of ``FINAL_COLUMNS``, in that order.

    Example:
        >>> one = [np.array([v]) for v in (1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0)]
        >>> float(final_state(*one)["trajectory_length"][0])
        2.0
    """
    phase = (charge * field_b / mass) * t
    sin_p, cos_p = np.sin(phase), np.cos(phase)
    s_int, c_int = _rotation_integrals(phase, sin_p, cos_p, t)
    vfx = vx0 * cos_p + vy0 * sin_p
    vfy = vy0 * cos_p - vx0 * sin_p
    # Displacement from the increments, not from x_final - x0, to avoid cancellation.
    dx = vx0 * s_int + vy0 * c_int
    dy = vy0 * s_int - vx0 * c_int
    return {
        "final_velocity_x": vfx, "final_velocity_y": vfy,
        "final_position_x": x0 + dx, "final_position_y": y0 + dy,
        "kinetic_energy": 0.5 * mass * (vfx * vfx + vfy * vfy),
        "displacement": np.sqrt(dx * dx + dy * dy),
        "trajectory_length": np.sqrt(vx0 * vx0 + vy0 * vy0) * t,
    }


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

    columns = {
        "particle_id": np.arange(n, dtype=np.int64), "mass": mass,
        "initial_velocity_x": vx0, "initial_velocity_y": vy0,
        "initial_position_x": x0, "initial_position_y": y0, "charge": charge,
        "magnetic_field_strength": field_b, "simulation_time": t,
        **final_state(mass, vx0, vy0, x0, y0, charge, field_b, t),
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
