"""An exported model logged as an MLflow model of its run: :func:`nnlab.integrations.log_exported_model`.

Real training with ``--mlflow sqlite:///...``, the trained network exported here with Keras/TensorFlow's
own exporters to every format, logged, loaded back with ``mlflow.pyfunc.load_model`` and compared with
the format's own runtime. Faults are injected only for a missing package.
"""

from __future__ import annotations

import json
import sys
import textwrap

import keras
import mlflow
import numpy as np
import pandas as pd
import onnxruntime
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from mlflow import MlflowClient

from nnlab.cli import main
from nnlab.errors import NnlabError
from nnlab.export import TrainedRun
from nnlab.integrations import log_exported_model
from nnlab.integrations.mlflow import export_metrics, find_mlflow_run, run_record
import _forked

RUN = ["--num-particles", "200", "--epochs", "2", "--seed", "3", "--quiet", "--set", "hidden_layers=[8]",
       "--set", "jit_compile=false", "--set", "tensorboard=false"]
FILES = {"keras": "m.keras", "savedmodel": "m_savedmodel", "tflite": "m.tflite", "onnx": "m.onnx"}
FLAVORS = {"keras": "keras", "savedmodel": "python_function", "tflite": "python_function", "onnx": "onnx"}


def _export(network: keras.Model, folder) -> dict[str, str]:
    """The network in every format, with Keras' and TensorFlow's own exporters."""
    paths = {fmt: folder / name for fmt, name in FILES.items()}
    network.save(paths["keras"])
    network.export(paths["savedmodel"], verbose=False)
    paths["tflite"].write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(paths["savedmodel"])).convert())
    network.export(paths["onnx"], format="onnx", verbose=False)
    return paths


def _in_runtime(fmt: str, path, x: np.ndarray) -> np.ndarray:
    """The exported file's prediction in its own runtime, without MLflow."""
    if fmt == "keras":
        return keras.saving.load_model(path).predict(x, verbose=0)
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(str(path))  # kept alive: its function reads the object's variables
        return np.asarray(loaded.serve(x))
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    interpreter = Interpreter(model_path=str(path))
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x)
    interpreter.invoke()
    return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def _prediction(result) -> np.ndarray:
    """A pyfunc prediction as one array (the ONNX flavor answers {output name: array})."""
    if isinstance(result, dict):
        (result,) = result.values()
    return np.asarray(result)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A trained run, its network exported to every format and each logged: a namespace of what the tests read."""
    folder = tmp_path_factory.mktemp("export_mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert main(["train", *RUN, "--output-dir", str(folder / "o"), "--mlflow", uri]) == 0
    run = TrainedRun.load(folder / "o")
    paths = _export(run.network, folder)
    x = np.random.default_rng(0).normal(size=(25, run.network.input_shape[-1])).astype(np.float32)
    metas = {fmt: {"inputs": [f"x{i}" for i in range(x.shape[1])], "outputs": list(run.targets),
                   "run_id": run.run_id, "runtime_check": {"test_r2": 0.5 + i / 10, "rows": 40},
                   "size": {"float32_bytes": 1000 + i}}
             for i, fmt in enumerate(FILES)}
    uris = {fmt: log_exported_model(uri, run.run_id, paths[fmt], fmt, metas[fmt]) for fmt in FILES}
    return {"uri": uri, "run": run, "paths": paths, "x": x, "metas": metas, "uris": uris,
            "mlflow_run_id": run_record(run.run_dir)["run_id"]}


@pytest.mark.parametrize("fmt", list(FILES))
def test_each_format_loads_back_with_mlflow_and_predicts_as_its_runtime(logged, fmt):
    mlflow.set_tracking_uri(logged["uri"])
    try:
        info = mlflow.models.get_model_info(logged["uris"][fmt])
        loaded = mlflow.pyfunc.load_model(logged["uris"][fmt])
        got = _prediction(loaded.predict(logged["x"]))
    finally:
        mlflow.set_tracking_uri(None)
    assert logged["uris"][fmt] == f"models:/{info.model_id}"
    assert FLAVORS[fmt] in info.flavors and "python_function" in info.flavors
    assert info.run_id == logged["mlflow_run_id"] and info.name == f"exported_{fmt}"
    assert info.metadata["nnlab_export"] == logged["metas"][fmt]
    assert [s.shape for s in info.signature.inputs.inputs] == [(-1, logged["x"].shape[1])]
    expected = _in_runtime(fmt, logged["paths"][fmt], logged["x"])
    assert got.shape == (len(logged["x"]), len(logged["run"].targets))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    reference = logged["run"].network.predict(logged["x"], verbose=0)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)


def test_the_run_gets_the_models_meta_metrics_and_tags_and_keeps_its_status(logged):
    client = MlflowClient(logged["uri"])
    run = client.get_run(logged["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["nnlab.run_id"] == logged["run"].run_id
    assert {m.model_id for m in run.outputs.model_outputs} == {u.split("/")[-1] for u in logged["uris"].values()}
    experiment = client.get_experiment(run.info.experiment_id)
    for uri in logged["uris"].values():  # in the run's experiment, beside the store: not ./mlruns of the process
        model = client.get_logged_model(uri.split("/")[-1])
        assert model.experiment_id == run.info.experiment_id and str(model.status) == "READY"
        assert model.artifact_location.startswith(experiment.artifact_location)
        assert model.params["epochs"] == run.data.params["epochs"]
    for fmt, meta in logged["metas"].items():
        assert run.data.metrics[f"export_{fmt}_test_r2"] == pytest.approx(meta["runtime_check"]["test_r2"])
        assert f"export_{fmt}_rows" not in run.data.metrics
        assert run.data.metrics[f"export_{fmt}_size/float32_bytes"] == meta["size"]["float32_bytes"]
        assert run.data.tags[f"nnlab.export.{fmt}.model_uri"] == logged["uris"][fmt]
        assert run.data.tags[f"nnlab.export.{fmt}.file"] == FILES[fmt]
        local = client.download_artifacts(run.info.run_id, f"export/{FILES[fmt]}.meta.json")
        assert json.loads(open(local, encoding="utf-8").read()) == meta


def test_savedmodel_tflite_and_onnx_models_load_without_nnlab(logged):
    code = textwrap.dedent(f"""
        import sys, numpy as np, mlflow
        mlflow.set_tracking_uri({logged['uri']!r})
        x = np.load(sys.argv[1])
        for uri in sys.argv[2:]:
            out = mlflow.pyfunc.load_model(uri).predict(x)
            out = next(iter(out.values())) if isinstance(out, dict) else out
            print(np.asarray(out).ravel()[:3].tolist())
        assert "nnlab" not in sys.modules
    """)
    x_file = logged["paths"]["keras"].parent / "x.npy"
    np.save(x_file, logged["x"])
    uris = [logged["uris"][fmt] for fmt in ("savedmodel", "tflite", "onnx")]
    done = _forked.run([sys.executable, "-c", code, str(x_file), *uris], capture_output=True, text=True,
                       timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    reference = logged["run"].network.predict(logged["x"], verbose=0).ravel()[:3]
    assert len(rows) == 3 and all(np.allclose(row, reference, rtol=1e-4, atol=1e-4) for row in rows)


def test_an_unknown_run_is_refused_naming_it_and_the_store(logged):
    with pytest.raises(NnlabError, match=r"no MLflow run of nnlab run 'nope-1' at sqlite:///.*mlflow\.db"):
        log_exported_model(logged["uri"], "nope-1", logged["paths"]["onnx"], "onnx", {})
    with pytest.raises(NnlabError, match=r"no MLflow experiment 'other' at sqlite:///"):
        log_exported_model(logged["uri"], logged["run"].run_id, logged["paths"]["onnx"], "onnx", {},
                           experiment="other")
    found = find_mlflow_run(MlflowClient(logged["uri"]), logged["run"].run_id, logged["uri"], experiment="nnlab")
    assert found.info.run_id == logged["mlflow_run_id"]


def test_the_store_is_named_without_its_password(logged):
    shown = "postgresql://nnlab:s3cr3t-pw@db:5432/tracking"
    with pytest.raises(NnlabError) as caught:
        find_mlflow_run(MlflowClient(logged["uri"]), "nope-2", shown)
    assert "s3cr3t-pw" not in str(caught.value) and "postgresql://nnlab:***@db:5432/tracking" in str(caught.value)


def test_bad_format_and_missing_file_are_refused(logged, tmp_path):
    with pytest.raises(NnlabError, match=r"unknown format 'pt'; allowed: keras, savedmodel, tflite, onnx"):
        log_exported_model(logged["uri"], logged["run"].run_id, logged["paths"]["onnx"], "pt", {})
    with pytest.raises(NnlabError, match=r"the exported model '.*gone\.onnx' does not exist"):
        log_exported_model(logged["uri"], logged["run"].run_id, tmp_path / "gone.onnx", "onnx", {})


def test_missing_mlflow_names_the_extra(logged, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(NnlabError, match=r"pip install 'nnlab\[mlflow\]'"):
        log_exported_model(logged["uri"], logged["run"].run_id, logged["paths"]["onnx"], "onnx", {})


def test_export_metrics_are_the_r2_differences_and_byte_counts():
    meta = {"runtime_check": {"test_r2": 0.9, "max_rel_diff": 2e-7, "rows": 40, "tolerance": 1e-5},
            "per_target": {"px ($)": {"test_r2": 0.8}}, "size": {"packed_bytes": 12, "bits": 10},
            "inputs": ["a"], "nnlab_version": "1.0", "exact": True}
    assert export_metrics("tflite", meta) == {"export_tflite_test_r2": 0.9, "export_tflite_max_rel_diff": 2e-7,
                                              "export_tflite_per_target/px ___/test_r2": 0.8,
                                              "export_tflite_size/packed_bytes": 12.0}


def test_nnlab_export_mlflow_logs_the_export_of_the_run(logged, tmp_path, capsys):
    out = logged["run"].run_dir.parent.parent
    path = tmp_path / "cli.onnx"
    assert main(["export", "--output-dir", str(out), "--format", "onnx", "--out", str(path),
                 "--mlflow", logged["uri"]]) == 0
    printed = capsys.readouterr().out
    [model_uri] = [line.split()[1] for line in printed.splitlines() if line.startswith("  mlflow ")]
    assert model_uri.startswith("models:/") and path.is_file()
    import mlflow

    mlflow.set_tracking_uri(logged["uri"])
    try:
        x = logged["x"][:, :8] * 0 + 1.0  # raw rows: the 8 initial columns
        predicted = _prediction(mlflow.pyfunc.load_model(model_uri).predict(x.astype(np.float32)))
    finally:
        mlflow.set_tracking_uri(None)  # it also set MLFLOW_TRACKING_URI, which later subprocesses would inherit
    np.testing.assert_allclose(predicted, logged["run"].predict(pd.DataFrame(x, columns=logged["run"].inputs)),
                               rtol=1e-4)


def test_nnlab_export_mlflow_refuses_a_run_not_logged_there_before_writing(logged, tmp_path, capsys):
    out = logged["run"].run_dir.parent.parent
    path, store = tmp_path / "m.onnx", tmp_path / "other.db"
    assert main(["export", "--output-dir", str(out), "--format", "onnx", "--out", str(path),
                 "--mlflow", f"sqlite:///{store}"]) == 2
    assert shows(capsys.readouterr().err, "holds no MLflow store, so run")
    assert list(tmp_path.iterdir()) == []
