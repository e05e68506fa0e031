"""Fuzzing the two places users feed arbitrary input: configuration dicts and CSV files.

Whatever they hold, the result is accepted or a ConfigError / DataValidationError
naming the problem — never another exception.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnlab.config import ALL_KEYS, Config
from nnlab.data import REQUIRED_COLUMNS, generate_particle_data, load_particle_data, validate_particle_data
from nnlab.errors import ConfigError, DataValidationError

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
values = st.one_of(scalars, st.lists(scalars, max_size=6), st.dictionaries(st.text(max_size=5), scalars, max_size=3))
keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=8))
def test_config_dicts_are_accepted_or_config_errors(raw):
    try:
        cfg = Config.from_flat(raw)
    except ConfigError as exc:
        assert str(exc)  # a message, naming something
        return
    # Accepted: every value made it through validation and round-trips.
    assert Config.from_flat(cfg.to_flat()) == cfg


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(ALL_KEYS), st.floats(allow_nan=True, allow_infinity=True), max_size=6))
def test_numeric_config_values_never_crash(raw):
    try:
        cfg = Config.from_flat(raw)
    except ConfigError:
        return
    for key, value in cfg.to_flat().items():
        if isinstance(value, float):
            assert math.isfinite(value), key


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_arbitrary_csv_bytes(tmp_path, payload):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(payload)
    try:
        validate_particle_data(load_particle_data(path))
    except DataValidationError as exc:
        assert exc.problems


BASE = generate_particle_data(12, seed=0)
cell = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.none(),
                 st.integers(min_value=-10**6, max_value=10**6))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.sampled_from(REQUIRED_COLUMNS), cell), max_size=8),
       st.sets(st.sampled_from(REQUIRED_COLUMNS), max_size=2), st.booleans())
def test_damaged_particle_csvs(tmp_path, edits, dropped, drop_invalid):
    df = BASE.copy().astype(object)
    for row, column, value in edits:
        df.at[row, column] = value
    df = df.drop(columns=sorted(dropped))
    path = tmp_path / "damaged.csv"
    df.to_csv(path, index=False)
    try:
        report = validate_particle_data(load_particle_data(path), drop_invalid=drop_invalid)
    except DataValidationError as exc:
        assert exc.problems
        return
    clean = report.data[REQUIRED_COLUMNS].to_numpy(dtype=np.float64)
    assert np.isfinite(clean).all() and len(report.data) >= 1
    assert isinstance(report.data, pd.DataFrame)
