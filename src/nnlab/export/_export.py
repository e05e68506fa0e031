"""Write a run's deployable graph in one of four formats, check it in its own runtime, describe it.

The file (or SavedModel directory) is written under a temporary name beside ``out``,
loaded again in the format's runtime and run on the run's test rows; only when it
agrees with nnlab's own prediction path (:meth:`TrainedRun.predict`) is it renamed to
``out``, and ``out.meta.json`` written beside it.

Agreement rule: ``max |export - nnlab| / max(|nnlab|, scale of the target)`` over the test
rows and targets must be <= 1e-5, where the reference gets the same float32 raw values as
the export (the export's input is a float32 matrix). The target's scale (its standard
deviation in training) keeps predictions near zero from dividing by almost nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnlab._files import atomic_write_json, special_file_kind, writer_tag
from nnlab.errors import ConfigError, NnlabError

__all__ = ["FORMATS", "TOLERANCE", "export_run", "export_summary"]

FORMATS = ("keras", "savedmodel", "tflite", "onnx")
TOLERANCE = 1e-5
_INSTALL = "pip install 'nnlab[export]'"
# The modules each format needs beyond TensorFlow/Keras, to write it and to run it.
_NEEDS = {"keras": (), "savedmodel": (), "tflite": ("ai_edge_litert",), "onnx": ("tf2onnx", "onnx", "onnxruntime")}
_RUNTIMES = {"keras": "keras.saving.load_model", "savedmodel": "tf.saved_model.load",
             "tflite": "ai_edge_litert.interpreter.Interpreter", "onnx": "onnxruntime.InferenceSession"}


def export_run(trained: Any = None, *, fmt: str, out: str | os.PathLike, weights: str = "final", force: bool = False,
               output_dir: str | os.PathLike = "training_output", run: str = "latest") -> dict[str, Any]:
    """Export a run as one self-contained model of format ``fmt`` at ``out``, with ``out.meta.json``.

    Args:
        trained: a loaded :class:`~nnlab.export.TrainedRun`; None: load ``run`` of ``output_dir``.
        fmt: one of :data:`FORMATS`.
        out: the file to write (a directory for ``savedmodel``).
        weights: ``"final"`` or ``"best"`` (when ``trained`` is None).
        force: replace an existing ``out`` and its meta file.

    Returns:
        The meta document written to ``out.meta.json``.

    Raises:
        ConfigError: a bad format, destination or run; NnlabError: a missing converter or runtime
            (naming ``nnlab[export]``), or an export that disagrees with nnlab's predictions.

    Example:
        >>> meta = export_run(fmt="onnx", out="model.onnx")  # doctest: +SKIP
        >>> meta["runtime_check"]["max_rel_diff"] < 1e-5  # doctest: +SKIP
        True
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: '{fmt}' is not an export format; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    check_destination(out, fmt=fmt, force=force)
    if trained is None:  # before the runtime, which may load TensorFlow: an unknown run answers at once
        from nnlab.export._run import TrainedRun

        trained = TrainedRun.load(output_dir, run, weights=weights)
    require_runtime(fmt)
    from nnlab.export._graph import FLOAT32_ONLY_FORMATS, deployable_model

    refuse_text_columns(trained, fmt)
    model = deployable_model(trained, dtype="float32" if fmt in FLOAT32_ONLY_FORMATS else "float64")
    X, y_true = test_rows(trained)
    reference = reference_predictions(trained, input_frame(trained, X))  # nnlab's own path, once
    with _temporary_beside(out, fmt) as tmp:
        _convert(fmt, model, tmp)
        predicted = load_predictor(fmt, tmp)(X)
        check = agreement(trained, reference, predicted, y_true, fmt)
        _replace(tmp, out)
    meta = _meta(trained, fmt, out, check)
    meta["file_bytes"] = _file_bytes(out)
    if fmt == "tflite":
        meta["litert_dynamic_int8"] = litert_int8_reference(trained, model, X, reference, y_true, out)
    atomic_write_json(meta_path(out), meta)
    return meta


def _convert(fmt: str, model: Any, tmp: Path) -> None:
    """Write the model with its format's converter; a converter that fails is one clear error (nothing kept)."""
    try:
        _WRITERS[fmt](model, tmp)
    except (OSError, NnlabError):
        raise
    except Exception as exc:  # the converters' own errors (TensorFlow, tf2onnx): reported, not a traceback
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise NnlabError(f"the {fmt} converter failed on this run's network: {type(exc).__name__}: "
                         f"{first[:300]}; nothing was written") from exc


def _file_bytes(path: Path) -> int:
    """The bytes of the written model (a SavedModel directory: all its files)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def export_summary(meta: dict[str, Any], out: str | os.PathLike) -> str:
    """A few lines for the console: what was written, and how it ran in its runtime."""
    check = meta["runtime_check"]
    r2 = "n/a" if check["test_r2"] is None else f"{check['test_r2']:.4f}"
    feeds = meta.get("model_inputs") or {"": meta["inputs"]}
    kinds = {"": "float32", "numeric": "'numeric', float32", "text": "'text', string"}
    lines = [f"exported run {meta['run_id']} ({meta['weights']}) as {meta['format']}: {out}",
             *(f"  inputs  {len(columns)} raw columns ({kinds[key]}): {', '.join(columns)}"
               for key, columns in feeds.items()),
             f"  outputs {', '.join(meta['outputs'])}",
             f"  check   {check['runtime']} on {check['rows']} test rows: max relative difference "
             f"{check['max_rel_diff']:.2g} (<= {check['tolerance']:g}), test R² {r2}"]
    size = meta.get("size")
    if isinstance(size, dict):
        lines.append(f"  size    {size['n_weights']} weights: {size['float32_bytes']} B as float32, "
                     f"{size['packed_bytes']} B bit-packed at {size['bits']} significant bits, "
                     f"{size['compressed_bytes']} B compressed")
    if "file_bytes" in meta:
        lines.append(f"  file    {meta['file_bytes']} B")
    int8 = meta.get("litert_dynamic_int8")
    if isinstance(int8, dict):
        r2_int8 = "n/a" if int8["test_r2"] is None else f"{int8['test_r2']:.4f}"
        lines.append(f"  int8    LiteRT dynamic-range int8 (not written): {int8['file_bytes']} B, test R² {r2_int8}")
    lines.append(f"  meta    {meta_path(out)}")
    return "\n".join(lines)


def meta_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


def check_destination(out: Path, *, fmt: str, force: bool) -> None:
    """Refuse, before any work, a destination that exists (without ``force``) or is not replaceable."""
    text = os.fspath(out)
    if not text or text.endswith(("/", os.sep)):
        raise ConfigError(f"--out: '{text}' names a directory; give the name of the {fmt} model to write")
    for target, role, want_dir in ((out, "", fmt == "savedmodel"), (meta_path(out), " (the meta file)", False)):
        try:
            mode = os.stat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        kind = special_file_kind(mode)
        if kind is not None and not (want_dir and kind == "a directory"):
            raise ConfigError(f"--out: '{target}'{role} is {kind}; give the name of a {fmt} model to write")
        if not force:
            raise ConfigError(f"--out: '{target}'{role} already exists; choose another name or pass --force "
                              "to replace it")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(f"--out: the folder '{parent}' of '{out}' does not exist or is not a directory")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out: cannot write in '{parent}' (permission denied)")


def require_runtime(fmt: str) -> None:
    """Import the converter/runtime modules of ``fmt``; a missing one is an error naming the extra."""
    import importlib

    for module in _NEEDS[fmt]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise NnlabError(f"--format {fmt} needs the Python package '{module}', which cannot be imported "
                             f"({exc}); install the export extra: {_INSTALL}") from None


def refuse_text_columns(run: Any, fmt: str) -> None:
    """Refuse a table run with text columns for a format whose graph cannot take strings."""
    from nnlab.export._graph import TEXT_FORMATS

    if run.text_inputs and fmt not in TEXT_FORMATS:
        raise ConfigError(f"--format {fmt}: run {run.run_id} has the text column(s) {sorted(run.text_inputs)}, "
                          f"one-hot encoded before the network; the {fmt} format cannot take text: export with "
                          f"--format {' or '.join(TEXT_FORMATS)} (they take the text columns as a string input), "
                          "use `nnlab predict`, or train on numeric columns only")


def test_rows(run: Any) -> tuple[Any, np.ndarray]:
    """The run's test rows as raw inputs of the export, and their true targets in physical units.

    The inputs are one float32 matrix, or for a table with text columns a dict: ``numeric``
    (float32) and ``text`` (str; each one-hot block decoded to its category, ``""`` where the
    row's category was unseen in training, i.e. all zeros).
    """
    from nnlab.export._graph import split_inputs
    from nnlab.runs import DataSource

    data = DataSource.from_record(run.record.get("data"), run.config).prepare()
    raw = data.x_scaler.inverse_transform(np.asarray(data.X_test, dtype=np.float64))
    y_true = data.inverse_transform_targets(np.asarray(data.y_test, dtype=np.float64))
    numeric_names, text_names = split_inputs(run)
    if not text_names:
        return raw[:, :len(run.inputs)].astype(np.float32), y_true
    position = {name: j for j, name in enumerate(run.scalers.feature_names)}
    text = np.empty((len(raw), len(text_names)), dtype=object)
    for j, name in enumerate(text_names):
        categories = run.text_inputs[name]
        start = position[f"{name}={categories[0]}"]
        block = raw[:, start:start + len(categories)]
        hot = block.max(axis=1) > 0.5
        text[:, j] = np.where(hot, np.asarray(categories, dtype=object)[np.argmax(block, axis=1)], "")
    numeric = raw[:, [position[name] for name in numeric_names]].astype(np.float32)
    return {"numeric": numeric, "text": text.astype(str)}, y_true


def input_frame(run: Any, X: Any) -> Any:
    """The raw rows ``X`` (as :func:`test_rows` gives them) as a DataFrame of ``run.inputs``."""
    import pandas as pd

    if not isinstance(X, dict):
        return pd.DataFrame(np.asarray(X, dtype=np.float64), columns=run.inputs)
    from nnlab.export._graph import split_inputs

    numeric_names, text_names = split_inputs(run)
    frame = pd.DataFrame(np.asarray(X["numeric"], dtype=np.float64), columns=numeric_names)
    for j, name in enumerate(text_names):
        frame[name] = pd.Series(np.asarray(X["text"])[:, j], dtype=object)
    return frame[run.inputs]


def reference_predictions(run: Any, frame: Any) -> np.ndarray:
    """nnlab's predictions of raw rows; a text value unseen in training one-hot encoded as all zeros.

    :meth:`TrainedRun.predict` refuses such a value; the export (like training's validation and
    test rows) encodes it as zeros: here the value is swapped for a known category, and that
    category's 1 set back to 0 in the scaled features.
    """
    unseen = {name: ~frame[name].astype("string").isin(categories).fillna(False).to_numpy(dtype=bool)
              for name, categories in run.text_inputs.items()}
    if not any(mask.any() for mask in unseen.values()):
        return run.predict(frame)
    known = frame.copy()
    position = {name: j for j, name in enumerate(run.scalers.feature_names)}
    x_scaler = run.scalers.x_scaler
    for name, mask in unseen.items():
        known.loc[mask, name] = run.text_inputs[name][0]
    X = run.features(known)
    for name, mask in unseen.items():
        j = position[f"{name}={run.text_inputs[name][0]}"]
        X[mask, j] = np.float32((0.0 - x_scaler.mean_[j]) / x_scaler.scale_[j])
    scaled = run.network.predict(X, verbose=0, batch_size=4096)
    return run.scalers.inverse_transform_targets(np.asarray(scaled, dtype=np.float64).reshape(len(X), -1))


def relative_difference(run: Any, reference: np.ndarray, predicted: np.ndarray) -> float:
    """max |predicted - reference| / max(|reference|, the target's training standard deviation)."""
    if not len(reference):
        return 0.0
    predicted = np.asarray(predicted, dtype=np.float64).reshape(reference.shape)
    scale = np.maximum(np.abs(reference), np.asarray(run.scalers.y_scaler.scale_, dtype=np.float64))
    return float(np.max(np.abs(predicted - reference) / scale))


def agreement(run: Any, reference: np.ndarray, predicted: np.ndarray, y_true: np.ndarray, fmt: str
              ) -> dict[str, Any]:
    """Compare an export's predictions with nnlab's (``reference``) on the same rows; refuse a disagreement."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(reference.shape)
    diff = relative_difference(run, reference, predicted)
    if not diff <= TOLERANCE:
        raise NnlabError(f"the {fmt} export disagrees with nnlab's predictions on the run's test rows: max relative "
                         f"difference {diff:.3g} > {TOLERANCE:g}; nothing was written")
    return {"runtime": _RUNTIMES[fmt], "rows": int(len(reference)), "max_rel_diff": diff, "tolerance": TOLERANCE,
            "test_r2": r2_score(y_true, predicted)}


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    """R² averaged over the targets (as Keras' R2Score, ``uniform_average``)."""
    if len(y_true) < 2:
        return None
    total = np.sum((y_true - y_true.mean(axis=0)) ** 2, axis=0)
    residual = np.sum((y_true - y_pred) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_target = np.where(total > 0, 1.0 - residual / total, 0.0)
    return float(np.mean(per_target))


# --- writing and loading each format ----------------------------------------------------------


def _write_keras(model: Any, path: Path) -> None:
    model.save(path)


def _write_savedmodel(model: Any, path: Path) -> None:
    import logging

    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))  # "Assets written to ..." (a text column's lookup table)
    try:
        model.export(str(path), format="tf_saved_model", verbose=False)
    finally:
        logger.setLevel(level)


def _write_tflite(model: Any, path: Path, *, dynamic_int8: bool = False) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.savedmodel.") as saved:
        model.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if dynamic_int8:  # LiteRT's dynamic-range quantization: int8 weights, float activations
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flat = converter.convert()
    path.write_bytes(flat)


def litert_int8_reference(run: Any, model: Any, X: Any, reference: np.ndarray, y_true: np.ndarray, out: Path
                          ) -> dict[str, Any]:
    """The same graph converted with LiteRT's dynamic-range int8 quantization: its file size and test R²
    in the LiteRT interpreter, beside the float32 export (a reference point, not written)."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.int8.") as folder:
        path = Path(folder) / "int8.tflite"
        _write_tflite(model, path, dynamic_int8=True)
        predicted = _tflite_predictor(str(path))(X)
        size = path.stat().st_size
    diff = relative_difference(run, reference, predicted)
    return {"converter": "tf.lite.Optimize.DEFAULT (dynamic range)", "file_bytes": size,
            "max_rel_diff": diff, "test_r2": r2_score(y_true, np.asarray(predicted, np.float64))}


def _write_onnx(model: Any, path: Path) -> None:
    import logging

    import tensorflow as tf

    model(np.ones((1, model.inputs[0].shape[1]), dtype=np.float32))  # Keras exports to ONNX only a called model
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO lines narrate every conversion
    # tf2onnx sets TF_CPP_MIN_LOG_LEVEL in this process's environment and TensorFlow's logger level
    # (tf2onnx/verbose_logging.py): the caller's (a notebook's, the processes it starts later) stay as they were.
    level, tf_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL"), tf.get_logger().level
    try:
        model.export(str(path), format="onnx", verbose=False)
    finally:
        if level is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = level
        tf.get_logger().setLevel(tf_level)


_WRITERS: dict[str, Callable[[Any, Path], None]] = {
    "keras": _write_keras, "savedmodel": _write_savedmodel, "tflite": _write_tflite, "onnx": _write_onnx}


def load_predictor(fmt: str, path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """A function float32 rows -> predictions, running the exported file in the format's own runtime."""
    path = os.fspath(path)
    if fmt == "keras":
        import keras

        model = keras.saving.load_model(path)
        return lambda X: np.asarray(model.predict(_tensors(X), verbose=0, batch_size=4096))
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # held by the closure: serve's variables live in it
        return lambda X: loaded.serve(_tensors(X)).numpy()
    if fmt == "tflite":
        return _tflite_predictor(path)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda X: session.run(None, {name: X})[0]


def _tensors(X: Any) -> Any:
    """TensorFlow tensors of the inputs (Keras' predict takes strings only as tensors)."""
    import tensorflow as tf

    return {k: tf.constant(v) for k, v in X.items()} if isinstance(X, dict) else tf.constant(X)


def _tflite_predictor(path: str) -> Callable[[np.ndarray], np.ndarray]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT's own package is the runtime; TensorFlow's copy is the fallback
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter

    def predict(X: np.ndarray) -> np.ndarray:
        interpreter = Interpreter(model_path=path)
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, X.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, np.ascontiguousarray(X, dtype=np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()

    return predict


# --- files ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _temporary_beside(out: Path, fmt: str):
    """A temporary path next to ``out`` (same file system, so renaming is atomic), removed unless used."""
    suffix = {"keras": ".keras", "onnx": ".onnx", "tflite": ".tflite"}.get(fmt, "")
    tmp = out.with_name(f".{out.name}.{writer_tag()}.tmp{suffix}")
    try:
        yield tmp
    finally:
        _remove(tmp)


def _replace(tmp: Path, out: Path) -> None:
    if out.is_dir() and not out.is_symlink():  # a SavedModel replaced with --force: swap, then delete
        old = out.with_name(f".{out.name}.{writer_tag()}.old")
        os.rename(out, old)
        os.rename(tmp, out)
        _remove(old)
    else:
        os.replace(tmp, out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _meta(run: Any, fmt: str, out: Path, check: dict[str, Any]) -> dict[str, Any]:
    import nnlab
    from nnlab.data import PARTICLE_TASK, TARGET_UNITS
    from nnlab.export._size import weights_bits, weights_size

    m = run.config.model
    bits = weights_bits(run.config)  # None: float32, the binary precision limit off or at 24 bits
    meta = {
        "format": fmt, "path": out.name, "run_id": run.run_id, "task": run.task, "nnlab_version": nnlab.__version__,
        "inputs": list(run.inputs), "input_dtype": "float32", "outputs": list(run.targets),
        # The simulation's SI units; a user's table declares none (null).
        "units": {name: TARGET_UNITS.get(name) if run.task == PARTICLE_TASK else None for name in run.targets},
        "weights": run.weights_path.name,
        "precision": {"significant_bits": bits or 24, "rounding": m.binary_rounding, "schedule": m.constraint_schedule,
                      "constraint_interval": m.constraint_interval, "binary_precision_max": m.enable_binary_precision_max,
                      "compute": m.precision_policy},
        "runtime_check": check,
        "size": weights_size(run.network.get_weights(), bits),
    }
    if run.text_inputs:
        from nnlab.export._graph import split_inputs

        numeric_names, text_names = split_inputs(run)
        meta["input_dtype"] = {"numeric": "float32", "text": "string"}
        meta["text_inputs"] = {name: list(run.text_inputs[name]) for name in text_names}
        # The model takes a dict of two matrices: these names, these columns in this order.
        meta["model_inputs"] = {"numeric": numeric_names, "text": text_names}
    return meta
