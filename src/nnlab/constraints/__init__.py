"""Weight constraints as vectorised, in-graph TensorFlow ops.

* :mod:`~nnlab.constraints.bits` -- float32 bit operations
  (:func:`significant_bits`, :func:`round_to_bits`, ...);
* constraints on whole weight tensors: :class:`BinaryPrecisionMax`,
  :class:`BinaryChangeMax`, :class:`OscillationDampener`,
  :class:`AdaptiveOscillationDampener`, :class:`JamesSteinShrinkage`
  (and the pure :func:`james_stein_shrink`);
* :class:`WeightConstraintCallback` applies a chain of them during
  ``model.fit`` every N epochs; :class:`StepConstraints` applies the binary
  limits after every optimizer step (``constraint_schedule = "step"``);
  :func:`build_constraints` / :func:`build_constraint_callback` /
  :func:`build_step_constraints` build them from the configuration.

Example:
    >>> import numpy as np
    >>> from nnlab.constraints import BinaryPrecisionMax, build_constraint_callback
    >>> BinaryPrecisionMax(8).apply(np.float32([[0.125344, -0.875444]])).tolist()
    [[0.125, -0.875]]
    >>> callback = build_constraint_callback({"constraint_interval": 2})
"""

from nnlab.constraints.base import WeightConstraint
from nnlab.constraints.binary import BinaryChangeMax, BinaryPrecisionMax
from nnlab.constraints.bits import (
    clear_lowest_set_bits,
    count_non_finite,
    round_to_bits,
    significant_bits,
)
from nnlab.constraints.builder import (
    build_constraint_callback,
    build_constraints,
    build_step_constraints,
)
from nnlab.constraints.callback import WeightConstraintCallback
from nnlab.constraints.james_stein import JamesSteinShrinkage, james_stein_shrink
from nnlab.constraints.oscillation import (
    AdaptiveOscillationDampener,
    OscillationDampener,
)
from nnlab.constraints.step import StepConstraints

__all__ = [
    "AdaptiveOscillationDampener",
    "BinaryChangeMax",
    "BinaryPrecisionMax",
    "JamesSteinShrinkage",
    "OscillationDampener",
    "StepConstraints",
    "WeightConstraint",
    "WeightConstraintCallback",
    "build_constraint_callback",
    "build_constraints",
    "build_step_constraints",
    "clear_lowest_set_bits",
    "count_non_finite",
    "james_stein_shrink",
    "round_to_bits",
    "significant_bits",
]
