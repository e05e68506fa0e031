"""Bad-input catalogue cases of issue 25: `nnlab export` refusals that need no trained network
(run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

from typing import Any

from catalogue_predict import PARTICLE_RUN, RUN_ID

# A run directory as far as `nnlab export` reads it before the network: its record (default config).
RUN = {"o/runs/20260101-000000-000000-p1/training_config.json": '{"config": {}}'}
EXPORT = "nnlab export --output-dir o"

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("export", f"{EXPORT} --format onnx --out m.onnx", {},
     ["error: no runs in 'o/runs': run `python main.py` first"]),
    ("export", f"{EXPORT} --format keras --out m.keras --run 20250101-nope", RUN,
     ["error: unknown run id '20250101-nope' in 'o/runs'; available: 20260101-000000-000000-p1"]),
    ("export", f"{EXPORT} --format onnx --out m.onnx", {**RUN, "m.onnx": "an earlier export\n"},
     ["error: --out: 'm.onnx' already exists; choose another name or pass --force to replace it"]),
    ("export", f"{EXPORT} --format onnx --out m.onnx", {**RUN, "m.onnx.meta.json": "{}\n"},
     ["error: --out: 'm.onnx.meta.json' (the meta file) already exists; choose another name or pass --force"]),
    ("export", f"{EXPORT} --format keras --out m.keras --force", {**RUN, "m.keras": "<directory>"},
     ["error: --out: 'm.keras' is a directory; give the name of a keras model to write"]),
    ("export", f"{EXPORT} --format tflite --out m.tflite --force", {**RUN, "m.tflite": "<named pipe>"},
     ["error: --out: 'm.tflite' is a named pipe; give the name of a tflite model to write"]),
    ("export", f"{EXPORT} --format onnx --out missing/m.onnx", RUN,
     ["error: --out: the folder 'missing' of 'missing/m.onnx' does not exist or is not a directory"]),
    ("export", f"{EXPORT} --format pickle --out m.pkl", RUN,
     ["nnlab export: error: argument --format: invalid choice: 'pickle' (choose from 'keras', 'savedmodel', "
      "'tflite', 'onnx')"]),
    ("export", f"{EXPORT} --format onnx --out m.onnx --weights last", RUN,
     ["nnlab export: error: argument --weights: invalid choice: 'last' (choose from 'final', 'best')"]),
    ("export", f"{EXPORT} --format savedmodel --out sm", RUN,
     ["error: run 20260101-000000-000000-p1 has no final weights (o/runs/20260101-000000-000000-p1/weights/"
      "final.weights.h5) (the run did not finish: resume it first)"]),
    # --mlflow: a store that does not exist is refused before anything is written (and is not created).
    ("export", f"{EXPORT} --format onnx --out m.onnx --mlflow sqlite:///none.db", PARTICLE_RUN,
     [f"error: --mlflow: sqlite:///none.db holds no MLflow store, so run {RUN_ID} was not logged there; train "
      "with --mlflow URI first, or give the URI it was logged to"]),
]
