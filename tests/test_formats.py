"""nnlab.formats: weights cast to bfloat16/float16/FP8, and the "formats" of test_metrics.json."""

from __future__ import annotations

import csv
import doctest
import json
from pathlib import Path

import keras
import ml_dtypes
import numpy as np
import pytest

import nnlab.formats
from nnlab.data import complete_data_pipeline
from nnlab.errors import DataValidationError
from nnlab.formats import (FORMAT_BITS, FORMATS, QUANTIZER_BITS, REFERENCE_BITS, cast_weights, evaluate_formats,
                           evaluate_quantizers, quantized_copy)
from nnlab.model import AdvancedNeuralNetwork, regression_metrics
from nnlab.runs import train_with_tracking

F32 = np.float32


def test_format_bits_match_the_dtypes():
    assert set(FORMATS) == set(FORMAT_BITS)
    for name, dtype in FORMATS.items():
        assert ml_dtypes.finfo(dtype).nmant + 1 == FORMAT_BITS[name], name


def test_doctests():
    result = doctest.testmod(nnlab.formats)
    assert result.attempted >= 2 and result.failed == 0


# --- cast_weights ----------------------------------------------------------------


@pytest.mark.parametrize("fmt, value, expected", [
    ("bfloat16", 1 / 3, 0.333984375),
    ("float16", 1 / 3, 0.333251953125),
    ("float8_e4m3", 0.3, 0.3125),
    ("float8_e5m2", 0.3, 0.3125),
    ("float8_e4m3", -2.7, -2.75),
    ("float8_e5m2", 2.7, 2.5),
    # halfway: ties go to the even significand
    ("float8_e4m3", 1.0625, 1.0),
    ("float8_e4m3", 1.1875, 1.25),
    ("float8_e5m2", 1.125, 1.0),
    ("float8_e5m2", 1.375, 1.5),
    ("float16", 1 + 2.0**-11, 1.0),
    ("bfloat16", 1 + 3 * 2.0**-8, 1 + 2.0**-6),
    # subnormals of the format survive
    ("float8_e4m3", 0.001, 2.0**-9),
    ("float8_e5m2", 2.0**-16, 2.0**-16),
])
def test_cast_values(fmt, value, expected):
    cast, saturated, underflow = cast_weights([np.array([value], F32)], fmt)
    assert cast[0].dtype == F32
    assert cast[0][0] == F32(expected)
    assert (saturated, underflow) == (0, 0)


@pytest.mark.parametrize("fmt, too_large, limit", [
    ("float8_e4m3", 1000.0, 448.0),
    ("float8_e4m3", 464.0, 448.0),  # above the largest finite value: saturates, never NaN
    ("float8_e5m2", 1e5, 57344.0),
    ("float16", 1e5, 65504.0),
    ("bfloat16", float(np.finfo(F32).max), float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)),
    ("float8_e4m3", np.inf, 448.0),
])
def test_saturation(fmt, too_large, limit):
    w = np.array([[too_large, -too_large], [limit, 1.0]], F32)
    (cast,), saturated, underflow = cast_weights([w], fmt)
    np.testing.assert_array_equal(cast, np.array([[limit, -limit], [limit, 1.0]], F32))
    assert saturated == 2  # the largest finite value itself is not counted
    assert underflow == 0


@pytest.mark.parametrize("fmt, tiny, kept", [
    ("float8_e4m3", 1e-4, 1e-2),
    ("float8_e5m2", 5e-6, 1e-4),
    ("float16", 1e-8, 1e-6),
    ("bfloat16", 1e-45, 1e-38),
])
def test_underflow(fmt, tiny, kept):
    w = np.array([tiny, -tiny, 0.0, -0.0, kept, 0.5], F32)
    (cast,), saturated, underflow = cast_weights([w], fmt)
    assert underflow == 2  # the zeros were zero already
    assert saturated == 0
    assert (cast[:4] == 0).all() and cast[4] != 0


def test_counts_add_up_over_arrays_and_input_is_untouched():
    a = np.array([1000.0, 1e-4, 0.5], F32)
    b = np.array([[-600.0], [-1e-5]], F32)
    counter = np.array([3, 4], np.int64)
    before = [a.copy(), b.copy(), counter.copy()]
    cast, saturated, underflow = cast_weights([a, b, counter], FORMATS["float8_e4m3"])
    assert (saturated, underflow) == (2, 2)
    assert cast[1].shape == (2, 1)
    assert cast[2] is counter  # not floating point: passed through, not counted
    for x, y in zip([a, b, counter], before):
        np.testing.assert_array_equal(x, y)


def test_cast_is_rounding_to_the_format_bits():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-3, 2, 20000)).astype(F32)
    for name, dtype in FORMATS.items():
        (cast,), _, _ = cast_weights([w], name)
        # representable: a second cast changes nothing
        np.testing.assert_array_equal(cast_weights([cast], name)[0][0], cast)
        # round to nearest: relative error at most half an ulp, 2**-bits, in the normal range
        normal = (np.abs(w) >= ml_dtypes.finfo(dtype).tiny) & (np.abs(w) <= ml_dtypes.finfo(dtype).max)
        rel = np.abs(cast[normal] - w[normal]) / np.abs(w[normal])
        assert rel.max() <= 2.0 ** -FORMAT_BITS[name], name
        assert np.array_equal(np.sign(cast[cast != 0]), np.sign(w[cast != 0]))


def test_unknown_format():
    with pytest.raises(ValueError, match="float8_e3m4.*allowed bfloat16, float16"):
        cast_weights([np.ones(2, F32)], "float8_e3m4")


# --- evaluate_formats ------------------------------------------------------------


@pytest.fixture
def linear_model():
    """A fixed-weight network y = X @ W + b (one hidden ReLU layer of positive inputs) and its data."""
    rng = np.random.default_rng(1)
    X = rng.uniform(0.1, 1.0, (400, 5)).astype(F32)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    weights = [rng.uniform(0.05, 1.0, (5, 8)).astype(F32), rng.uniform(0.0, 0.2, 8).astype(F32),
               rng.standard_normal((8, 3)).astype(F32), rng.standard_normal(3).astype(F32)]
    weights[0][0, 0] = 1000.0  # saturates in e4m3 only
    weights[2][0, 0] = 1e-5  # flushes to zero in e4m3 (and e5m2: below 2**-17)
    model.set_weights(weights)
    noise = rng.standard_normal((400, 3)).astype(F32) * 0.5
    y = np.asarray(model.predict_on_batch(X)) + noise
    return model, X, y, weights


def test_evaluate_formats(linear_model):
    model, X, y, weights = linear_model
    reference = regression_metrics(y, model.predict_on_batch(X))["r2"]
    report = evaluate_formats(model, X, y)
    assert list(report) == list(FORMATS)
    assert report["float16"]["r2"] == pytest.approx(reference, abs=1e-4)
    assert report["bfloat16"]["r2"] == pytest.approx(reference, abs=1e-2)
    for name, entry in report.items():
        assert entry["significant_bits"] == FORMAT_BITS[name]
        assert entry["dtype"] == np.dtype(FORMATS[name]).name
        assert entry["n_weights"] == sum(w.size for w in weights)
        assert entry["r2_drop"] == pytest.approx(reference - entry["r2"], abs=1e-12)
        # the R² of the cast weights, computed independently
        model.set_weights([np.clip(w, -entry["max_finite"], entry["max_finite"]).astype(FORMATS[name]).astype(F32)
                           for w in weights])
        assert entry["r2"] == pytest.approx(regression_metrics(y, model.predict_on_batch(X))["r2"], abs=1e-12)
        model.set_weights(weights)
    assert report["float8_e4m3"]["dtype"] == "float8_e4m3fn"
    assert report["float8_e4m3"]["max_finite"] == 448.0
    assert report["float8_e4m3"]["saturated"] == 1 and report["float8_e5m2"]["saturated"] == 0
    assert report["float8_e4m3"]["underflow"] >= 1 and report["float16"]["underflow"] == 0
    assert report["float8_e4m3"]["r2_drop"] > report["float16"]["r2_drop"]


def test_weights_restored_exactly(linear_model):
    model, X, y, weights = linear_model
    evaluate_formats(model, X, y, reference_r2=0.5)
    for now, before in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(now, before)


def test_weights_restored_when_a_prediction_fails(linear_model, monkeypatch):
    model, X, y, weights = linear_model
    calls = []

    def failing(x):
        calls.append(1)
        raise RuntimeError("device lost")

    monkeypatch.setattr(model, "predict_on_batch", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        evaluate_formats(model, X, y, reference_r2=0.5)
    assert calls  # failed with cast weights in the model
    for now, before in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(now, before)


def test_formats_subset_and_validation(linear_model):
    model, X, y, _ = linear_model
    report = evaluate_formats(model, X, y, formats=["float16"], reference_r2=1.0)
    assert list(report) == ["float16"]
    custom = evaluate_formats(model, X, y, formats={"e4m3_plain": ml_dtypes.float8_e4m3fn})
    assert custom["e4m3_plain"]["significant_bits"] is None
    with pytest.raises(DataValidationError, match=r"X_test must have shape \(n, 5\)"):
        evaluate_formats(model, X[:, :4], y)
    with pytest.raises(DataValidationError, match="y_test"):
        evaluate_formats(model, X, y[:10])
    with pytest.raises(ValueError, match="unknown"):
        evaluate_formats(model, X, y, formats=["float4"])


# --- in a run: test_metrics.json ---------------------------------------------------

TINY = {"hidden_layers": [16], "epochs": 2, "batch_size": 64, "checkpoint_every": 5, "jit_compile": False,
        "seed": 5}


@pytest.fixture(scope="module")
def data():
    return complete_data_pipeline(num_particles=300, seed=3)


def train(data, out):
    model = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], TINY)
    return model, train_with_tracking(model, *data, TINY, data=data, output_dir=out, verbose=0)


@pytest.fixture(scope="module")
def tiny_run(data, tmp_path_factory):
    return train(data, tmp_path_factory.mktemp("formats"))


def test_test_metrics_have_formats(tiny_run, data):
    model, results = tiny_run
    assert results["status"] == "completed" and results["error_summary"]["error_count"] == 0
    metrics = json.loads((Path(results["run_dir"]) / "test_metrics.json").read_text())
    formats = metrics["formats"]
    assert list(formats) == [*FORMATS, "int8", "int4"]
    assert results["test"]["formats"] == formats
    n_weights = model.model.count_params()
    reference = metrics["scaled"]["r2"]
    for name in ("int8", "int4"):
        entry = formats[name]
        assert entry["quantizer"] == "keras.Model.quantize" and entry["bits"] == QUANTIZER_BITS[name]
        assert entry["n_weights"] == n_weights and "error" not in entry
        # every Dense kernel: 22 features -> 16 -> targets
        kernels = sum(w.size for w in model.model.get_weights() if w.ndim == 2)
        assert entry["n_quantized"] == kernels
        assert entry["r2_drop"] == pytest.approx(reference - entry["r2"], abs=1e-9)
    assert abs(formats["int8"]["r2_drop"]) < 0.02
    assert abs(formats["int4"]["r2_drop"]) < 0.2
    for name in FORMATS:
        entry = formats[name]
        assert entry["significant_bits"] == FORMAT_BITS[name]
        assert entry["n_weights"] == n_weights
        assert 0 <= entry["saturated"] <= n_weights and 0 <= entry["underflow"] <= n_weights
        assert entry["r2"] <= 1.0
        assert entry["r2_drop"] == pytest.approx(reference - entry["r2"], abs=1e-9)
    assert abs(formats["float16"]["r2_drop"]) < 1e-3
    assert abs(formats["bfloat16"]["r2_drop"]) < 0.05
    # a freshly trained small network has no weight near 448
    assert formats["float8_e4m3"]["saturated"] == 0


def test_saved_final_weights_are_not_cast(tiny_run, data):
    """The formats are evaluated after final.weights.h5 is written, and the model gets its weights back."""
    model, results = tiny_run
    run_dir = Path(results["run_dir"])
    fresh = AdvancedNeuralNetwork((data.X_train.shape[1],), data.y_train.shape[1], TINY)
    fresh.model.load_weights(run_dir / "weights" / "final.weights.h5")
    saved = fresh.model.get_weights()
    for now, file in zip(model.model.get_weights(), saved):
        np.testing.assert_array_equal(now, file)
    # cast weights would be representable in e5m2; the saved ones are not
    assert any(not np.array_equal(cast_weights([w], "float8_e5m2")[0][0], w) for w in saved)
    # the test R² of the saved weights is the one recorded
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    r2 = regression_metrics(data.y_test, fresh.predict(data.X_test))["r2"]
    assert metrics["scaled"]["r2"] == pytest.approx(r2, rel=1e-5)
    # ...and the e5m2 R² is that of the saved weights, cast
    fresh.model.set_weights(cast_weights(saved, "float8_e5m2")[0])
    r2_e5m2 = regression_metrics(data.y_test, fresh.predict(data.X_test))["r2"]
    assert metrics["formats"]["float8_e5m2"]["r2"] == pytest.approx(r2_e5m2, rel=1e-5)


def test_failing_formats_degrade(data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("cast failed")

    monkeypatch.setattr("nnlab.runs._pipeline.evaluate_formats", broken)
    with pytest.warns(RuntimeWarning, match="formats: RuntimeError: cast failed"):
        _, results = train(data, tmp_path)
    assert results["status"] == "completed"
    summary = results["error_summary"]
    assert summary["error_count"] == 1
    assert summary["by_component"] == {"test_metrics.json: formats": 1}
    assert results["performance_summary"]["error_count"] == 1
    metrics = json.loads((Path(results["run_dir"]) / "test_metrics.json").read_text())
    assert "formats" not in metrics
    assert metrics["scaled"]["r2"] == pytest.approx(results["test"]["scaled"]["r2"])
    row = next(csv.DictReader((tmp_path / "configuration_log.csv").read_text().splitlines()))
    assert row["status"] == "completed" and row["error_count"] == "1"
    assert "formats" in (Path(results["run_dir"]) / "training_log.txt").read_text()


# --- real quantizers: Keras' int8/int4 ---------------------------------------------


def test_reference_bits():
    assert REFERENCE_BITS == {**FORMAT_BITS, "int8": 8, "int4": 4, "litert_int8": 8}


def test_quantized_copy_leaves_the_model_alone(linear_model):
    model, X, _, weights = linear_model
    before = np.asarray(model.predict_on_batch(X))
    copy = quantized_copy(model, "int8")
    assert [layer.quantization_mode for layer in copy.layers if isinstance(layer, keras.layers.Dense)] == ["int8"] * 2
    assert all(layer.quantization_mode is None for layer in model.layers)
    for now, w in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(now, w)
    np.testing.assert_array_equal(model.predict_on_batch(X), before)
    with pytest.raises(ValueError, match="mode = 'int2' is unknown: allowed int8, int4"):
        quantized_copy(model, "int2")


def test_evaluate_quantizers(linear_model):
    model, X, y, _ = linear_model
    model.set_weights([np.clip(w, -5, 5) for w in model.get_weights()])  # no 1000 outlier: int8's scale is per unit
    reference = regression_metrics(y, model.predict_on_batch(X))["r2"]
    report = evaluate_quantizers(model, X, y)
    assert list(report) == ["int8", "int4"]
    for name, entry in report.items():
        assert entry["r2_drop"] == pytest.approx(reference - entry["r2"], abs=1e-12)
        assert (entry["dtype"], entry["bits"], entry["n_quantized"], entry["n_weights"]) == (
            name, QUANTIZER_BITS[name], 5 * 8 + 8 * 3, 5 * 8 + 8 + 8 * 3 + 3)
        # the R² of Keras' quantized copy, computed independently
        copy = quantized_copy(model, name)
        assert entry["r2"] == pytest.approx(regression_metrics(y, np.asarray(copy(X)))["r2"], abs=1e-9)
    assert abs(report["int8"]["r2_drop"]) < 0.01
    assert report["int4"]["r2"] < report["int8"]["r2"] + 0.01


def test_a_quantizer_keras_refuses_is_recorded(linear_model, monkeypatch):
    model, X, y, _ = linear_model

    def refuse(self, mode, **kwargs):
        if mode == "int4":
            raise ValueError("int4 is not supported here")
        return original(self, mode, **kwargs)

    original = keras.Model.quantize
    monkeypatch.setattr(keras.Model, "quantize", refuse)
    seen = []
    report = evaluate_quantizers(model, X, y, on_error=lambda mode, exc: seen.append((mode, str(exc))))
    assert seen == [("int4", "int4 is not supported here")]
    assert report["int4"]["r2"] is None and report["int4"]["r2_drop"] is None
    assert report["int4"]["error"] == "ValueError: int4 is not supported here"
    assert report["int8"]["r2"] is not None and "error" not in report["int8"]
    with pytest.raises(ValueError, match="not supported"):
        evaluate_quantizers(model, X, y, modes=["int4"])


def test_refused_quantizer_in_a_run_degrades(data, tmp_path, monkeypatch):
    def refuse(self, mode, **kwargs):
        raise NotImplementedError(f"no {mode} here")

    monkeypatch.setattr(keras.Model, "quantize", refuse)
    with pytest.warns(RuntimeWarning, match=r"formats int[84]: NotImplementedError: no int[84] here"):
        _, results = train(data, tmp_path)
    assert results["status"] == "completed"
    assert results["error_summary"]["by_component"] == {"test_metrics.json: formats int8": 1,
                                                        "test_metrics.json: formats int4": 1}
    metrics = json.loads((Path(results["run_dir"]) / "test_metrics.json").read_text())
    assert metrics["formats"]["int4"]["error"] == "NotImplementedError: no int4 here"
    assert metrics["formats"]["float16"]["r2"] is not None
