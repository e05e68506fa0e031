"""Real low-precision number formats as reference points for the bit constraints.

Significant bits (implicit leading 1 included) of each format's significand:
float16 11, bfloat16 8, float8 e4m3 4, float8 e5m2 3.

:func:`evaluate_formats` answers "does this network survive a deployment in that
format?": the test R² of the trained network with its weights cast to each format.
It is a weight-only simulation: every floating-point weight is cast (rounded to
nearest, ties to even, by ``ml_dtypes``) and back to float32, and inference runs
in float32 -- activations and accumulations are not quantised.

:func:`evaluate_quantizers` adds real integer quantizers as references: Keras' own
``model.quantize("int8")`` / ``model.quantize("int4")`` on a copy of the network
(Dense kernels stored as integers with a scale per output; the Dense inputs
quantised to int8 on the fly). :func:`evaluate_litert_int8` is LiteRT's
dynamic-range int8 (a converter and an interpreter per call: not run per run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gc
from collections.abc import Callable

import ml_dtypes
import numpy as np

from nnlab._tflog import quiet_c_logs
from nnlab.errors import DataValidationError

if TYPE_CHECKING:  # TensorFlow loads only when a model is evaluated
    import keras

__all__ = ["FORMATS", "FORMAT_BITS", "QUANTIZER_BITS", "REFERENCE_BITS", "cast_weights", "evaluate_formats",
           "evaluate_litert_int8", "evaluate_quantizers", "quantized_copy"]

FORMAT_BITS: dict[str, int] = {"bfloat16": 8, "float16": 11, "float8_e4m3": 4, "float8_e5m2": 3}

# The NumPy types (shipped with TensorFlow through ml_dtypes). e4m3 is the "fn"
# variant: no infinities, largest finite 448 (the one FP8 hardware implements).
FORMATS: dict[str, type] = {
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
    "float8_e4m3": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}

# Bits of the integers a quantizer stores each Dense kernel weight in (a float scale per output beside them).
QUANTIZER_BITS: dict[str, int] = {"int8": 8, "int4": 4, "litert_int8": 8}
# Every name of test_metrics.json's "formats" -> its bits (the x of the precision study's reference points).
REFERENCE_BITS: dict[str, int] = {**FORMAT_BITS, **QUANTIZER_BITS}


def _format_dtype(fmt: str | Any) -> np.dtype:
    if isinstance(fmt, str):
        if fmt not in FORMATS:
            raise ValueError(f"format = {fmt!r} is unknown: allowed {', '.join(FORMATS)}")
        fmt = FORMATS[fmt]
    return np.dtype(fmt)


def cast_weights(weights: Sequence[np.ndarray], fmt: str | Any) -> tuple[list[np.ndarray], int, int]:
    """Round weights to a number format and back to float32, saturating out-of-range values.

    Each floating-point array is clipped to ``±finfo(fmt).max`` (a plain cast
    would give inf, or NaN for ``float8_e4m3fn``), cast to ``fmt`` (round to
    nearest, ties to even) and cast back to float32. Arrays that are not
    floating point (counters, seeds) are returned unchanged and not counted.

    Args:
        weights: the arrays, e.g. ``keras.Model.get_weights()``.
        fmt: a name of :data:`FORMATS` (``"float8_e4m3"``) or a NumPy/ml_dtypes
            type (``ml_dtypes.float8_e5m2``).

    Returns:
        ``(cast, saturated, underflow)``: the float32 arrays holding the format's
        values; how many weights had a magnitude above the format's largest
        finite value (set to it, sign kept); how many nonzero weights became zero.

    Example:
        >>> cast, saturated, underflow = cast_weights([np.array([1000.0, 0.3, 1e-4], np.float32)], "float8_e4m3")
        >>> cast[0].tolist(), saturated, underflow
        ([448.0, 0.3125, 0.0], 1, 1)
    """
    dtype = _format_dtype(fmt)
    limit = float(ml_dtypes.finfo(dtype).max)
    cast: list[np.ndarray] = []
    saturated = underflow = 0
    for w in weights:
        w = np.asarray(w)
        if not np.issubdtype(w.dtype, np.floating):
            cast.append(w)
            continue
        w32 = w.astype(np.float32, copy=False)
        too_large = np.abs(w32) > limit
        saturated += int(np.count_nonzero(too_large))
        rounded = np.clip(w32, -limit, limit).astype(dtype).astype(np.float32)
        underflow += int(np.count_nonzero((rounded == 0) & (w32 != 0)))
        cast.append(rounded)
    return cast, saturated, underflow


def _predict(model: keras.Model, X: np.ndarray) -> np.ndarray:
    # The prediction AdvancedNeuralNetwork.predict makes, so the float32 reference is the run's own test R².
    # (Imported here: nnlab.model imports the constraints, which may read FORMAT_BITS.)
    from nnlab.model import predict_array

    return predict_array(model, X)


def evaluate_formats(
    model: keras.Model,
    X_test: Any,
    y_test: Any,
    *,
    formats: Mapping[str, Any] | Sequence[str] = FORMATS,
    reference_r2: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Test R² of a trained network with its weights cast to each low-precision format.

    A weight-only deployment simulation: the model's floating-point weights
    (kernels, biases, batch-norm statistics, PReLU slopes) are cast by
    :func:`cast_weights` -- saturating at the format's largest finite value,
    rounded to nearest even -- and back to float32; inference runs in float32,
    one prediction of the test set per format. R² is
    :func:`nnlab.model.regression_metrics`' (mean over targets, on the targets
    as given: the scaled ones in a run), the definition of the run's test R².
    The original weights are put back afterwards, also when a prediction fails.

    Args:
        model: the trained ``keras.Model`` (``AdvancedNeuralNetwork.model``).
        X_test: test features, shape ``(n, n_features)``.
        y_test: test targets, shape ``(n, n_targets)`` (or ``(n,)``).
        formats: names of :data:`FORMATS`, or a mapping name -> NumPy/ml_dtypes type.
        reference_r2: the float32 test R² the drops are measured from; None
            computes it (one more prediction).

    Returns:
        One entry per format: ``dtype`` (the ml_dtypes name), ``significant_bits``
        (:data:`FORMAT_BITS`, None for a format not listed there), ``max_finite``,
        ``r2``, ``r2_drop`` (``reference_r2 - r2``), ``saturated``, ``underflow``
        and ``n_weights`` (floating-point weights cast).

    Raises:
        DataValidationError: ``X_test``/``y_test`` do not fit the model.
        ValueError: an unknown format name.

    Example:
        >>> import keras
        >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> X, y = np.random.rand(50, 3).astype("float32"), np.random.rand(50, 2).astype("float32")
        >>> report = evaluate_formats(net, X, y)
        >>> sorted(report), report["float16"]["significant_bits"]
        (['bfloat16', 'float16', 'float8_e4m3', 'float8_e5m2'], 11)
    """
    # Imported here: nnlab.model imports the constraints, which may read FORMAT_BITS.
    from nnlab.model import regression_metrics

    X, y = _check_test_data(model, X_test, y_test)
    if isinstance(formats, Mapping):
        dtypes = {name: _format_dtype(fmt) for name, fmt in formats.items()}
    else:
        dtypes = {name: _format_dtype(name) for name in formats}
    original = model.get_weights()
    n_weights = sum(int(w.size) for w in original if np.issubdtype(w.dtype, np.floating))
    report: dict[str, dict[str, Any]] = {}
    try:
        if reference_r2 is None:
            reference_r2 = regression_metrics(y, _predict(model, X))["r2"]
        for name, dtype in dtypes.items():
            cast, saturated, underflow = cast_weights(original, dtype)
            model.set_weights(cast)
            r2 = regression_metrics(y, _predict(model, X))["r2"]
            report[name] = {
                "dtype": dtype.name,
                "significant_bits": FORMAT_BITS.get(name),
                "max_finite": float(ml_dtypes.finfo(dtype).max),
                "r2": r2,
                "r2_drop": float(reference_r2) - r2,
                "saturated": saturated,
                "underflow": underflow,
                "n_weights": n_weights,
            }
    finally:
        model.set_weights(original)
    return report


def _check_test_data(model: keras.Model, X_test: Any, y_test: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X_test, dtype=np.float32)
    y = np.asarray(y_test, dtype=np.float32)
    if y.ndim == 1:
        y = y[:, None]
    n_features = model.inputs[0].shape[-1] if getattr(model, "inputs", None) else None
    if X.ndim != 2 or (n_features is not None and X.shape[1] != n_features):
        raise DataValidationError(f"evaluate_formats: X_test must have shape (n, {n_features}), got {X.shape}")
    if y.ndim != 2 or len(y) != len(X):
        raise DataValidationError(f"evaluate_formats: y_test must have shape ({len(X)}, n_targets), got {y.shape}")
    return X, y


def quantized_copy(model: keras.Model, mode: str) -> keras.Model:
    """A copy of ``model`` with its Dense layers quantized by Keras (``model.quantize(mode)``); ``model`` is untouched.

    The copy is a plain functional ``keras.Model`` of the same graph (a subclass such as
    the physics-informed model is not needed for inference) holding the trained weights.
    Only Dense layers are handed to Keras (the others have no quantized form).

    Args:
        model: a built functional ``keras.Model``.
        mode: ``"int8"`` or ``"int4"``.

    Raises:
        ValueError: an unknown mode; whatever Keras raises for a model it cannot quantize.

    Example:
        >>> import keras
        >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> quantized_copy(net, "int8").layers[-1].kernel.dtype, net.layers[-1].kernel.dtype
        ('int8', 'float32')
    """
    import keras

    if mode not in ("int8", "int4"):
        raise ValueError(f"mode = {mode!r} is unknown: allowed int8, int4")
    # Keras' Dense.quantize deletes the float kernel and calls gc.collect() per layer: seconds in a
    # process holding many objects. Frozen objects are skipped by collections: only the copy is scanned.
    gc.freeze()
    try:
        copy = keras.models.clone_model(_plain(model))
        copy.set_weights(model.get_weights())
        copy.quantize(mode, filters=lambda layer: isinstance(layer, keras.layers.Dense))
    finally:
        gc.unfreeze()
    return copy


def _predict_eager(copy: keras.Model, X: np.ndarray, *, batch_size: int = 8192) -> np.ndarray:
    # Called directly, not by predict_on_batch: a compiled predict function per copy would retrace
    # in every run of a process (TensorFlow's retracing warning) for a single use.
    import keras

    parts = [keras.ops.convert_to_numpy(copy(X[i:i + batch_size], training=False))
             for i in range(0, len(X), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, copy.output_shape[-1]), np.float32)


def _quantized_kernel_weights(copy: keras.Model) -> int:
    """Kernel weights the copy stores as integers (int4 packs two in a byte: counted from the layer's shape)."""
    return sum(int(layer.input.shape[-1]) * int(layer.units) for layer in copy.layers
               if getattr(layer, "quantization_mode", None) in ("int8", "int4"))


def _quantizer_entry(name: str, tool: str, r2: float | None, reference_r2: float, *, n_weights: int,
                     n_quantized: int) -> dict[str, Any]:
    return {"quantizer": tool, "dtype": "int4" if name == "int4" else "int8", "bits": QUANTIZER_BITS[name],
            "significant_bits": None, "r2": r2, "r2_drop": None if r2 is None else float(reference_r2) - r2,
            "n_weights": n_weights, "n_quantized": n_quantized}


def evaluate_quantizers(
    model: keras.Model,
    X_test: Any,
    y_test: Any,
    *,
    modes: Sequence[str] = ("int8", "int4"),
    reference_r2: float | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Test R² of the network quantized by Keras (:func:`quantized_copy`), one entry per mode.

    Unlike :func:`evaluate_formats` this is a real quantizer: int8 stores each Dense
    kernel as int8 with a float scale per output unit and quantizes the Dense inputs to
    int8 per row at inference; int4 stores the kernel in 4 bits (packed in int8). Biases
    and the other layers stay float. ``model`` is not modified.

    Args:
        model, X_test, y_test, reference_r2: as :func:`evaluate_formats`.
        modes: among ``"int8"``, ``"int4"``.
        on_error: called with ``(mode, exception)`` when Keras cannot quantize or run the
            copy; the entry then has ``r2`` None and ``error`` (the reason). None: raise.

    Returns:
        Per mode: ``quantizer`` ("keras.Model.quantize"), ``dtype``, ``bits`` (of each stored
        kernel weight), ``significant_bits`` (None), ``r2``, ``r2_drop``, ``n_weights`` (the
        model's floating-point weights), ``n_quantized`` (kernel weights stored as integers).
    """
    from nnlab.model import regression_metrics

    X, y = _check_test_data(model, X_test, y_test)
    if reference_r2 is None:
        reference_r2 = regression_metrics(y, _predict(model, X))["r2"]
    n_weights = sum(int(w.size) for w in model.get_weights() if np.issubdtype(w.dtype, np.floating))
    report: dict[str, dict[str, Any]] = {}
    for mode in modes:
        try:
            copy = quantized_copy(model, mode)
            with quiet_c_logs():  # oneDNN's "DT_INT8 only with AVX-512" notice at the first int8 matmul
                r2 = regression_metrics(y, _predict_eager(copy, X))["r2"]
            n_quantized = _quantized_kernel_weights(copy)
        except Exception as exc:  # Keras refuses a model it cannot quantize: a reason, not a lost run
            if on_error is None:
                raise
            on_error(mode, exc)
            report[mode] = {**_quantizer_entry(mode, "keras.Model.quantize", None, reference_r2,
                                               n_weights=n_weights, n_quantized=0),
                            "error": f"{type(exc).__name__}: {exc}"}
            continue
        report[mode] = _quantizer_entry(mode, "keras.Model.quantize", r2, reference_r2, n_weights=n_weights,
                                        n_quantized=n_quantized)
    return report


def evaluate_litert_int8(model: keras.Model, X_test: Any, y_test: Any, *,
                         reference_r2: float | None = None) -> dict[str, Any]:
    """Test R² of LiteRT's dynamic-range int8 (``optimizations=[tf.lite.Optimize.DEFAULT]``) of the bare network.

    Converted by TensorFlow's converter and run by ``ai_edge_litert``'s Interpreter.
    LiteRT quantizes only constant tensors of 1024 elements or more: ``n_quantized``
    says how many weights it stored as int8 (0 for a small network: then it is float32).
    A conversion costs ~0.3 s or more, so runs do not call it; an export can.

    Raises:
        ImportError: ``ai_edge_litert`` is not installed (the extra ``nnlab[export]``).
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from nnlab.model import regression_metrics

    X, y = _check_test_data(model, X_test, y_test)
    if reference_r2 is None:
        reference_r2 = regression_metrics(y, _predict(model, X))["r2"]
    converter = tf.lite.TFLiteConverter.from_keras_model(_plain(model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = Interpreter(model_content=converter.convert())
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], X.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], X)
    interpreter.invoke()
    r2 = regression_metrics(y, interpreter.get_tensor(out["index"]))["r2"]
    n_weights = sum(int(w.size) for w in model.get_weights() if np.issubdtype(w.dtype, np.floating))
    n_quantized = sum(int(np.prod(t["shape"])) for t in interpreter.get_tensor_details() if t["dtype"] == np.int8)
    return _quantizer_entry("litert_int8", "LiteRT dynamic-range", r2, reference_r2, n_weights=n_weights,
                            n_quantized=n_quantized)


def _plain(model: keras.Model) -> keras.Model:
    import keras

    # A single tensor for a one-input network (not a list of one): calling the copy with an array fits.
    inputs, outputs = model.inputs, model.outputs
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs)
