"""Physics consistency of predictions: do they obey what a magnetic field does?

A magnetic field does no work. A particle keeps its initial speed, its kinetic
energy is ½ m |v|², its displacement is |r_final − r_initial| and a charged one
moves on a circle of radius m|v|/(|q|B) around a fixed centre. The network
predicts final velocity, position, kinetic energy and displacement as
independent outputs, so nothing makes them agree; these metrics say how far
they disagree, in physical units:

* ``speed_violation``: |v_pred| against |v_0|;
* ``energy_violation``: KE_pred against ½ m |v_pred|²;
* ``displacement_violation``: displacement_pred against |r_pred − r_0|;
* ``gyration_violation``: |r_pred − centre| against m|v_0|/(|q|B), over the
  particles that turned at least :data:`GYRATION_MIN_TURN` (1 radian) on their
  circle (the centre is where the initial state puts it). On a shorter arc the
  radius is far larger than the distance travelled (up to 500 on the default
  task), and those radii would dominate the RMS; neutral particles never turn.

Each is a relative RMS: ``RMS(lhs − rhs) / RMS(rhs)`` over the samples, the
RMS violation in units of the typical size of the quantity. A metric is
``None`` (not applicable) when a quantity it needs is neither predicted nor
among the initial columns; :func:`consistency_metrics` says which and why.
On the true data every metric is ~1e-7 (float32 round trip): a self-check of
the simulation.

NumPy only, no TensorFlow: the in-graph loss term built on the same relations
is :class:`nnlab.losses.PhysicsLoss`.

Example:
    >>> import numpy as np
    >>> initial = {"initial_velocity_x": np.array([3.0]), "initial_velocity_y": np.array([4.0])}
    >>> predicted = {"final_velocity_x": np.array([0.0]), "final_velocity_y": np.array([5.5])}
    >>> consistency_metrics(predicted, initial)["speed_violation"]  # |5.5 - 5| / 5
    0.1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "GYRATION_MIN_TURN",
    "PHYSICS_METRICS",
    "RELATIONS",
    "consistency_metrics",
    "consistency_residuals",
    "gyration_sample_mask",
    "missing_quantities",
    "physics_not_applicable",
    "physics_report",
]

#: relation -> (predicted targets it needs, initial quantities it needs)
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "speed": (("final_velocity_x", "final_velocity_y"), ("initial_velocity_x", "initial_velocity_y")),
    "energy": (("kinetic_energy", "final_velocity_x", "final_velocity_y"), ("mass",)),
    "displacement": (("displacement", "final_position_x", "final_position_y"),
                     ("initial_position_x", "initial_position_y")),
    "gyration": (("final_position_x", "final_position_y"),
                 ("mass", "charge", "magnetic_field_strength", "initial_velocity_x", "initial_velocity_y",
                  "initial_position_x", "initial_position_y", "simulation_time")),
}
#: radians: the gyration metric counts only particles that turned at least this far (|qB/m| t)
GYRATION_MIN_TURN = 1.0
#: the metric names, as recorded in ``test_metrics.json`` under ``"physics"``
PHYSICS_METRICS = tuple(f"{name}_violation" for name in RELATIONS)


def missing_quantities(relation: str, predicted: Any, initial: Any) -> list[str]:
    """The quantities ``relation`` needs that are not in ``predicted`` / ``initial`` (names)."""
    targets, inputs = RELATIONS[relation]
    return [t for t in targets if t not in predicted] + [i for i in inputs if i not in initial]


def _column(values: Mapping[str, Any], name: str) -> np.ndarray:
    return np.asarray(values[name], dtype=np.float64).reshape(-1)


def gyration_sample_mask(initial: Mapping[str, Any]) -> np.ndarray:
    """The particles the gyration metric counts: those that turned at least :data:`GYRATION_MIN_TURN`.

    Args:
        initial: initial quantities by column name (mass, charge,
            magnetic_field_strength and simulation_time are read).

    Returns:
        A boolean array, True where |qB/m|·t >= GYRATION_MIN_TURN.
    """
    omega = _column(initial, "charge") * _column(initial, "magnetic_field_strength") / _column(initial, "mass")
    return np.abs(omega) * _column(initial, "simulation_time") >= GYRATION_MIN_TURN


def consistency_residuals(predicted: Mapping[str, Any], initial: Mapping[str, Any]
                          ) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Per-sample ``(lhs − rhs, rhs)`` of every relation, in physical units.

    Args:
        predicted: final quantities by target name (``FINAL_COLUMNS`` names), 1-D arrays.
        initial: initial quantities by column name (``INITIAL_COLUMNS`` names), same length.

    Returns:
        ``{relation: (violation, reference) or None}`` for each of :data:`RELATIONS`;
        None where a needed quantity is missing. For ``gyration`` only the
        particles that turned at least :data:`GYRATION_MIN_TURN` are included, so
        its arrays may be shorter (empty when there are none).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    p = lambda name: _column(predicted, name)
    i = lambda name: _column(initial, name)
    for relation in RELATIONS:
        if missing_quantities(relation, predicted, initial):
            out[relation] = None
            continue
        if relation == "speed":
            rhs = np.hypot(i("initial_velocity_x"), i("initial_velocity_y"))
            lhs = np.hypot(p("final_velocity_x"), p("final_velocity_y"))
        elif relation == "energy":
            rhs = 0.5 * i("mass") * (p("final_velocity_x") ** 2 + p("final_velocity_y") ** 2)
            lhs = p("kinetic_energy")
        elif relation == "displacement":
            rhs = np.hypot(p("final_position_x") - i("initial_position_x"),
                           p("final_position_y") - i("initial_position_y"))
            lhs = p("displacement")
        else:
            turned = gyration_sample_mask(initial)
            omega = (i("charge") * i("magnetic_field_strength") / i("mass"))[turned]
            vx0, vy0 = i("initial_velocity_x")[turned], i("initial_velocity_y")[turned]
            # The velocity turns clockwise at omega (B along +z), so r - centre = (-v_y, v_x) / omega.
            centre_x = i("initial_position_x")[turned] + vy0 / omega
            centre_y = i("initial_position_y")[turned] - vx0 / omega
            rhs = np.hypot(vx0, vy0) / np.abs(omega)
            lhs = np.hypot(p("final_position_x")[turned] - centre_x, p("final_position_y")[turned] - centre_y)
        out[relation] = (lhs - rhs, rhs)
    return out


def _relative_rms(violation: np.ndarray, reference: np.ndarray) -> float | None:
    if violation.size == 0:
        return None
    scale = float(np.sqrt(np.mean(reference**2)))
    if not np.isfinite(scale) or scale == 0.0:
        return None
    value = float(np.sqrt(np.mean(violation**2))) / scale
    return value if np.isfinite(value) else None


def consistency_metrics(predicted: Mapping[str, Any], initial: Mapping[str, Any]) -> dict[str, Any]:
    """The relative RMS violation of each relation (see the module docstring).

    Args:
        predicted: final quantities by target name, 1-D arrays in physical units.
        initial: initial quantities by column name, same length.

    Returns:
        ``{"speed_violation": float or None, ..., "not_applicable": {metric: why}}``:
        one entry per :data:`PHYSICS_METRICS`; ``not_applicable`` names what is
        missing for each None (or that no particle turned far enough).

    Example:
        >>> m = consistency_metrics({"kinetic_energy": [1.0]}, {"mass": [2.0]})
        >>> m["energy_violation"], m["not_applicable"]["energy_violation"]
        (None, 'needs final_velocity_x, final_velocity_y')
    """
    result: dict[str, Any] = {}
    why: dict[str, str] = {}
    for relation, pair in consistency_residuals(predicted, initial).items():
        metric = f"{relation}_violation"
        result[metric] = None if pair is None else _relative_rms(*pair)
        if pair is None:
            why[metric] = "needs " + ", ".join(missing_quantities(relation, predicted, initial))
        elif result[metric] is None:
            if pair[0].size == 0:
                why[metric] = f"no particle turned {GYRATION_MIN_TURN:g} radian or more on its circle (|qB/m| t)"
            elif not (np.isfinite(pair[0]).all() and np.isfinite(pair[1]).all()):
                why[metric] = "non-finite values (NaN or inf predictions or inputs)"
            else:
                why[metric] = "the reference quantity is 0 for every sample"
    result["not_applicable"] = why
    return result


def physics_report(y_pred: np.ndarray, y_true: np.ndarray, X: np.ndarray, *, target_names: list[str],
                   feature_names: list[str]) -> dict[str, Any]:
    """Consistency metrics of predictions and of the true data, from physical-unit arrays.

    Args:
        y_pred, y_true: (n, n_targets) predictions and true targets, physical units.
        X: (n, n_features) features in physical units (the initial quantities are
            read from the feature columns of those names).
        target_names, feature_names: the columns of ``y_*`` and ``X``.

    Returns:
        :func:`consistency_metrics` of the predictions, plus ``"true_data"`` with
        the same metrics of ``y_true`` (≈ 0).
    """
    initial = {name: X[:, j] for j, name in enumerate(feature_names)}
    report = consistency_metrics({name: y_pred[:, j] for j, name in enumerate(target_names)}, initial)
    true = consistency_metrics({name: y_true[:, j] for j, name in enumerate(target_names)}, initial)
    true.pop("not_applicable")
    report["true_data"] = true
    return report


def physics_not_applicable(target_names: list[str]) -> dict[str, Any]:
    """The physics entry of a run on a user's table: not applicable, and why.

    Example:
        >>> physics_not_applicable(["price"])["applicable"]
        False
    """
    return {"applicable": False,
            "reason": "the consistency relations are the particle task's; this run predicts "
                      f"{', '.join(target_names)} from a user's table"}
