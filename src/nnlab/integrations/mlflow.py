"""MLflow: one MLflow run per nnlab run, parent runs for searches and studies.

Everything goes through MLflow's own client (:class:`mlflow.MlflowClient`);
``mlflow`` is imported only when a tracking URI is configured, and it is an
optional extra (``pip install 'nnlab[mlflow]'``). An unreachable server or a
missing package costs the run one warning and an entry in its error summary.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from nnlab._lazy import lazy_attributes
from nnlab._numbers import float_or_none
from nnlab._redact import redact, redact_text, redact_url_password, without_masked_password
from nnlab.errors import ErrorRecorder, NnlabError
from nnlab.integrations._uri import artifact_location

__all__ = ["require_mlflow_run", "MlflowSink", "RUN_RECORD", "MLFLOW_STATUS", "open_parent_run", "finish_parent_run", "log_files",
           "client_for", "run_record", "EXPORT_FORMATS", "find_mlflow_run", "log_exported_model", "export_metrics"]

# The Keras callback loads TensorFlow: only when a run logs to MLflow, not to look a run up.
__getattr__, __dir__ = lazy_attributes(__name__, {"MlflowSink": "nnlab.integrations._mlflow_sink"}, globals(), __all__)

# The run directory's record of its MLflow run: a resumed run reopens it.
RUN_RECORD = "mlflow_run.json"
# nnlab status -> MLflow run status.
MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}
_NOT_METRICS = ("epoch", "timestamp")
_INSTALL_HINT = "the mlflow package is not installed: pip install 'nnlab[mlflow]' (or pip install mlflow)"
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic", "mlflow.tracking.fluent")


def mlflow_status(status: str) -> str:
    """The MLflow run status of an nnlab run status (FAILED for failed, diverged, disk full...)."""
    return MLFLOW_STATUS.get(status, "FAILED")


def client_for(tracking_uri: str) -> Any:
    """An :class:`mlflow.MlflowClient` for ``tracking_uri``.

    A server that does not answer is given up after 2 retries of 10 s at most
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``..._TIMEOUT`` set in the environment
    win), not MLflow's default of minutes; the store's schema-migration INFO
    lines are kept out of the console.

    Raises:
        ImportError: MLflow is not installed (the message says how to install it).
        ConfigError: the URI is a database of another kind (an Optuna storage...), left unchanged.
    """
    from nnlab.integrations._uri import check_tracking_database

    check_tracking_database(tracking_uri, option="mlflow_tracking_uri")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: Any, name: str, tracking_uri: str, *, artifacts: str | os.PathLike | None = None) -> str:
    """The id of experiment ``name``, created if needed with its artifacts beside the store
    (:func:`~nnlab.integrations.artifact_location`; ``artifacts``: the folder for a database server's).

    Without an explicit location MLflow would put a database store's artifacts in
    ``./mlruns`` of whatever directory the process runs in.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = artifact_location(tracking_uri, artifacts)
    try:
        # The experiment kind MLflow 3's UI itself records for classic model training (not GenAI traces).
        return client.create_experiment(name, artifact_location=location,
                                        tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # another process created it first
        if experiment is None:
            raise
        return experiment.experiment_id


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _timestamp_ms(row: Mapping[str, Any]) -> int:
    try:
        return int(datetime.fromisoformat(str(row["timestamp"])).timestamp() * 1000)
    except (KeyError, ValueError):
        return int(datetime.now().timestamp() * 1000)



def row_metrics(row: Mapping[str, Any]) -> list[Any]:
    """MLflow ``Metric`` entities of one training_results.csv row (step = its epoch; non-finite cells left out)."""
    from mlflow.entities import Metric

    step, stamp = int(row["epoch"]), _timestamp_ms(row)
    return [Metric(key, number, stamp, step) for key, value in row.items()
            if key not in _NOT_METRICS and (number := float_or_none(value)) is not None]


def metric_part(name: str) -> str:
    """``name`` as one part of an MLflow metric key: a table's column may hold characters MLflow refuses.

    Example:
        >>> metric_part("price ($)/unit")
        'price ____unit'
    """
    text = re.sub(r"[^\w\-. ]", "_", str(name)).strip() or "_"
    return "_" if text.strip(".") == "" else text


_FORMAT_METRICS = ("r2", "r2_drop", "saturated", "underflow")


def test_metrics(test: Mapping[str, Any] | None) -> dict[str, float]:
    """The metrics of a run's test report (``test_metrics.json``): ``test_<metric>`` (scaled),
    ``test_physical/<target>/<metric>``, ``test_physics_<relation>_violation`` (and
    ``test_physics_true_data_...``) and ``test_format_<format>_<r2|r2_drop|saturated|underflow>``
    (a name's characters MLflow refuses in a key become ``_``: :func:`metric_part`).

    Example:
        >>> test_metrics({"scaled": {"r2": 0.9}, "physics": {"speed_violation": 0.1, "true_data": {}},
        ...               "formats": {"int8": {"r2": 0.88, "bits": 8}}})
        {'test_r2': 0.9, 'test_physics_speed_violation': 0.1, 'test_format_int8_r2': 0.88}
    """
    if not test:
        return {}
    out = {f"test_{k}": v for k, v in (test.get("scaled") or {}).items()}
    for target, values in (test.get("per_target_physical") or {}).items():
        out.update({f"test_physical/{metric_part(target)}/{k}": v for k, v in values.items()})
    physics = test.get("physics") if isinstance(test.get("physics"), Mapping) else {}
    out.update({f"test_physics_{metric_part(k)}": v for k, v in physics.items() if not isinstance(v, Mapping)})
    true_data = physics.get("true_data") if isinstance(physics.get("true_data"), Mapping) else {}
    out.update({f"test_physics_true_data_{metric_part(k)}": v for k, v in true_data.items()})
    for fmt, values in (test.get("formats") or {}).items():
        if isinstance(values, Mapping):
            out.update({f"test_format_{metric_part(fmt)}_{k}": values[k] for k in _FORMAT_METRICS if k in values})
    return {k: number for k, v in out.items()
            if not isinstance(v, bool) and (number := float_or_none(v)) is not None}


def saved_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``training_config.json`` (preset, data record...), or {} when it cannot be read."""
    try:
        saved = json.loads((Path(run_dir) / "training_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def preset_tag(saved: Mapping[str, Any]) -> str:
    """The ``nnlab.preset`` tag of a run: its preset, or ``default`` (no preset: the configuration files as they are)."""
    preset = saved.get("preset")
    return str(preset) if preset else "default"


def dataset_of(data: Mapping[str, Any] | None) -> tuple[Any, str] | None:
    """The run's data as an MLflow dataset (name, source, digest) and its full SHA-256; None without a record.

    A CSV is MLflow's ``local`` source of its path (digest: the file's SHA-256); simulated
    particles a ``CodeDatasetSource`` naming the simulator, the count and the seed (digest: the arrays').
    MLflow keeps at most 36 characters of a digest: the first 16 hex digits are the digest,
    the whole SHA-256 is the input's tag ``nnlab.sha256``.
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    if not isinstance(data, Mapping):
        return None
    if data.get("csv_path"):
        sha = str(data.get("csv_sha256") or data.get("arrays_sha256") or "")
        # MLflow's "local" source (its class is made at import time, so found by type rather than imported)
        source = get_dataset_source_from_json(json.dumps({"uri": str(data["csv_path"])}), source_type="local")
        name = Path(str(data["csv_path"])).name
    else:
        sha = str(data.get("arrays_sha256") or "")
        source = CodeDatasetSource({"nnlab.simulator": "particles", "num_particles": str(data.get("num_particles")),
                                    "seed": str(data.get("seed"))})
        name = f"particles-{data.get('num_particles')}-seed{data.get('seed')}"
    if not sha:
        return None
    return MetaDataset(source, name=name[:500], digest=sha[:16]), sha


def log_dataset(client: Any, run_id: str, data: Mapping[str, Any] | None) -> bool:
    """Record the run's data set (``training_config.json``'s ``data``) as its training dataset input."""
    from mlflow.entities import DatasetInput, InputTag

    found = dataset_of(data)
    if found is None:
        return False
    dataset, sha = found
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[
        InputTag("mlflow.data.context", "training"), InputTag("nnlab.sha256", sha)])])
    return True


def log_files(client: Any, run_id: str, files: Iterable[tuple[Path, str | None]]) -> int:
    """Log each (file, artifact folder or None) that exists; returns how many were logged."""
    logged = 0
    for path, folder in files:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path), folder)
            logged += 1
    return logged


def run_files(run_dir: Path) -> list[tuple[Path, str | None]]:
    """A run directory's artifacts for MLflow: its CSV, JSON and text files and the final weights."""
    files = [(p, None) for p in sorted(run_dir.iterdir())
             if p.is_file() and p.suffix in (".csv", ".json", ".txt") and not p.name.startswith(".")]
    return files + [(run_dir / "weights" / "final.weights.h5", "weights")]


def run_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``mlflow_run.json`` (tracking_uri, experiment_id, run_id), or None when there is none.

    ``tracking_uri`` is the configured one; neither file holds a password: a masked one is dropped from it, so the
    driver takes the password from the environment (``PGPASSWORD``, ``~/.pgpass``, ``MLFLOW_TRACKING_PASSWORD``).
    """
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    # The record keeps no password; the run's configuration has the URI as it was given, password masked.
    try:
        saved = json.loads((Path(run_dir) / "training_config.json").read_text(encoding="utf-8"))
        configured = saved["config"]["mlflow_tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError):
        configured = None
    if isinstance(configured, str) and redact_url_password(configured) == record.get("tracking_uri"):
        record["tracking_uri"] = without_masked_password(configured)
    return record


def _parent_filter(kind: str, name: str) -> str:
    return f"tags.`nnlab.{kind}` = '{name}' and tags.`nnlab.parent` = 'true'"


def open_parent_run(tracking_uri: str, experiment: str, *, kind: str, name: str,
                    params: Mapping[str, Any] | None = None, errors: ErrorRecorder | None = None,
                    artifacts: str | os.PathLike | None = None, preset: str = "default") -> str | None:
    """The MLflow parent run of search/study ``name`` (``kind`` "hpo" or "study"), created or reopened.

    ``artifacts``: the folder a database server's experiment keeps its artifacts in, when nnlab creates it.
    ``preset``: its ``nnlab.preset`` tag, as every run has (a search's: the presets it samples, comma-joined).

    Children are made with the tag ``mlflow.parentRunId`` = the returned id. A
    rerun of the same search or study reopens the same parent. When two
    processes create one at the same moment, the earliest wins and the other
    deletes its own. Returns None (one warning, recorded in ``errors`` when
    given) when MLflow cannot be used: the search goes on without it.
    """
    try:
        from mlflow.entities import Param

        client = client_for(tracking_uri)
        exp_id = experiment_id(client, experiment, tracking_uri, artifacts=artifacts)
        found = client.search_runs([exp_id], _parent_filter(kind, name), order_by=["attributes.start_time ASC"])
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return run_id
        run = client.create_run(exp_id, tags={f"nnlab.{kind}": name, "nnlab.parent": "true", "nnlab.preset": preset},
                                run_name=f"{kind}: {name}")
        client.log_batch(run.info.run_id,
                         params=[Param(k, _text(v)[:6000]) for k, v in redact(dict(params or {})).items()])
        found = client.search_runs([exp_id], _parent_filter(kind, name), order_by=["attributes.start_time ASC"])
        first = found[0].info.run_id if found else run.info.run_id
        if first != run.info.run_id:
            client.delete_run(run.info.run_id)
        return first
    except Exception as exc:  # ImportError, unreachable server: the search goes on without MLflow
        (errors or ErrorRecorder()).record(f"mlflow ({kind} parent run)", exc)
        return None


def finish_parent_run(tracking_uri: str, run_id: str, *, status: str = "FINISHED",
                      metrics: Mapping[str, Any] | None = None, files: Iterable[tuple[Path, str | None]] = (),
                      errors: ErrorRecorder | None = None) -> None:
    """Log a parent run's summary ``metrics`` and ``files`` and end it with ``status``."""
    try:
        from mlflow.entities import Metric

        client = client_for(tracking_uri)
        stamp = int(datetime.now().timestamp() * 1000)
        values = {k: number for k, v in (metrics or {}).items() if (number := float_or_none(v)) is not None}
        client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in values.items()])
        log_files(client, run_id, files)
        client.set_terminated(run_id, status=status)
    except Exception as exc:  # an optional component must not cost the search
        (errors or ErrorRecorder()).record("mlflow (parent run)", exc)


# --- an exported model, logged as an MLflow model of its run ------------------------------------------------------

#: The formats of ``nnlab export`` and how each is logged: an MLflow flavor, or pyfunc around the format's runtime.
EXPORT_FORMATS = {"keras": "keras", "savedmodel": "pyfunc (tf.saved_model.load)",
                  "tflite": "pyfunc (ai_edge_litert interpreter)", "onnx": "onnx"}
_EXPORT_PACKAGES = {"keras": ("keras", "tensorflow"), "savedmodel": ("tensorflow", "numpy"),
                    "tflite": ("ai-edge-litert", "numpy"), "onnx": ("onnx", "onnxruntime")}
_EXPORT_ARTIFACTS = "export"


def find_mlflow_run(client: Any, run_id: str, tracking_uri: str, *, experiment: str | None = None) -> Any:
    """The MLflow run of nnlab run ``run_id`` (tag ``nnlab.run_id``), in ``experiment`` or in every experiment;
    the latest when there are several.

    Raises:
        NnlabError: no such experiment, or no MLflow run of that nnlab run (naming the run id and the URI,
            its password masked).
    """
    where = f"at {redact_text(tracking_uri)}"
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise NnlabError(f"no MLflow experiment '{experiment}' {where}; leave the experiment out to search "
                             "them all")
        ids, where = [found.experiment_id], f"{where}, experiment '{experiment}'"
    else:
        ids, token = [], None
        while True:
            page = client.search_experiments(page_token=token)
            ids += [e.experiment_id for e in page]
            if not (token := page.token):
                break
    runs = []
    if ids and "'" not in run_id:  # a quote cannot be in a run id, and would end MLflow's filter string
        runs = client.search_runs(ids, f"tags.`nnlab.run_id` = '{run_id}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise NnlabError(f"no MLflow run of nnlab run '{run_id}' {where}: was the run trained with --mlflow "
                         "and this tracking URI?")
    return runs[0]


def _numeric_leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numeric_leaves(item, (*path, str(key)))
    elif not isinstance(value, bool) and (number := float_or_none(value)) is not None:
        yield path, number


def export_metrics(fmt: str, meta: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an export's meta logged as metrics: every R², relative difference and byte count, as
    ``export_<fmt>_<key>`` (nested keys joined with ``/``; the ``runtime_check`` level left out, so the test R²
    measured in the export's runtime is ``export_<fmt>_test_r2``).

    Example:
        >>> export_metrics("onnx", {"runtime_check": {"test_r2": 0.93, "rows": 60}, "size": {"float32_bytes": 4096}})
        {'export_onnx_test_r2': 0.93, 'export_onnx_size/float32_bytes': 4096.0}
    """
    named = {"/".join(metric_part(p) for p in path if p != "runtime_check"): number
             for path, number in _numeric_leaves(meta)}
    return {f"export_{fmt}_{key}": number for key, number in named.items()
            if re.search(r"r2|rel_diff|bytes", key, re.IGNORECASE)}


def _requirements(fmt: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    def pinned(name: str) -> str:
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            return name

    return [pinned(name) for name in _EXPORT_PACKAGES[fmt]]


def _signature(meta: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """A float32 matrix in, one out, sized by the meta's ``inputs``/``outputs`` (none with text inputs, or
    without the column lists), and for a pyfunc model an input example of zeros (MLflow 3.17's Keras flavor
    fails to save one)."""
    import numpy as np
    from mlflow.models import infer_signature

    inputs, outputs = meta.get("inputs"), meta.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or meta.get("text_inputs"):
        return {}
    example = np.zeros((1, len(inputs)), np.float32)
    signature = infer_signature(example, np.zeros((1, len(outputs)), np.float32))
    return {"signature": signature} if fmt in ("keras", "onnx") else {"signature": signature, "input_example": example}


# The pyfunc model of a SavedModel or LiteRT file, logged as MLflow "models from code": it loads without nnlab.
_RUNTIME_MODEL_CODE = '''"""nnlab's exported model in its own runtime: a float32 matrix of the raw input columns in, targets out."""
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class ExportedModel(PythonModel):
    def load_context(self, context):
        self.runtime = "savedmodel" if "savedmodel" in context.artifacts else "tflite"
        file = context.artifacts[self.runtime]
        if self.runtime == "savedmodel":
            import tensorflow as tf

            self.model = tf.saved_model.load(file)
        else:
            from ai_edge_litert.interpreter import Interpreter

            self.model = Interpreter(model_path=file)

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(model_input, dtype=np.float32))
        if self.runtime == "savedmodel":
            return np.asarray(self.model.serve(x))
        entry, out = self.model.get_input_details()[0], self.model.get_output_details()[0]
        self.model.resize_tensor_input(entry["index"], list(x.shape))
        self.model.allocate_tensors()
        self.model.set_tensor(entry["index"], x)
        self.model.invoke()
        return np.array(self.model.get_tensor(out["index"]))


mlflow.models.set_model(ExportedModel())
'''


def _flavor_arguments(path: Path, fmt: str, code_dir: Path) -> dict[str, Any]:
    """The flavor module and its ``save_model`` arguments for the exported file ``path`` (``code_dir``: a
    temporary directory for a pyfunc model's code)."""
    if fmt == "onnx":
        import mlflow.onnx
        import onnx

        # A small network runs on the CPU; MLflow's default asks for CUDA first and warns on every load without it.
        return {"flavor": mlflow.onnx, "onnx_model": onnx.load(str(path)),
                "onnx_execution_providers": ["CPUExecutionProvider"]}
    if fmt == "keras":
        import mlflow.keras

        import keras

        return {"flavor": mlflow.keras, "model": keras.saving.load_model(path)}
    import mlflow.pyfunc

    code = code_dir / "nnlab_exported_model.py"
    code.write_text(_RUNTIME_MODEL_CODE, encoding="utf-8")
    return {"flavor": mlflow.pyfunc, "python_model": str(code), "artifacts": {fmt: str(path)}}


@contextmanager
def _global_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """MLflow's model logging reads the process's tracking URI: set it for the block, then put back the old one."""
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _log_records(client: Any, mlflow_run_id: str, fmt: str, meta: Mapping[str, Any], path: Path,
                 model_uri: str) -> None:
    """The export's meta.json as an artifact, its R² and sizes as metrics, the model's URI as tags."""
    from mlflow.entities import Metric, RunTag

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{path.name}.meta.json"
        file.write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        client.log_artifact(mlflow_run_id, str(file), _EXPORT_ARTIFACTS)
    stamp = int(datetime.now().timestamp() * 1000)
    client.log_batch(mlflow_run_id,
                     metrics=[Metric(k, v, stamp, 0) for k, v in export_metrics(fmt, meta).items()],
                     tags=[RunTag(f"nnlab.export.{fmt}.model_uri", model_uri),
                           RunTag(f"nnlab.export.{fmt}.file", path.name[:5000])])


def _log_model(mlflow_run: Any, path: Path, fmt: str, meta: Mapping[str, Any], tracking_uri: str) -> str:
    """Log ``path`` as the MLflow model ``exported_<fmt>`` of ``mlflow_run``, in the run's experiment; its URI."""
    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as code_dir, _global_tracking_uri(tracking_uri):
        try:
            arguments = _flavor_arguments(path, fmt, Path(code_dir))
        except ImportError as exc:
            raise NnlabError(f"logging a {fmt} export to MLflow needs {exc.name}: pip install 'nnlab[export]'"
                             ) from None
        # Made first: left to itself, MLflow puts the model in the process's active (default) experiment.
        model = mlflow.initialize_logged_model(
            f"exported_{fmt}", source_run_id=mlflow_run.info.run_id, experiment_id=mlflow_run.info.experiment_id,
            params={k: v[:6000] for k, v in mlflow_run.data.params.items()}, tags={"nnlab.export.format": fmt})
        info = Model.log(None, name=f"exported_{fmt}", run_id=mlflow_run.info.run_id, model_id=model.model_id,
                         metadata={"nnlab_export": dict(meta)}, pip_requirements=_requirements(fmt),
                         **_signature(meta, fmt), **arguments)
    client = mlflow.MlflowClient(tracking_uri)
    if client.get_logged_model(model.model_id).status != "READY":
        client.finalize_logged_model(model.model_id, "READY")
    return info.model_uri


def _check_export(path: Path, fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise NnlabError(f"log_exported_model: unknown format '{fmt}'; allowed: {', '.join(EXPORT_FORMATS)}")
    if not path.exists():
        raise NnlabError(f"log_exported_model: the exported model '{path}' does not exist")


def log_exported_model(tracking_uri: str, run_id: str, path: str | os.PathLike, fmt: str,
                       meta: Mapping[str, Any], *, experiment: str | None = None) -> str:
    """Log an ``nnlab export`` of run ``run_id`` as an MLflow model of that run's MLflow run.

    The model is named ``exported_<fmt>``: ``keras`` with MLflow's Keras flavor, ``onnx`` with its ONNX
    flavor, ``savedmodel`` and ``tflite`` (no MLflow flavor) as a pyfunc model that runs the file in its own
    runtime (``tf.saved_model.load(...).serve``; ``ai_edge_litert``'s interpreter). Each loads with
    ``mlflow.pyfunc.load_model(uri)`` and predicts on a float32 matrix of the raw input columns. The run also
    gets ``export/<file>.meta.json`` (``meta``), metrics ``export_<fmt>_...`` (:func:`export_metrics`) and
    tags ``nnlab.export.<fmt>.model_uri``/``.file``; its status is left as it is.

    Args:
        tracking_uri: the MLflow tracking URI the run was logged to.
        run_id: the nnlab run id (the MLflow run's tag ``nnlab.run_id``).
        path: the exported file (``.keras``, ``.tflite``, ``.onnx``) or SavedModel directory.
        fmt: one of :data:`EXPORT_FORMATS`.
        meta: the export's meta (``PATH.meta.json``): ``inputs``/``outputs`` size the model's signature.
        experiment: look only in this experiment (default: every experiment).

    Returns:
        The model's URI (``models:/<model id>``), for ``mlflow.pyfunc.load_model``.

    Raises:
        NnlabError: MLflow (or the format's package) not installed, no MLflow run of ``run_id``, an
            unknown format, a missing file, or an MLflow error (the URI's password masked).

    Example:
        >>> # uri = log_exported_model("sqlite:///o/mlflow.db", run.run_id, "m.onnx", "onnx", meta)
        >>> # mlflow.pyfunc.load_model(uri).predict(x)
    """
    path = Path(path)
    _check_export(path, fmt)
    try:
        client = client_for(tracking_uri)
        from mlflow.exceptions import MlflowException
    except ImportError as exc:
        raise NnlabError(f"--mlflow: {exc}") from None
    try:
        mlflow_run = find_mlflow_run(client, run_id, tracking_uri, experiment=experiment)
        model_uri = _log_model(mlflow_run, path, fmt, meta, tracking_uri)
        _log_records(client, mlflow_run.info.run_id, fmt, meta, path, model_uri)
    except MlflowException as exc:
        raise NnlabError(f"MLflow at {redact_text(tracking_uri)}: {redact_text(str(exc))}") from None
    return model_uri


def require_mlflow_run(tracking_uri: str, run_id: str) -> None:
    """Refuse, before an export is written, a run that was never logged to ``tracking_uri``.

    Raises:
        NnlabError: MLflow not installed, or no MLflow run of ``run_id`` (see :func:`find_mlflow_run`).
    """
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme.split("+")[0] == "sqlite" and not Path(tracking_uri.split(":///", 1)[-1]).is_file():
        # Opening it would create an empty store: say there is none, write nothing.
        raise NnlabError(f"--mlflow: {redact_text(tracking_uri)} holds no MLflow store, so run {run_id} was not "
                         "logged there; train with --mlflow URI first, or give the URI it was logged to")
    try:
        client = client_for(tracking_uri)
        from mlflow.exceptions import MlflowException
    except ImportError as exc:
        raise NnlabError(f"--mlflow: {exc}") from None
    try:
        find_mlflow_run(client, run_id, tracking_uri)
    except MlflowException as exc:
        raise NnlabError(f"MLflow at {redact_text(tracking_uri)}: {redact_text(str(exc))}") from None
