"""Trained networks outside the lab: predict on raw rows, export with the preprocessing inside the graph.

* :class:`TrainedRun` -- a finished run loaded with its columns, scalers and network;
  :meth:`TrainedRun.predict` is nnlab's own prediction path (the reference).
* :func:`weights_size` -- the weights' bytes as float32 and bit-packed at the trained precision.
"""

from nnlab.export._run import WEIGHTS, TrainedRun
from nnlab.export._size import pack_weights, unpack_weights, weights_bits, weights_size

__all__ = ["WEIGHTS", "TrainedRun", "pack_weights", "unpack_weights", "weights_bits", "weights_size"]
