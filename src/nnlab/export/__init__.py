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

from __future__ import annotations

from nnlab._lazy import lazy_attributes

# name -> module that defines it; resolved on first use, so `nnlab --help` and the command line's
# refusals load neither pandas' heavy paths nor TensorFlow.
_EXPORTS = {
    "FORMATS": "nnlab.export._export",
    "PREDICTED_PREFIX": "nnlab.export._predict",
    "WEIGHTS": "nnlab.export._run",
    "TrainedRun": "nnlab.export._run",
    "add_export_arguments": "nnlab.export._cli",
    "add_predict_arguments": "nnlab.export._cli",
    "deployable_model": "nnlab.export._graph",
    "export_run": "nnlab.export._export",
    "pack_weights": "nnlab.export._size",
    "predict_csv": "nnlab.export._predict",
    "run_export": "nnlab.export._cli",
    "run_predict": "nnlab.export._cli",
    "unpack_weights": "nnlab.export._size",
    "weights_bits": "nnlab.export._size",
    "weights_size": "nnlab.export._size",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals(), __all__)
