"""nnlab export: every format written by the CLI, loaded in its own runtime in a process without nnlab,
agreeing with nnlab's own predictions on fresh raw particles; meta file; refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnlab.data import INITIAL_COLUMNS, generate_particle_data
from nnlab.errors import NnlabError
from nnlab.export import FORMATS, TrainedRun, export_run
import _forked

REPO = Path(__file__).resolve().parents[1]
NAMES = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}

# Each loader runs in a fresh interpreter that never imports nnlab: argv = model, inputs.npy, outputs.npy.
LOADERS = {
    "keras": "import keras\nm = keras.saving.load_model(path)\ny = m.predict(X, verbose=0)",
    "savedmodel": "import tensorflow as tf\nm = tf.saved_model.load(path)\ny = m.serve(tf.constant(X)).numpy()",
    "tflite": ("from ai_edge_litert.interpreter import Interpreter\nit = Interpreter(model_path=path)\n"
               "i = it.get_input_details()[0]['index']\nit.resize_tensor_input(i, X.shape)\nit.allocate_tensors()\n"
               "it.set_tensor(i, X)\nit.invoke()\ny = it.get_tensor(it.get_output_details()[0]['index'])"),
    "onnx": ("import onnxruntime as ort\ns = ort.InferenceSession(path, providers=['CPUExecutionProvider'])\n"
             "y = s.run(None, {s.get_inputs()[0].name: X})[0]"),
}


def nnlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return _forked.run([sys.executable, "-m", "nnlab.cli", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def run_without_nnlab(fmt: str, model: Path, X: np.ndarray, tmp: Path) -> np.ndarray:
    np.save(tmp / "X.npy", X)
    script = ("import os, sys\nos.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\nimport numpy as np\n"
              "path, X = sys.argv[1], np.load(sys.argv[2])\n" + LOADERS[fmt] +
              "\nnp.save(sys.argv[3], np.asarray(y))\nassert 'nnlab' not in sys.modules, 'nnlab was imported'\n")
    proc = _forked.run([sys.executable, "-c", script, str(model), str(tmp / "X.npy"), str(tmp / "y.npy")],
                       cwd=tmp, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(tmp / "y.npy")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_run")
    proc = _forked.run([sys.executable, str(REPO / "main.py"), "--num-particles", "300", "--epochs", "2",
                        "--set", "hidden_layers=[16]", "--set", "seed=7", "--set", "jit_compile=false",
                        "--output-dir", str(out / "o"), "--quiet"],
                       cwd=out, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def exports(trained) -> dict[str, subprocess.CompletedProcess]:
    return {fmt: nnlab("export", "--format", fmt, "--out", NAMES[fmt], "--output-dir", "o", cwd=trained)
            for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_agrees_with_nnlab_in_its_own_runtime(fmt, trained, exports, tmp_path):
    proc = exports[fmt]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"as {fmt}: {NAMES[fmt]}" in proc.stdout and "max relative difference" in proc.stdout
    raw = generate_particle_data(40, seed=7)[INITIAL_COLUMNS]
    X = raw.to_numpy(np.float32)
    predicted = run_without_nnlab(fmt, trained / NAMES[fmt], X, tmp_path)
    run = TrainedRun.load(trained / "o")
    reference = run.predict(raw)  # nnlab's own path on the float64 rows
    assert predicted.shape == reference.shape == (40, 6)
    scale = np.maximum(np.abs(reference), run.scalers.y_scaler.scale_)
    assert np.max(np.abs(predicted - reference) / scale) <= 1e-5


@pytest.mark.parametrize("fmt", FORMATS)
def test_meta_file(fmt, trained, exports):
    meta = json.loads((trained / (NAMES[fmt] + ".meta.json")).read_text())
    run = TrainedRun.load(trained / "o")
    assert meta["format"] == fmt and meta["run_id"] == run.run_id and meta["weights"] == "final.weights.h5"
    assert meta["inputs"] == INITIAL_COLUMNS and meta["input_dtype"] == "float32"
    assert meta["outputs"] == run.targets and set(meta["units"]) == set(run.targets)
    assert meta["units"]["final_velocity_x"] == "m/s" and meta["units"]["kinetic_energy"] == "J"
    assert meta["nnlab_version"] and meta["task"] == "particles"
    assert meta["precision"]["significant_bits"] == run.config.model.max_binary_digits
    assert meta["precision"]["rounding"] == run.config.model.binary_rounding
    assert meta["precision"]["schedule"] == run.config.model.constraint_schedule
    check = meta["runtime_check"]
    assert check["rows"] == 60 and 0 <= check["max_rel_diff"] <= 1e-5 == check["tolerance"]
    assert check["runtime"].split(".")[0] in {"keras", "tf", "ai_edge_litert", "onnxruntime"}
    assert isinstance(check["test_r2"], float) and check["test_r2"] <= 1
    n_weights = sum(w.size for w in run.network.get_weights())
    assert meta["size"]["n_weights"] == n_weights and meta["size"]["float32_bytes"] == 4 * n_weights
    path = trained / NAMES[fmt]
    written = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    assert meta["file_bytes"] == written
    if fmt == "tflite":  # LiteRT's dynamic-range int8 of the same graph, measured beside it
        int8 = meta["litert_dynamic_int8"]
        assert 0 < int8["file_bytes"] <= written and isinstance(int8["test_r2"], float) and int8["max_rel_diff"] >= 0
    else:
        assert "litert_dynamic_int8" not in meta


def test_test_r2_is_the_same_in_every_runtime(trained, exports):
    r2 = [json.loads((trained / (NAMES[f] + ".meta.json")).read_text())["runtime_check"]["test_r2"] for f in FORMATS]
    assert max(r2) - min(r2) < 1e-5


def test_existing_file_refused_without_force_and_replaced_with_it(trained, exports):
    target = trained / "model.onnx"
    before = target.read_bytes()
    (trained / "model.onnx.meta.json").write_text("{}")
    proc = nnlab("export", "--format", "onnx", "--out", "model.onnx", "--output-dir", "o", cwd=trained)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--out: 'model.onnx' already exists" in proc.stderr and "--force" in proc.stderr
    assert target.read_bytes() == before
    proc = nnlab("export", "--format", "onnx", "--out", "model.onnx", "--output-dir", "o", "--force", cwd=trained)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((trained / "model.onnx.meta.json").read_text())["format"] == "onnx"
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_savedmodel_directory_replaced_with_force(trained, exports):
    meta = export_run(fmt="savedmodel", out=trained / "saved_model", output_dir=trained / "o", force=True)
    assert (trained / "saved_model" / "saved_model.pb").is_file() and meta["format"] == "savedmodel"
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]


def test_refusals_of_format_and_run(trained):
    proc = nnlab("export", "--format", "pickle", "--out", "m.pkl", "--output-dir", "o", cwd=trained)
    assert proc.returncode == 2 and "argument --format: invalid choice: 'pickle'" in proc.stderr
    proc = nnlab("export", "--format", "keras", "--out", "x.keras", "--output-dir", "o", "--run", "nope", cwd=trained)
    assert proc.returncode == 2 and "unknown run id 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (trained / "x.keras").exists() and not (trained / "x.keras.meta.json").exists()


def test_a_disagreeing_export_is_refused_and_removed(trained, monkeypatch, tmp_path):
    import nnlab.export._export as module

    real = module.load_predictor
    monkeypatch.setattr(module, "load_predictor", lambda fmt, path: lambda X: real(fmt, path)(X) * 1.001)
    with pytest.raises(NnlabError, match="disagrees with nnlab's predictions"):
        export_run(fmt="keras", out=tmp_path / "m.keras", output_dir=trained / "o")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_runtime_names_the_extra(trained, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(NnlabError, match=r"pip install 'nnlab\[export\]'"):
        export_run(fmt="onnx", out=tmp_path / "m.onnx", output_dir=trained / "o")
    assert list(tmp_path.iterdir()) == []


# --- a user's table ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_table")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"area": rng.uniform(30, 150, 200), "rooms": rng.integers(1, 6, 200).astype(float),
                       "district": rng.choice(["north", "south"], 200)})
    df["price"] = 2.0 * df["area"] + 15 * df["rooms"] + np.where(df["district"] == "north", 40.0, 0.0)
    df.to_csv(out / "t.csv", index=False)
    for features in ("area,rooms", "area,rooms,district"):
        proc = _forked.run([sys.executable, str(REPO / "main.py"), "--data", "t.csv", "--targets", "price",
                            "--features", features, "--epochs", "2", "--set", "hidden_layers=[8]",
                            "--set", "jit_compile=false", "--output-dir", "o", "--quiet"],
                           cwd=out, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_numeric_table_exported_to_onnx(table_runs, tmp_path):
    first = sorted(p.name for p in (table_runs / "o" / "runs").iterdir() if p.is_dir())[0]
    meta = export_run(fmt="onnx", out=tmp_path / "t.onnx", output_dir=table_runs / "o", run=first)
    assert meta["inputs"] == ["area", "rooms"] and meta["outputs"] == ["price"] and meta["task"] == "table"
    rows = pd.DataFrame({"area": [40.0, 99.5, 140.25], "rooms": [1.0, 3.0, 5.0]})
    predicted = run_without_nnlab("onnx", tmp_path / "t.onnx", rows.to_numpy(np.float32), tmp_path)
    reference = TrainedRun.load(table_runs / "o", first).predict(rows)
    assert np.allclose(predicted, reference, rtol=1e-5, atol=0)


def test_onnx_export_leaves_the_callers_tensorflow_log_settings(table_runs, tmp_path, monkeypatch):
    """tf2onnx sets TF_CPP_MIN_LOG_LEVEL and TensorFlow's logger level in the converting process: an export
    from a notebook leaves both as they were (and so the processes it starts afterwards)."""
    import tensorflow as tf

    first = sorted(p.name for p in (table_runs / "o" / "runs").iterdir() if p.is_dir())[0]
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    logger_level = tf.get_logger().level
    export_run(fmt="onnx", out=tmp_path / "t.onnx", output_dir=table_runs / "o", run=first)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1" and tf.get_logger().level == logger_level


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_table_with_text_columns_refused(fmt, table_runs):
    proc = nnlab("export", "--format", fmt, "--out", f"t.{fmt}", "--output-dir", "o", cwd=table_runs)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "text column(s) ['district']" in proc.stderr and "nnlab predict" in proc.stderr
    assert f"the {fmt} format cannot take text: export with --format keras or savedmodel" in proc.stderr
    assert not (table_runs / f"t.{fmt}").exists() and not (table_runs / f"t.{fmt}.meta.json").exists()


# --- a table with a text column: keras and savedmodel take it as a string input ------------------------

TEXT_LOADERS = {
    "keras": ("import keras, tensorflow as tf\nm = keras.saving.load_model(path)\n"
              "y = m.predict({'numeric': N, 'text': tf.constant(T)}, verbose=0)"),
    "savedmodel": ("import tensorflow as tf\nm = tf.saved_model.load(path)\n"
                   "y = m.serve({'numeric': tf.constant(N), 'text': tf.constant(T)}).numpy()"),
}
CATEGORIES = ["east", "north", "south"]


def run_text_without_nnlab(fmt: str, model: Path, numeric: np.ndarray, text: np.ndarray, tmp: Path) -> np.ndarray:
    np.save(tmp / "N.npy", numeric.astype(np.float32))
    np.save(tmp / "T.npy", text.astype(str))
    script = ("import os, sys\nos.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\nimport numpy as np\n"
              "path, N, T = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])\n" + TEXT_LOADERS[fmt] +
              "\nnp.save(sys.argv[4], np.asarray(y))\nassert 'nnlab' not in sys.modules, 'nnlab was imported'\n")
    proc = _forked.run([sys.executable, "-c", script, str(model), str(tmp / "N.npy"), str(tmp / "T.npy"),
                        str(tmp / "y.npy")], cwd=tmp, capture_output=True, text=True, timeout=180,
                       stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(tmp / "y.npy")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """240 rows: area, district (text, 3 categories, between the numeric columns), rooms -> price, rent;
    exported by the CLI to keras and savedmodel."""
    out = tmp_path_factory.mktemp("export_text")
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"area": rng.uniform(30, 150, 240), "district": rng.choice(CATEGORIES, 240),
                       "rooms": rng.integers(1, 6, 240).astype(float)})
    bonus = df["district"].map({"north": 40.0, "south": 0.0, "east": 20.0})
    df["price"], df["rent"] = 2.0 * df["area"] + 15 * df["rooms"] + bonus, 0.01 * df["area"] + bonus / 10
    df.to_csv(out / "t.csv", index=False)
    proc = _forked.run([sys.executable, str(REPO / "main.py"), "--data", "t.csv", "--targets", "price,rent",
                        "--epochs", "2", "--set", "hidden_layers=[16]", "--set", "jit_compile=false",
                        "--output-dir", "o", "--quiet"],
                       cwd=out, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for fmt in TEXT_LOADERS:
        proc = nnlab("export", "--format", fmt, "--out", NAMES[fmt], "--output-dir", "o", cwd=out)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "('text', string): district" in proc.stdout and "Assets written" not in proc.stderr
    return out


def _relative(predicted: np.ndarray, reference: np.ndarray, run: TrainedRun) -> float:
    scale = np.maximum(np.abs(reference), run.scalers.y_scaler.scale_)
    return float(np.max(np.abs(np.asarray(predicted, dtype=np.float64) - reference) / scale))


@pytest.mark.parametrize("fmt", list(TEXT_LOADERS))
def test_text_column_export_agrees_with_nnlab_without_nnlab(fmt, text_run, tmp_path):
    rows = pd.DataFrame({"area": [40.0, 99.5, 140.25, 75.0], "district": ["north", "east", "south", "north"],
                         "rooms": [1.0, 3.0, 5.0, 2.0]})
    predicted = run_text_without_nnlab(fmt, text_run / NAMES[fmt], rows[["area", "rooms"]].to_numpy(),
                                       rows[["district"]].to_numpy(), tmp_path)
    run = TrainedRun.load(text_run / "o")
    reference = run.predict(rows)
    assert predicted.shape == reference.shape == (4, 2)
    assert _relative(predicted, reference, run) <= 1e-5
    assert np.ptp(reference[[0, 1, 2], 0]) > 0  # the category changes the prediction


@pytest.mark.parametrize("fmt", list(TEXT_LOADERS))
def test_unseen_category_gives_the_all_zero_encoding(fmt, text_run, tmp_path):
    predicted = run_text_without_nnlab(fmt, text_run / NAMES[fmt], np.array([[80.0, 3.0], [80.0, 3.0]]),
                                       np.array([["west"], [""]]), tmp_path)
    run = TrainedRun.load(text_run / "o")
    assert run.scalers.feature_names == ["area", "district=east", "district=north", "district=south", "rooms"]
    features = run.scalers.x_scaler.transform(np.array([[80.0, 0.0, 0.0, 0.0, 3.0]] * 2))
    scaled = run.network.predict(features.astype(np.float32), verbose=0)
    reference = run.scalers.inverse_transform_targets(np.asarray(scaled, dtype=np.float64))
    assert _relative(predicted, reference, run) <= 1e-5


@pytest.mark.parametrize("fmt", list(TEXT_LOADERS))
def test_text_column_meta(fmt, text_run):
    meta = json.loads((text_run / (NAMES[fmt] + ".meta.json")).read_text())
    assert meta["inputs"] == ["area", "district", "rooms"] and meta["outputs"] == ["price", "rent"]
    assert meta["text_inputs"] == {"district": CATEGORIES}
    assert meta["model_inputs"] == {"numeric": ["area", "rooms"], "text": ["district"]}
    assert meta["input_dtype"] == {"numeric": "float32", "text": "string"}
    check = meta["runtime_check"]
    assert check["rows"] == 48 and 0 <= check["max_rel_diff"] <= 1e-5 and isinstance(check["test_r2"], float)


def test_text_test_rows_decode_the_one_hot_block(text_run):
    from nnlab.export._export import input_frame, test_rows
    from nnlab.runs import DataSource

    run = TrainedRun.load(text_run / "o")
    X, y_true = test_rows(run)
    assert X["numeric"].dtype == np.float32 and X["numeric"].shape == (48, 2) and X["text"].shape == (48, 1)
    assert set(X["text"][:, 0]) <= set(CATEGORIES)
    data = DataSource.from_record(run.record.get("data"), run.config).prepare()
    assert np.allclose(run.features(input_frame(run, X)), data.X_test, rtol=0, atol=1e-5)
    assert y_true.shape == (48, 2)


def test_a_mixed_precision_run_is_deployed_at_float32_compute(tmp_path):
    """LiteRT and ONNX have no bfloat16 kernels for its layers: the float32 weights run at float32 compute."""
    out = tmp_path / "o"
    proc = nnlab("train", "--num-particles", "200", "--epochs", "2", "--seed", "5", "--quiet", "--output-dir", str(out),
                 "--set", "hidden_layers=[8]", "--set", "precision_policy=mixed_bfloat16",
                 "--set", "jit_compile=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = TrainedRun.load(out)
    assert all(layer.dtype_policy.compute_dtype == "float32" for layer in run.network.layers)
    for fmt in ("tflite", "onnx"):
        meta = export_run(run, fmt=fmt, out=tmp_path / NAMES[fmt])
        assert meta["runtime_check"]["max_rel_diff"] <= 1e-5


def test_a_failing_converter_is_one_error_and_nothing_is_written(trained, tmp_path, monkeypatch):
    from nnlab.export import _export

    def broken(model, path):
        path.write_bytes(b"half")
        raise RuntimeError("converter exploded\nwith a long story")

    monkeypatch.setitem(_export._WRITERS, "onnx", broken)
    with pytest.raises(NnlabError, match=r"the onnx converter failed on this run's network: RuntimeError: converter "
                                         r"exploded; nothing was written"):
        export_run(fmt="onnx", out=tmp_path / "m.onnx", output_dir=trained / "o")
    assert list(tmp_path.iterdir()) == []
