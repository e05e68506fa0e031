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

from nnlab.data._io import (
    DATA_FORMAT_VERSION,
    GENERATOR_NAME,
    check_data_file,
    check_output_file,
    load_particle_data,
    read_header,
    read_particle_csv,
    save_particle_data,
    sidecar_path,
    stale_reason,
)
from nnlab.data._migrate import RESIMULATOR_NAME, Resimulation, resimulate_csv, resimulate_particle_data
from nnlab.data._prepare import (
    PARTICLE_TASK,
    TABLE_TASK,
    PreparedData,
    Scalers,
    collocation_inputs,
    complete_data_pipeline,
    load_scalers,
    prepare_csv,
    preprocess_for_training,
    resolve_columns,
    split_indices,
)
from nnlab.data._simulate import (
    DEFAULT_TARGETS,
    DERIVED_FEATURES,
    FEATURE_COLUMNS,
    FINAL_COLUMNS,
    INITIAL_COLUMNS,
    REQUIRED_COLUMNS,
    TARGET_UNITS,
    add_derived_features,
    final_state,
    generate_particle_data,
)
from nnlab.data._table import (
    MAX_CATEGORIES,
    MISSING_MARKERS,
    ROWS_PER_CATEGORY,
    TableEncoding,
    encode_table,
    prepare_table,
)
from nnlab.data._validate import (
    MAX_ABS_VALUE,
    ValidationReport,
    original_lab_message,
    original_lab_signs,
    validate_particle_data,
)

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
