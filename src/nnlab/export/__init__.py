"""Trained networks outside the lab: predict on raw rows, export with the preprocessing inside the graph.

* :class:`TrainedRun` -- a finished run loaded with its columns, scalers and network;
  :meth:`TrainedRun.predict` is nnlab's own prediction path (the reference).
* :func:`predict_csv` -- ``nnlab predict``: a run's predictions for the raw rows of a
  CSV, written beside the input columns as ``predicted_<target>``.
* :func:`export_run` -- ``nnlab export``: a run as one keras/savedmodel/tflite/onnx model
  (derived features, scaling, network, de-scaling inside), checked in its own runtime,
  with ``PATH.meta.json``; :func:`deployable_model` is that Keras graph.
* :func:`weights_size` -- the weights' bytes as float32 and bit-packed at the trained precision.
"""

from nnlab.export._cli import add_export_arguments, add_predict_arguments, run_export, run_predict
from nnlab.export._predict import PREDICTED_PREFIX, predict_csv
from nnlab.export._export import FORMATS, export_run
from nnlab.export._graph import deployable_model
from nnlab.export._run import WEIGHTS, TrainedRun
from nnlab.export._size import pack_weights, unpack_weights, weights_bits, weights_size

__all__ = ["FORMATS", "PREDICTED_PREFIX", "WEIGHTS", "TrainedRun", "add_export_arguments", "add_predict_arguments",
           "deployable_model", "export_run", "predict_csv", "run_export", "run_predict",
           "pack_weights", "unpack_weights", "weights_bits", "weights_size"]
