"""Tests of nnlab.data: generation, features, validation, I/O, preprocessing, pipeline."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnlab.config import GenerationConfig
from nnlab.data import (
    DEFAULT_TARGETS,
    DERIVED_FEATURES,
    FEATURE_COLUMNS,
    INITIAL_COLUMNS,
    REQUIRED_COLUMNS,
    PreparedData,
    add_derived_features,
    complete_data_pipeline,
    generate_particle_data,
    load_particle_data,
    load_scalers,
    preprocess_for_training,
    save_particle_data,
    validate_particle_data,
)
from nnlab.errors import ConfigError, DataValidationError


@pytest.fixture
def particles() -> pd.DataFrame:
    return generate_particle_data(300, seed=123)


def write_csv(df: pd.DataFrame, tmp_path: Path, name: str = "particles.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def validation_error(df: pd.DataFrame, **kwargs) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        validate_particle_data(df, **kwargs)
    return info.value


# --------------------------------------------------------------------------- generation


def test_columns_constants_and_order(particles):
    assert list(particles.columns) == REQUIRED_COLUMNS
    assert REQUIRED_COLUMNS[:9] == ["particle_id", *INITIAL_COLUMNS]
    assert FEATURE_COLUMNS == INITIAL_COLUMNS + DERIVED_FEATURES
    assert DEFAULT_TARGETS == ["final_velocity_x", "final_velocity_y", "final_position_x",
                               "final_position_y", "kinetic_energy", "displacement"]
    assert len(INITIAL_COLUMNS) == 8 and len(DERIVED_FEATURES) == 15
    assert particles["particle_id"].tolist() == list(range(300))
    assert all(particles[c].dtype == np.float64 for c in REQUIRED_COLUMNS[1:])


def test_same_seed_same_data_different_seed_different_data():
    a = generate_particle_data(100, seed=5)
    pd.testing.assert_frame_equal(a, generate_particle_data(100, seed=5))
    b = generate_particle_data(100, seed=6)
    assert not np.allclose(a["mass"], b["mass"])


def test_seed_argument_takes_precedence_over_config_seed():
    from_config = generate_particle_data(50, {"random_seed": 9})
    pd.testing.assert_frame_equal(from_config, generate_particle_data(50, seed=9))
    overridden = generate_particle_data(50, {"random_seed": 9}, seed=10)
    pd.testing.assert_frame_equal(overridden, generate_particle_data(50, seed=10))
    assert not np.allclose(overridden["mass"], from_config["mass"])
    # The default config seed (42) is used when nothing else is given.
    pd.testing.assert_frame_equal(generate_particle_data(20), generate_particle_data(20, seed=42))


def test_values_respect_configured_ranges():
    config = GenerationConfig(mass_range=(2.0, 3.0), velocity_x_range=(-1.0, 0.5),
                              velocity_y_range=(4.0, 6.0), position_x_range=(100.0, 101.0),
                              position_y_range=(-7.0, -6.0), magnetic_field_range=(0.2, 0.3),
                              simulation_time_range=(0.5, 1.5))
    df = generate_particle_data(2000, config, seed=0)
    for col, (lo, hi) in [("mass", (2, 3)), ("initial_velocity_x", (-1, 0.5)),
                          ("initial_velocity_y", (4, 6)), ("initial_position_x", (100, 101)),
                          ("initial_position_y", (-7, -6)), ("magnetic_field_strength", (0.2, 0.3)),
                          ("simulation_time", (0.5, 1.5))]:
        assert df[col].between(lo, hi).all(), col
        # Uniform draws: both ends of the range are approached.
        assert df[col].min() < lo + 0.01 * (hi - lo) and df[col].max() > hi - 0.01 * (hi - lo)
    assert set(df["charge"]) == {-1.0, 0.0, 1.0}


def test_custom_charge_values_are_respected():
    df = generate_particle_data(400, {"charge_values": [-2, 2]}, seed=1)
    assert set(df["charge"]) == {-2.0, 2.0}
    assert 100 < (df["charge"] == 2).sum() < 300  # drawn uniformly from the set
    assert set(generate_particle_data(50, {"charge_values": [3.5]}, seed=1)["charge"]) == {3.5}


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10", None])
def test_num_particles_must_be_positive_int(bad):
    with pytest.raises(ConfigError, match="num_particles must be a positive integer"):
        generate_particle_data(bad)
    assert issubclass(ConfigError, ValueError)


def test_numpy_integer_num_particles_accepted():
    assert len(generate_particle_data(np.int64(7), seed=0)) == 7


def test_invalid_config_dict_names_the_key():
    with pytest.raises(ConfigError, match="mass_range"):
        generate_particle_data(5, {"mass_range": "heavy"})
    with pytest.raises(ConfigError, match="no_such_key"):
        generate_particle_data(5, {"no_such_key": 1})
    with pytest.raises(ConfigError, match="mass_range"):
        generate_particle_data(5, {"mass_range": (-1.0, 1.0)})
    with pytest.raises(ConfigError, match="simulation_time_range"):
        generate_particle_data(5, {"simulation_time_range": (2.0, 1.0)})
    with pytest.raises(ConfigError, match="GenerationConfig, a dict or None"):
        generate_particle_data(5, [1, 2])


# --------------------------------------------------------------------------- features


def test_derived_features_on_hand_computed_particle():
    df = pd.DataFrame([{"mass": 2.0, "initial_velocity_x": 3.0, "initial_velocity_y": 4.0,
                        "initial_position_x": 1.0, "initial_position_y": 2.0, "charge": -1.0,
                        "magnetic_field_strength": 0.5, "simulation_time": 2.0},
                       {"mass": 1.0, "initial_velocity_x": 0.0, "initial_velocity_y": -1.0,
                        "initial_position_x": 0.0, "initial_position_y": 0.0, "charge": 0.0,
                        "magnetic_field_strength": 1.5, "simulation_time": 3.0}])
    out = add_derived_features(df)
    assert list(out.columns) == INITIAL_COLUMNS + DERIVED_FEATURES
    assert list(df.columns) == INITIAL_COLUMNS  # input untouched
    expected = {"initial_speed": 5.0, "initial_position_mag": math.sqrt(5.0),
                "initial_momentum_x": 6.0, "initial_momentum_y": 8.0, "initial_momentum_mag": 10.0,
                "momentum_dot_position": 22.0, "charge_field_product": -0.5, "abs_charge": 1.0,
                "cyclotron_frequency": -0.25, "cyclotron_phase": -0.5, "lorentz_force_mag": 2.5,
                "sim_time_field": 1.0, "time_squared": 4.0,
                "sin_cyclotron_phase": math.sin(-0.5), "cos_cyclotron_phase": math.cos(-0.5)}
    for name, value in expected.items():
        assert out.loc[0, name] == pytest.approx(value, rel=1e-15), name
    neutral = out.loc[1]
    assert neutral["cyclotron_frequency"] == 0.0 and neutral["cyclotron_phase"] == 0.0
    assert neutral["lorentz_force_mag"] == 0.0 and neutral["cos_cyclotron_phase"] == 1.0
    assert neutral["initial_speed"] == 1.0 and neutral["time_squared"] == 9.0


def test_derived_features_are_not_duplicated_and_need_initial_columns(particles):
    once = add_derived_features(particles)
    twice = add_derived_features(once)
    assert list(twice.columns) == list(once.columns)
    pd.testing.assert_frame_equal(once, twice)
    with pytest.raises(DataValidationError, match="charge"):
        add_derived_features(particles.drop(columns=["charge"]))


# --------------------------------------------------------------------------- validation


@pytest.fixture
def good_csv(tmp_path) -> Path:
    return write_csv(generate_particle_data(40, seed=2), tmp_path)


def corrupted(path: Path, edit) -> pd.DataFrame:
    """Edit the CSV text through pandas, write it back, and load it like a user file would."""
    df = pd.read_csv(path)
    df = edit(df) if edit(df) is not None else df
    df.to_csv(path, index=False)
    return load_particle_data(path)


def test_round_tripped_csv_is_valid(tmp_path):
    # Wide ranges and many turns: still accepted after text round trip.
    config = {"velocity_x_range": (-1e3, 1e3), "mass_range": (0.01, 100.0),
              "magnetic_field_range": (0.1, 50.0), "simulation_time_range": (0.0, 100.0)}
    df = generate_particle_data(5000, config, seed=4)
    report = validate_particle_data(load_particle_data(write_csv(df, tmp_path)))
    assert report.ok and report.n_dropped == 0 and report.n_rows_in == 5000
    assert "5000 rows checked: 5000 kept, 0 dropped" in report.summary()


def test_missing_column_is_reported(good_csv):
    df = corrupted(good_csv, lambda d: d.drop(columns=["kinetic_energy"]))
    err = validation_error(df)
    assert "missing required column(s): kinetic_energy" in str(err)
    with pytest.raises(DataValidationError):  # structural: drop_invalid does not help
        validate_particle_data(df, drop_invalid=True)


def test_non_numeric_column_is_reported(good_csv):
    def edit(d):
        d["mass"] = d["mass"].astype(object)
        d.loc[3, "mass"] = "heavy"
    err = validation_error(corrupted(good_csv, edit))
    assert "column 'mass' is not numeric" in str(err)
    assert "rows 3)" in str(err) and "'heavy'" in str(err)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_reported(good_csv, bad_value):
    def edit(d):
        d.loc[[2, 11], "final_velocity_x"] = bad_value
    err = validation_error(corrupted(good_csv, edit))
    assert "column 'final_velocity_x': 2 row(s) (rows 2, 11) are NaN or infinite" in str(err)
    # A non-finite value is reported once, not again as a physics inconsistency.
    assert len(err.problems) == 1


def test_non_positive_mass_is_reported(good_csv):
    def edit(d):
        d.loc[1, "mass"] = 0.0
        d.loc[5, "mass"] = -2.0
    err = validation_error(corrupted(good_csv, edit))
    assert "column 'mass': 2 row(s) (rows 1, 5) have mass <= 0" in str(err)


def test_negative_simulation_time_is_reported(good_csv):
    def edit(d):
        d.loc[6, "simulation_time"] = -1.0
    err = validation_error(corrupted(good_csv, edit))
    assert "column 'simulation_time': 1 row(s) (rows 6) are negative" in str(err)


def test_kinetic_energy_inconsistency_is_reported(good_csv):
    def edit(d):
        d.loc[7, "kinetic_energy"] *= 1.01
    err = validation_error(corrupted(good_csv, edit))
    assert err.problems == ["column 'kinetic_energy': 1 row(s) (rows 7) differ from "
                            "mass * |v_final|^2 / 2"]


def test_speed_conservation_violation_is_reported(good_csv):
    def edit(d):
        # Scale the final velocity and its energy together: only the speed rule breaks.
        d.loc[8, ["final_velocity_x", "final_velocity_y"]] *= 1.5
        d.loc[8, "kinetic_energy"] *= 2.25
    err = validation_error(corrupted(good_csv, edit))
    assert len(err.problems) == 1
    assert "final_velocity_x" in err.problems[0] and "rows 8)" in err.problems[0]
    assert "speed conservation" in err.problems[0]


def test_displacement_inconsistency_is_reported(good_csv):
    def edit(d):
        d.loc[9, "displacement"] += 0.5
    err = validation_error(corrupted(good_csv, edit))
    assert err.problems == ["column 'displacement': 1 row(s) (rows 9) differ from "
                            "|r_final - r_initial|"]


def test_trajectory_length_inconsistency_is_reported(good_csv):
    def edit(d):
        d.loc[10, "trajectory_length"] *= 0.9
    err = validation_error(corrupted(good_csv, edit))
    assert "column 'trajectory_length': 1 row(s) (rows 10)" in str(err)


def test_all_problems_reported_at_once_and_rows_truncated(good_csv):
    def edit(d):
        d.loc[[0, 1, 2, 3, 4, 5, 6], "mass"] = -1.0
        d.loc[12, "initial_position_x"] = np.nan
        d["magnetic_field_strength"] = "strong"
        return d.drop(columns=["particle_id"])
    err = validation_error(corrupted(good_csv, edit), source="particles.csv")
    text = str(err)
    assert "in particles.csv failed validation" in text
    assert "missing required column(s): particle_id" in text
    assert "column 'magnetic_field_strength' is not numeric" in text
    assert "column 'mass': 7 row(s) (rows 0, 1, 2, 3, 4, ...) have mass <= 0" in text
    assert "column 'initial_position_x': 1 row(s) (rows 12) are NaN or infinite" in text
    assert len(err.problems) >= 5 and all(p in text for p in err.problems)


def test_empty_frame_is_rejected():
    err = validation_error(generate_particle_data(3, seed=0).iloc[:0])
    assert "no rows" in str(err)
    with pytest.raises(DataValidationError, match="DataFrame"):
        validate_particle_data([1, 2, 3])


def test_drop_invalid_drops_only_bad_rows_and_reports_why(good_csv):
    def edit(d):
        d.loc[[1, 5], "mass"] = -1.0
        d.loc[5, "kinetic_energy"] = np.nan
        d.loc[20, "displacement"] += 3.0
    df = corrupted(good_csv, edit)
    report = validate_particle_data(df, drop_invalid=True)
    assert report.n_rows_in == 40 and report.n_dropped == 3 and not report.ok
    assert len(report.data) == 37
    assert list(report.data.index) == list(range(37))
    assert set(df["particle_id"]) - set(report.data["particle_id"]) == {1, 5, 20}
    assert any("mass" in p and "2 row(s)" in p for p in report.problems)
    assert any("displacement" in p and "1 row(s)" in p for p in report.problems)
    assert all(p.startswith("dropped: ") for p in report.problems)
    assert report.summary().startswith("40 rows checked: 37 kept, 3 dropped")
    assert validate_particle_data(report.data).ok


def test_drop_invalid_refuses_to_drop_everything(particles):
    bad = particles.assign(mass=-1.0)
    with pytest.raises(DataValidationError, match="every row"):
        validate_particle_data(bad, drop_invalid=True)


def test_valid_data_is_returned_unchanged(particles):
    report = validate_particle_data(particles)
    assert report.ok and report.data is particles and report.problems == []


# --------------------------------------------------------------------------- load / save


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataValidationError, match="not found") as info:
        load_particle_data(path)
    assert str(path) in str(info.value)


def test_load_directory(tmp_path):
    with pytest.raises(DataValidationError, match="is a directory") as info:
        load_particle_data(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (",".join(REQUIRED_COLUMNS).encode() + b"\n", "header but no data rows"),
    (b"a,b\n1,2\n3,4,5,6\n", "not valid CSV"),
    (b"mass,charge\n\xff\xfe\xfa,1\n", "not valid CSV"),
])
def test_load_unreadable_files(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataValidationError, match=message) as info:
        load_particle_data(path)
    assert str(path) in str(info.value)


def test_save_is_atomic_and_writes_sidecar(tmp_path, particles):
    path = tmp_path / "sub" / "dir" / "p.csv"
    assert save_particle_data(particles, path, metadata={"seed": 123, "note": "x"}) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.csv", "p.csv.meta.json"]
    meta = json.loads((path.parent / "p.csv.meta.json").read_text())
    assert meta["seed"] == 123 and meta["note"] == "x" and meta["num_rows"] == 300
    assert meta["format_version"] == 1 and meta["csv_bytes"] == path.stat().st_size
    loaded = load_particle_data(path)
    pd.testing.assert_frame_equal(loaded, particles, check_exact=False, rtol=1e-15)
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_with_bad_metadata_writes_nothing(tmp_path, particles):
    path = tmp_path / "p.csv"
    with pytest.raises(TypeError):
        save_particle_data(particles, path, metadata={"when": object()})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- preprocessing


def test_split_sizes_dtypes_and_shapes(particles):
    data = preprocess_for_training(particles)
    X_train, X_val, X_test, y_train, y_val, y_test = data
    # test = ceil(0.2 * 300) = 60; validation = ceil(0.2 * 240) = 48; train = 192
    assert [len(a) for a in data] == [192, 48, 60, 192, 48, 60]
    assert X_train.shape[1] == len(FEATURE_COLUMNS) and y_train.shape[1] == len(DEFAULT_TARGETS)
    assert all(a.dtype == np.float32 for a in data)
    assert data.feature_names == FEATURE_COLUMNS and data.target_names == DEFAULT_TARGETS
    assert len(data) == 6 and data[0] is X_train and data[-1] is y_test
    assert list(particles.columns) == REQUIRED_COLUMNS  # input untouched


def test_scalers_fit_on_training_rows_only(particles):
    data = preprocess_for_training(particles)
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.y_train.mean(axis=0), 0.0, atol=1e-5)
    # Constant columns (none here) would have std 0; every feature varies.
    np.testing.assert_allclose(data.X_train.std(axis=0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(data.y_train.std(axis=0), 1.0, rtol=1e-4)
    assert data.x_scaler.n_samples_seen_ == 192 and data.y_scaler.n_samples_seen_ == 192
    all_means = add_derived_features(particles)[FEATURE_COLUMNS].mean().to_numpy()
    assert not np.allclose(data.x_scaler.mean_, all_means, rtol=1e-6)
    assert abs(data.X_test.mean()) > 1e-4  # held-out rows are not centred exactly


def test_split_is_deterministic_and_disjoint(particles):
    a = preprocess_for_training(particles, random_state=1)
    b = preprocess_for_training(particles, random_state=1)
    c = preprocess_for_training(particles, random_state=2)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(a.X_test, c.X_test)
    # Identify rows by their (physical) initial velocities, unique with probability 1.
    ids = [set(map(tuple, np.round(a.x_scaler.inverse_transform(x)[:, 1:3], 3)))
           for x in (a.X_train, a.X_val, a.X_test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_inverse_transform_targets_round_trip(particles):
    data = preprocess_for_training(particles)
    physical = np.vstack([data.inverse_transform_targets(y) for y in (data.y_train, data.y_val, data.y_test)])
    expected = particles[DEFAULT_TARGETS].to_numpy()
    np.testing.assert_allclose(np.sort(physical, axis=0), np.sort(expected, axis=0), rtol=1e-5, atol=1e-5)
    one = data.inverse_transform_targets(data.y_test[0])
    np.testing.assert_allclose(one, data.inverse_transform_targets(data.y_test[:1])[0])


def test_scaler_save_load_round_trip(tmp_path, particles):
    data = preprocess_for_training(particles, targets=["kinetic_energy"])
    path = data.save_scalers(tmp_path / "run")
    assert path == tmp_path / "run" / "scalers.json"
    doc = json.loads(path.read_text())
    assert doc["feature_names"] == FEATURE_COLUMNS and doc["target_names"] == ["kinetic_energy"]
    assert sorted(doc["x_scaler"]) == ["mean_", "n_samples_seen_", "scale_", "var_"]
    for loaded in (load_scalers(tmp_path / "run"), PreparedData.load_scalers(tmp_path / "run")):
        assert loaded.feature_names == FEATURE_COLUMNS and loaded.target_names == ["kinetic_energy"]
        raw = add_derived_features(particles)[FEATURE_COLUMNS].to_numpy()
        np.testing.assert_array_equal(loaded.x_scaler.transform(raw), data.x_scaler.transform(raw))
        np.testing.assert_array_equal(loaded.y_scaler.var_, data.y_scaler.var_)
        np.testing.assert_allclose(loaded.inverse_transform_targets(data.y_val),
                                   data.inverse_transform_targets(data.y_val))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["scalers.json"]


@pytest.mark.parametrize("content", [None, "{not json", '{"feature_names": ["a"]}',
                                     '{"feature_names": ["a"], "target_names": ["b"], '
                                     '"x_scaler": {"mean_": [1, 2], "scale_": [1], "var_": [1], '
                                     '"n_samples_seen_": 3}, "y_scaler": {}}'])
def test_load_scalers_missing_or_corrupt(tmp_path, content):
    if content is not None:
        (tmp_path / "scalers.json").write_text(content)
    with pytest.raises(DataValidationError) as info:
        load_scalers(tmp_path)
    assert str(tmp_path / "scalers.json") in str(info.value)


@pytest.mark.parametrize("kwargs", [{"test_size": 0}, {"test_size": 1.0}, {"val_size": -0.1},
                                    {"val_size": 1.5}, {"test_size": "0.2"}])
def test_bad_split_sizes(particles, kwargs):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        preprocess_for_training(particles, **kwargs)


def test_unknown_targets_and_features_list_allowed_names(particles):
    with pytest.raises(DataValidationError, match="unknown: \\['speed'\\]") as info:
        preprocess_for_training(particles, targets=["speed"])
    assert "trajectory_length" in str(info.value)
    with pytest.raises(DataValidationError, match="cyclotron_phase"):
        preprocess_for_training(particles, features=["mass", "colour"])
    with pytest.raises(DataValidationError):
        preprocess_for_training(particles, targets=[])


def test_custom_targets_and_features(particles):
    data = preprocess_for_training(particles, targets=["trajectory_length"],
                                   features=["mass", "cyclotron_phase"])
    assert data.X_train.shape == (192, 2) and data.y_test.shape == (60, 1)


def test_too_few_rows_for_split(particles):
    with pytest.raises(DataValidationError, match="too few rows \\(3\\)"):
        preprocess_for_training(particles.head(3))
    # 4 rows: 1 test (ceil 0.8), 1 validation (ceil 0.6), 2 training.
    assert [len(x) for x in preprocess_for_training(particles.head(4))[:3]] == [2, 1, 1]


def test_non_finite_values_rejected(particles):
    bad = particles.copy()
    bad.loc[4, "charge"] = np.nan
    with pytest.raises(DataValidationError, match="charge"):
        preprocess_for_training(bad)


# --------------------------------------------------------------------------- pipeline


def file_state(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_pipeline_in_memory_unpacks_like_a_tuple():
    X_train, X_val, X_test, y_train, y_val, y_test = complete_data_pipeline(num_particles=250, seed=3)
    assert len(X_train) + len(X_val) + len(X_test) == 250
    assert X_train.dtype == np.float32 and y_test.shape[1] == len(DEFAULT_TARGETS)


def test_pipeline_generates_saves_then_reuses(tmp_path, caplog):
    path = tmp_path / "new" / "dir" / "particles.csv"
    caplog.set_level("INFO", logger="nnlab.data")
    first = complete_data_pipeline(path, 200, seed=4)
    meta = json.loads((path.parent / "particles.csv.meta.json").read_text())
    assert meta["num_particles"] == 200 and meta["seed"] == 4
    assert meta["generation_config"] == GenerationConfig().model_dump(mode="json")
    assert len(pd.read_csv(path)) == 200
    before = file_state(path)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = complete_data_pipeline(path, 200, seed=4)
    assert file_state(path) == before
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert "reusing cached particle data" in caplog.text


def test_pipeline_regenerates_stale_cache(tmp_path):
    path = tmp_path / "particles.csv"
    complete_data_pipeline(path, 200, seed=4)
    with pytest.warns(UserWarning, match="num_particles=200, 300 requested"):
        data = complete_data_pipeline(path, 300, seed=4)
    assert len(pd.read_csv(path)) == 300 and sum(len(x) for x in data[:3]) == 300
    with pytest.warns(UserWarning, match="mass_range"):
        complete_data_pipeline(path, 300, seed=4, config={"mass_range": (1.0, 2.0)})
    assert pd.read_csv(path)["mass"].between(1.0, 2.0).all()
    with pytest.warns(UserWarning, match="seed"):
        complete_data_pipeline(path, 300, seed=5, config={"mass_range": (1.0, 2.0)})
    meta = json.loads((tmp_path / "particles.csv.meta.json").read_text())
    assert meta["seed"] == 5 and meta["generation_config"]["mass_range"] == [1.0, 2.0]
    # The config's own random_seed is the seed when none is passed; same data -> reused.
    before = file_state(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        complete_data_pipeline(path, 300, config={"mass_range": (1.0, 2.0), "random_seed": 5})
    assert file_state(path) == before


def test_pipeline_regenerates_when_csv_edited_after_save(tmp_path):
    path = tmp_path / "particles.csv"
    complete_data_pipeline(path, 100, seed=1)
    pd.read_csv(path).head(90).to_csv(path, index=False)
    with pytest.warns(UserWarning, match="modified"):
        complete_data_pipeline(path, 100, seed=1)
    assert len(pd.read_csv(path)) == 100


def test_pipeline_never_overwrites_user_csv(tmp_path, caplog):
    path = write_csv(generate_particle_data(150, seed=8), tmp_path, "mine.csv")
    before = file_state(path)
    caplog.set_level("INFO", logger="nnlab.data")
    data = complete_data_pipeline(path, num_particles=5000, seed=1)
    assert sum(len(x) for x in data[:3]) == 150
    assert file_state(path) == before
    assert not (tmp_path / "mine.csv.meta.json").exists()
    assert "user-provided" in caplog.text and "ignored" in caplog.text


def test_pipeline_user_csv_with_bad_rows(tmp_path):
    df = generate_particle_data(150, seed=8)
    df.loc[[3, 4], "mass"] = -1.0
    path = write_csv(df, tmp_path, "mine.csv")
    before = file_state(path)
    with pytest.raises(DataValidationError, match="mine.csv") as info:
        complete_data_pipeline(path)
    assert "rows 3, 4" in str(info.value)
    data = complete_data_pipeline(path, drop_invalid=True)
    assert sum(len(x) for x in data[:3]) == 148
    assert file_state(path) == before


def test_pipeline_corrupt_sidecar_is_an_error(tmp_path):
    path = tmp_path / "particles.csv"
    complete_data_pipeline(path, 100, seed=1)
    (tmp_path / "particles.csv.meta.json").write_text("{broken")
    before = file_state(path)
    with pytest.raises(DataValidationError, match="particles.csv.meta.json"):
        complete_data_pipeline(path, 100, seed=1)
    assert file_state(path) == before


def test_pipeline_uses_config_default_particle_count(tmp_path):
    data = complete_data_pipeline(num_particles=None, config={"num_particles_default": 120})
    assert sum(len(x) for x in data[:3]) == 120
    with pytest.raises(ConfigError):
        complete_data_pipeline(num_particles=0)
    assert os.listdir(tmp_path) == []
