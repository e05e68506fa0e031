"""The data of a run: the particle task (simulate -> validate -> derive features -> split and scale)
or a user's table (``prepare_table``: chosen columns, text one-hot encoded, split and scaled).

A 2-D particle of mass ``m`` and charge ``q`` moves in a uniform magnetic field
``B`` along z. The Lorentz force ``F = q v x B`` turns the velocity at the signed
cyclotron frequency ``w = qB/m``; the motion has an exact closed form, evaluated
here for all particles at once with NumPy.

Example:
    >>> from nnlab.data import generate_particle_data, preprocess_for_training
    >>> df = generate_particle_data(500, seed=1)
    >>> X_train, X_val, X_test, y_train, y_val, y_test = preprocess_for_training(df)

Particle CSVs of the original lab (no ``displacement`` column, the displacement in
``trajectory_length``, velocities turning the other way) are refused by
``load_particle_data`` and ``validate_particle_data`` with one message;
``resimulate_csv`` (``nnlab data resimulate OLD.csv NEW.csv``) converts them.
"""

from __future__ import annotations

from nnlab._lazy import lazy_attributes

# name -> module that defines it; resolved on first use, so a command that only checks a file
# (`--data nope.csv`) loads neither scikit-learn nor the simulation.
_EXPORTS = {
    "DATA_FORMAT_VERSION": "nnlab.data._io",
    "GENERATOR_NAME": "nnlab.data._io",
    "check_data_file": "nnlab.data._io",
    "check_output_file": "nnlab.data._io",
    "load_particle_data": "nnlab.data._io",
    "read_header": "nnlab.data._io",
    "read_particle_csv": "nnlab.data._io",
    "save_particle_data": "nnlab.data._io",
    "sidecar_path": "nnlab.data._io",
    "stale_reason": "nnlab.data._io",
    "RESIMULATOR_NAME": "nnlab.data._migrate",
    "Resimulation": "nnlab.data._migrate",
    "resimulate_csv": "nnlab.data._migrate",
    "resimulate_particle_data": "nnlab.data._migrate",
    "PARTICLE_TASK": "nnlab.data._prepare",
    "TABLE_TASK": "nnlab.data._prepare",
    "PreparedData": "nnlab.data._prepare",
    "Scalers": "nnlab.data._prepare",
    "collocation_inputs": "nnlab.data._prepare",
    "complete_data_pipeline": "nnlab.data._prepare",
    "load_scalers": "nnlab.data._prepare",
    "prepare_csv": "nnlab.data._prepare",
    "preprocess_for_training": "nnlab.data._prepare",
    "resolve_columns": "nnlab.data._prepare",
    "split_indices": "nnlab.data._prepare",
    "DEFAULT_TARGETS": "nnlab.data._simulate",
    "DERIVED_FEATURES": "nnlab.data._simulate",
    "FEATURE_COLUMNS": "nnlab.data._simulate",
    "FINAL_COLUMNS": "nnlab.data._simulate",
    "INITIAL_COLUMNS": "nnlab.data._simulate",
    "REQUIRED_COLUMNS": "nnlab.data._simulate",
    "TARGET_UNITS": "nnlab.data._simulate",
    "add_derived_features": "nnlab.data._simulate",
    "final_state": "nnlab.data._simulate",
    "generate_particle_data": "nnlab.data._simulate",
    "MAX_CATEGORIES": "nnlab.data._table",
    "MISSING_MARKERS": "nnlab.data._table",
    "ROWS_PER_CATEGORY": "nnlab.data._table",
    "TableEncoding": "nnlab.data._table",
    "encode_table": "nnlab.data._table",
    "prepare_table": "nnlab.data._table",
    "MAX_ABS_VALUE": "nnlab.data._validate",
    "ValidationReport": "nnlab.data._validate",
    "original_lab_message": "nnlab.data._validate",
    "original_lab_signs": "nnlab.data._validate",
    "validate_particle_data": "nnlab.data._validate",
}

__all__ = [
    "DATA_FORMAT_VERSION",
    "DEFAULT_TARGETS",
    "DERIVED_FEATURES",
    "FEATURE_COLUMNS",
    "FINAL_COLUMNS",
    "GENERATOR_NAME",
    "INITIAL_COLUMNS",
    "MAX_ABS_VALUE",
    "MAX_CATEGORIES",
    "TARGET_UNITS",
    "MISSING_MARKERS",
    "PARTICLE_TASK",
    "REQUIRED_COLUMNS",
    "RESIMULATOR_NAME",
    "ROWS_PER_CATEGORY",
    "TABLE_TASK",
    "TableEncoding",
    "PreparedData",
    "Resimulation",
    "Scalers",
    "ValidationReport",
    "add_derived_features",
    "check_data_file",
    "check_output_file",
    "collocation_inputs",
    "complete_data_pipeline",
    "encode_table",
    "final_state",
    "generate_particle_data",
    "load_particle_data",
    "load_scalers",
    "original_lab_message",
    "original_lab_signs",
    "prepare_csv",
    "prepare_table",
    "preprocess_for_training",
    "read_header",
    "read_particle_csv",
    "resimulate_csv",
    "resimulate_particle_data",
    "resolve_columns",
    "save_particle_data",
    "sidecar_path",
    "split_indices",
    "stale_reason",
    "validate_particle_data",
]

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals(), __all__)
