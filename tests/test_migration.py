"""Coming from the original project: its ml_config files and its particle CSVs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

from nnlab.config import ALL_KEYS, load_config, parse_overrides
from nnlab.config._models import LEGACY_KEYS, Config
from nnlab.data import (
    FINAL_COLUMNS,
    INITIAL_COLUMNS,
    REQUIRED_COLUMNS,
    final_state,
    generate_particle_data,
    load_particle_data,
    original_lab_signs,
    prepare_csv,
    resimulate_particle_data,
    validate_particle_data,
)
from nnlab.errors import ConfigError, DataValidationError
import _forked

REPO = Path(__file__).resolve().parents[1]
N, SEED = 200, 11


def nnlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return _forked.run([sys.executable, "-m", "nnlab.cli", *args], capture_output=True, text=True,
                       cwd=cwd or REPO, env=env, timeout=120)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert shows(proc.stderr, fragment), (fragment, proc.stderr)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- configuration


def original_config_dir(tmp_path: Path, **extra) -> Path:
    cfg = tmp_path / "ml_config"
    cfg.mkdir()
    model = {"hidden_layers": [64, 32], "learning_rate": 0.001, "max_binary_digits": 16,
             "save_to_file": True, **extra}
    (cfg / "model_config.json").write_text(json.dumps(model))
    (cfg / "training_config.json").write_text(json.dumps({"epochs": 7, "batch_size": 32}))
    return cfg


def nnlab_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_legacy_keys_are_explicit_with_reasons_and_not_nnlab_keys():
    assert "save_to_file" in LEGACY_KEYS
    assert not set(LEGACY_KEYS) & set(ALL_KEYS)
    assert all(isinstance(reason, str) and len(reason) > 10 for reason in LEGACY_KEYS.values())


def test_original_model_config_loads_with_one_warning_naming_key_and_file(tmp_path):
    cfg_dir = original_config_dir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(cfg_dir)
    messages = nnlab_warnings(caught)
    assert len(messages) == 1, messages
    assert "model_config.json: save_to_file" in messages[0]
    assert LEGACY_KEYS["save_to_file"] in messages[0]
    # the keys nnlab does use are applied
    assert cfg.model.hidden_layers == [64, 32] and cfg.model.learning_rate == 0.001
    assert cfg.model.max_binary_digits == 16 and cfg.training.epochs == 7
    assert "save_to_file" not in cfg.to_flat()


def test_legacy_keys_in_several_files_give_one_warning_naming_each(tmp_path):
    cfg_dir = original_config_dir(tmp_path, plot_results=True)
    (cfg_dir / "training_config.json").write_text(json.dumps({"epochs": 7, "verbose": 1}))
    extra = tmp_path / "best_config.json"
    extra.write_text(json.dumps({"learning_rate": 0.002, "output_dir": "results"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(cfg_dir, config_file=extra)
    messages = nnlab_warnings(caught)
    assert len(messages) == 1, messages
    for fragment in ("model_config.json: save_to_file, plot_results", "training_config.json: verbose",
                     f"{extra}: output_dir"):
        assert fragment in messages[0]
    assert cfg.model.learning_rate == 0.002


def test_no_warning_without_legacy_keys(tmp_path):
    cfg_dir = tmp_path / "ml_config"
    cfg_dir.mkdir()
    (cfg_dir / "model_config.json").write_text('{"learning_rate": 0.001}')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(cfg_dir)
    assert nnlab_warnings(caught) == []


def test_unknown_key_next_to_legacy_key_is_still_an_error(tmp_path):
    cfg_dir = original_config_dir(tmp_path, learing_rate=0.01)
    with pytest.raises(ConfigError, match=r"model_config.json: unknown key 'learing_rate'; did you mean "
                                          r"'learning_rate'\?"):
        load_config(cfg_dir)


def test_set_of_a_legacy_key_is_an_error_saying_it_is_not_used():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=parse_overrides(["save_to_file=true"]))
    assert str(info.value) == (f"--set: 'save_to_file' is a key of the original project that nnlab does not use "
                               f"({LEGACY_KEYS['save_to_file']}); remove it")
    with pytest.raises(ConfigError, match="'verbose' is a key of the original project"):
        Config.from_flat({"verbose": 1})


def test_cli_original_config_warns_once_and_set_legacy_key_fails(tmp_path):
    cfg_dir = original_config_dir(tmp_path)
    proc = nnlab("config", "show", "--config-dir", str(cfg_dir))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["learning_rate"] == 0.001
    assert proc.stderr.count("ignoring key(s) of the original project") == 1, proc.stderr
    assert "model_config.json: save_to_file" in proc.stderr
    assert_clean_error(nnlab("config", "show", "--config-dir", str(cfg_dir), "--set", "save_to_file=true"),
                       "error: --set: 'save_to_file' is a key of the original project that nnlab does not use")


# --------------------------------------------------------------------------- particle CSVs


@pytest.fixture(scope="module")
def particles() -> pd.DataFrame:
    return generate_particle_data(N, seed=SEED)


def original_lab_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as the original lab wrote it: finals turned the other way (the opposite sign
    of w = qB/m), trajectory_length = displacement, no displacement column."""
    m, vx, vy, x0, y0, q, b, t = (df[c].to_numpy() for c in INITIAL_COLUMNS)
    flipped = final_state(m, vx, vy, x0, y0, -q, b, t)
    old = df.copy()
    for name, values in flipped.items():
        old[name] = values
    old["trajectory_length"] = flipped["displacement"]
    return old.drop(columns=["displacement"])


@pytest.fixture()
def old_csv(tmp_path, particles) -> Path:
    old = original_lab_frame(particles)
    old["charge"] = old["charge"].astype(int)  # written as -1, 0, 1: kept as that text
    path = tmp_path / "old.csv"
    old.to_csv(path, index=False)
    return path


def test_original_frame_is_recognised_and_nnlab_data_is_not(particles):
    old = original_lab_frame(particles)
    assert original_lab_signs(old) == [
        "no displacement column",
        "trajectory_length holds the displacement |r_final - r_initial|, not |v_initial| * simulation_time",
        "velocities rotate the opposite way for B along +z"]
    assert original_lab_signs(particles) == []
    # each sign on its own
    assert original_lab_signs(particles.drop(columns=["displacement"])) == ["no displacement column"]
    turned = particles.copy()
    for name in ("final_velocity_x", "final_velocity_y", "final_position_x", "final_position_y", "displacement"):
        turned[name] = old[name] if name in old else turned[name]
    assert original_lab_signs(turned) == ["velocities rotate the opposite way for B along +z"]
    neutral = particles.assign(charge=0.0)  # no rotation: nothing to tell apart
    assert original_lab_signs(neutral) == []
    # a negative mass turns the other way too: invalid data, not the original lab's
    assert original_lab_signs(particles.assign(mass=-particles["mass"])) == []


def test_validate_gives_one_message(particles, tmp_path):
    old = original_lab_frame(particles)
    with pytest.raises(DataValidationError) as info:
        validate_particle_data(old)
    assert len(info.value.problems) == 1
    assert "looks like that of the original lab" in str(info.value)
    assert "resimulate_particle_data(df)" in str(info.value)
    path = tmp_path / "x.csv"
    old.to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"x.csv looks like a particle CSV of the original lab") as info:
        prepare_csv(path)  # main.py --data
    assert len(info.value.problems) == 1 and f"`nnlab data resimulate {path} NEW.csv`" in str(info.value)


def test_cli_validate_of_original_csv_exits_2_with_the_message(old_csv):
    proc = nnlab("data", "validate", str(old_csv))
    assert_clean_error(proc, f"error: {old_csv} looks like a particle CSV of the original lab (no displacement "
                             "column; trajectory_length holds the displacement",
                       "velocities rotate the opposite way for B along +z): convert it with "
                       f"`nnlab data resimulate {old_csv} NEW.csv`")
    lines = proc.stderr.strip().splitlines()  # one message: past 120 columns it continues on indented lines
    assert proc.stderr.count("error:") == 1 and all(line.startswith("  ") for line in lines[1:]), proc.stderr


def test_cli_resimulate_converts_and_never_touches_old(old_csv, particles, tmp_path):
    before = sha256(old_csv)
    new = tmp_path / "out" / "new.csv"
    proc = nnlab("data", "resimulate", str(old_csv), str(new))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"resimulated {N} particles from {old_csv} into {new}: "
                                   f"{len(FINAL_COLUMNS)} final columns recomputed, initial columns kept")
    assert sha256(old_csv) == before
    assert nnlab("data", "validate", str(new)).returncode == 0
    converted = load_particle_data(new)
    assert list(converted.columns) == REQUIRED_COLUMNS
    assert validate_particle_data(converted).ok
    np.testing.assert_allclose(converted[FINAL_COLUMNS].to_numpy(), particles[FINAL_COLUMNS].to_numpy(),
                               rtol=1e-12, atol=1e-12)
    # initial columns (and particle_id) byte-equal, including the integer charges
    as_text = {"dtype": str, "keep_default_na": False}
    kept = ["particle_id", *INITIAL_COLUMNS]
    pd.testing.assert_frame_equal(pd.read_csv(new, **as_text)[kept], pd.read_csv(old_csv, **as_text)[kept])
    assert set(pd.read_csv(new, **as_text)["charge"]) <= {"-1", "0", "1"}
    meta = json.loads(Path(f"{new}.meta.json").read_text())
    assert meta["resimulated_from"] == str(old_csv.resolve())
    assert meta["resimulated_from_sha256"] == before
    assert meta["num_rows"] == N

    # an existing NEW is refused, and left as it is
    written = sha256(new)
    assert_clean_error(nnlab("data", "resimulate", str(old_csv), str(new)),
                       f"error: NEW: '{new}' already exists; choose another file or pass --force")
    assert sha256(new) == written
    Path(new).unlink()  # the sidecar alone also blocks
    assert_clean_error(nnlab("data", "resimulate", str(old_csv), str(new)), f"'{new}.meta.json'")
    assert nnlab("data", "resimulate", str(old_csv), str(new), "--force").returncode == 0
    assert sha256(new) == written
    # OLD is never replaced, even with --force
    assert_clean_error(nnlab("data", "resimulate", str(old_csv), str(old_csv), "--force"),
                       "is the file being converted")
    assert sha256(old_csv) == before


def test_cli_resimulate_bad_old_files(tmp_path, particles):
    old = original_lab_frame(particles)
    no_charge = tmp_path / "no_charge.csv"
    old.drop(columns=["charge", "simulation_time"]).to_csv(no_charge, index=False)
    assert_clean_error(nnlab("data", "resimulate", str(no_charge), str(tmp_path / "a.csv")),
                       f"cannot resimulate {no_charge}: missing initial column(s) charge, simulation_time")
    text = old.astype(object)
    text.loc[3, "mass"] = "heavy"
    bad = tmp_path / "text.csv"
    text.to_csv(bad, index=False)
    assert_clean_error(nnlab("data", "resimulate", str(bad), str(tmp_path / "b.csv")),
                       "column 'mass' is not numeric: 1 row(s) (rows 3) hold non-numbers, e.g. 'heavy'")
    zero = tmp_path / "zero.csv"
    old.assign(mass=np.where(np.arange(N) == 5, 0.0, old["mass"])).to_csv(zero, index=False)
    assert_clean_error(nnlab("data", "resimulate", str(zero), str(tmp_path / "c.csv")),
                       "column 'mass': 1 row(s) (rows 5) have mass <= 0")
    assert_clean_error(nnlab("data", "resimulate", str(tmp_path / "missing.csv"), str(tmp_path / "d.csv")),
                       "particle data file not found")
    assert not any((tmp_path / name).exists() for name in ("a.csv", "b.csv", "c.csv", "d.csv"))


def test_resimulate_frame_numbers_rows_and_leaves_out_other_columns(particles):
    old = original_lab_frame(particles).drop(columns=["particle_id"]).assign(note="x")
    new = resimulate_particle_data(old)
    assert list(new.columns) == REQUIRED_COLUMNS
    assert new["particle_id"].tolist() == list(range(N))
    pd.testing.assert_frame_equal(new, particles)
