"""Trained networks outside the lab: predict on raw rows, export with the preprocessing inside the graph.

* :class:`TrainedRun` -- a finished run loaded with its columns, scalers and network;
  :meth:`TrainedRun.predict` is nnlab's own prediction path (the reference).
"""

from nnlab.export._run import WEIGHTS, TrainedRun

__all__ = ["WEIGHTS", "TrainedRun"]
