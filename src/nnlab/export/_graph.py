"""The deployable graph of a run: raw input columns in, targets in physical units out.

Everything between is standard Keras (``keras.ops`` on the functional graph, the
run's own network as a nested model), so the ``.keras`` file loads with
``keras.saving.load_model`` without nnlab.
"""

from __future__ import annotations

from typing import Any

import numpy as np


__all__ = ["deployable_model", "split_inputs", "FLOAT32_ONLY_FORMATS", "TEXT_FORMATS"]

# LiteRT's built-in kernels have no float64 arithmetic: its graph computes the preprocessing in
# float32 with a compensated cyclotron phase (see _phase_float32).
FLOAT32_ONLY_FORMATS = ("tflite",)
# The formats whose graph takes a table's text columns (a string input and a lookup table).
TEXT_FORMATS = ("keras", "savedmodel")


def deployable_model(run: Any, *, dtype: str = "float64") -> Any:
    """A Keras model of ``run``: the raw input columns in, ``run.targets`` out.

    Its input is one float32 matrix of ``run.inputs``; a table run with text columns takes a dict
    instead: ``numeric`` (float32, the numeric columns in the run's order) and ``text`` (string,
    the text columns in the run's order). Inside: the particle task's derived features (as
    :func:`nnlab.data.add_derived_features`), each text column one-hot encoded by a
    ``keras.layers.StringLookup`` over the run's categories (an unseen one: all zeros, as training
    encoded its validation/test rows), the feature scaling, the run's network and the target
    de-scaling.

    Args:
        run: a :class:`~nnlab.export.TrainedRun`.
        dtype: ``"float64"`` (features and scaling in double precision, as nnlab's own path)
            or ``"float32"`` (for runtimes without float64 arithmetic).

    Example:
        >>> model = deployable_model(TrainedRun.load("training_output"))  # doctest: +SKIP
        >>> model.predict(raw_rows.astype("float32"))  # doctest: +SKIP
    """
    import keras
    from keras import ops

    numeric_names, text_names = split_inputs(run)
    numeric = keras.Input((len(numeric_names),), dtype="float32", name="numeric" if text_names else "inputs")
    x = ops.cast(numeric, dtype)
    columns = {name: x[:, j:j + 1] for j, name in enumerate(numeric_names)}
    inputs: Any = numeric
    if run.task != "table":
        columns.update(_particle_features(columns, dtype))
    if text_names:
        strings = keras.Input((len(text_names),), dtype="string", name="text")
        columns.update(_one_hot_columns(strings, {n: run.text_inputs[n] for n in text_names}, dtype))
        inputs = {"numeric": numeric, "text": strings}
    features = ops.concatenate([columns[name] for name in run.scalers.feature_names], axis=1)
    x_scaler, y_scaler = run.scalers.x_scaler, run.scalers.y_scaler
    scaled = (features - _const(x_scaler.mean_, dtype)) / _const(x_scaler.scale_, dtype)
    network = run.network
    y = ops.cast(network(ops.cast(scaled, "float32")), dtype)
    outputs = ops.cast(y * _const(y_scaler.scale_, dtype) + _const(y_scaler.mean_, dtype), "float32")
    return keras.Model(inputs, outputs, name=f"nnlab_{run.task}")


def split_inputs(run: Any) -> tuple[list[str], list[str]]:
    """The run's raw input columns as (numeric, text), each in the run's column order."""
    text = run.text_inputs
    return [c for c in run.inputs if c not in text], [c for c in run.inputs if c in text]


def _one_hot_columns(strings: Any, text: dict[str, list[str]], dtype: str) -> dict[str, Any]:
    """``column=category`` -> its 0/1 column, from the string matrix ``strings`` (one column per text column)."""
    import keras
    from keras import ops

    from nnlab.data import TableEncoding

    columns = {}
    for j, (name, categories) in enumerate(text.items()):
        lookup = keras.layers.StringLookup(vocabulary=list(categories), output_mode="one_hot", name=f"text_{j}")
        hot = ops.cast(lookup(strings[:, j:j + 1])[:, 1:], dtype)  # slot 0 (an unseen category) dropped
        names = TableEncoding((name,), {name: tuple(categories)}).feature_names
        columns.update({feature: hot[:, k:k + 1] for k, feature in enumerate(names)})
    return columns


def _const(values: Any, dtype: str) -> np.ndarray:
    return np.asarray(values, dtype=dtype)


def _particle_features(c: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The 15 derived features of the particle task, as add_derived_features computes them."""
    from keras import ops

    m, vx, vy = c["mass"], c["initial_velocity_x"], c["initial_velocity_y"]
    x, y, q = c["initial_position_x"], c["initial_position_y"], c["charge"]
    b, t = c["magnetic_field_strength"], c["simulation_time"]
    speed = ops.sqrt(vx * vx + vy * vy)
    omega = q * b / m
    if dtype == "float64":
        phase = omega * t
        sin_p, cos_p = ops.sin(phase), ops.cos(phase)
    else:
        phase, sin_p, cos_p = _phase_float32(q, b, m, t)
    return {
        "initial_speed": speed, "initial_position_mag": ops.sqrt(x * x + y * y),
        "initial_momentum_x": m * vx, "initial_momentum_y": m * vy,
        "initial_momentum_mag": m * speed, "momentum_dot_position": m * (vx * x + vy * y),
        "charge_field_product": q * b, "abs_charge": ops.abs(q), "cyclotron_frequency": omega,
        "cyclotron_phase": phase, "lorentz_force_mag": ops.abs(q) * speed * ops.abs(b),
        "sim_time_field": t * b, "time_squared": t * t,
        "sin_cyclotron_phase": sin_p, "cos_cyclotron_phase": cos_p,
    }


def _split(a: Any) -> tuple[Any, Any]:
    # Veltkamp: a = hi + lo exactly, each half with 12 significant bits (float32).
    big = a * 4097.0
    hi = big - (big - a)
    return hi, a - hi


def _two_product(a: Any, b: Any) -> tuple[Any, Any]:
    """p + e == a * b exactly in float32 (Dekker), without a fused multiply-add."""
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, e


def _phase_float32(q: Any, b: Any, m: Any, t: Any) -> tuple[Any, Any, Any]:
    """The phase q·B/m·t as hi + lo in float32, and its sin/cos to first order in lo.

    A float32 phase of a few hundred radians is off by ~1e-5 rad, which moves sin/cos by as
    much; carrying the rounding error of each product and quotient keeps them to ~1e-7.
    """
    from keras import ops

    p, p_err = _two_product(q, b)
    w = p / m
    s, s_err = _two_product(w, m)
    w_lo = ((p - s) - s_err + p_err) / m
    hi, hi_err = _two_product(w, t)
    lo = hi_err + w_lo * t
    sin_hi, cos_hi = ops.sin(hi), ops.cos(hi)
    return hi + lo, sin_hi + cos_hi * lo, cos_hi - sin_hi * lo
