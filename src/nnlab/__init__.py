"""nnlab: a TensorFlow/Keras lab for regression networks on simulated particle physics.

The public API is importable from the package root; heavy modules (TensorFlow)
load only when a name that needs them is first used.

Example:
    >>> from nnlab import complete_data_pipeline
    >>> X_train, X_val, X_test, y_train, y_val, y_test = complete_data_pipeline(num_particles=200)
"""

from __future__ import annotations

from nnlab._lazy import lazy_attributes
import os

# TensorFlow's C++ INFO/WARNING chatter; Python warnings and errors stay visible.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily by __getattr__.
_EXPORTS = {
    "ConfigError": "nnlab.errors",
    "DataValidationError": "nnlab.errors",
    "NnlabError": "nnlab.errors",
    "Config": "nnlab.config",
    "ModelConfig": "nnlab.config",
    "TrainingConfig": "nnlab.config",
    "GenerationConfig": "nnlab.config",
    "load_config": "nnlab.config",
    "generate_particle_data": "nnlab.data",
    "validate_particle_data": "nnlab.data",
    "load_particle_data": "nnlab.data",
    "save_particle_data": "nnlab.data",
    "add_derived_features": "nnlab.data",
    "preprocess_for_training": "nnlab.data",
    "complete_data_pipeline": "nnlab.data",
    "PreparedData": "nnlab.data",
    "AdvancedNeuralNetwork": "nnlab.model",
    "train_with_tracking": "nnlab.runs",
    "PerformanceTracker": "nnlab.tracking",
    "WeightConstraintCallback": "nnlab.constraints",
    "BinaryPrecisionMax": "nnlab.constraints",
    "BinaryChangeMax": "nnlab.constraints",
    "OscillationDampener": "nnlab.constraints",
    "AdaptiveOscillationDampener": "nnlab.constraints",
    "JamesSteinShrinkage": "nnlab.constraints",
    "james_stein_shrink": "nnlab.constraints",
    "significant_bits": "nnlab.constraints",
    "round_to_bits": "nnlab.constraints",
    "AdaptiveLoss": "nnlab.losses",
    "AdaptiveLossCallback": "nnlab.losses",
    "compute_loss_weights": "nnlab.losses",
    "build_adaptive_loss": "nnlab.losses",
    "LossWeightScheduler": "nnlab.losses",
    "quiet_tensorflow_import": "nnlab._tflog",
    "resimulate_particle_data": "nnlab.data",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals(), __all__)
