"""Particle data: nothing lost, nothing overwritten, no traceback, no hang.

Regression tests for the data side of the issue "Nothing lost, nothing overwritten,
no traceback": the provenance sidecar is never replaced silently, output places
are checked before simulating, derived-feature columns are never trusted, values
that overflow fail validation (and training the same way), repeated header names
and ';'/tab separators are named, and pipes/devices/directories are refused
without being opened. CLI cases run as subprocesses and check that no file
changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

import nnlab.data
from nnlab.cli import main as cli_main
from nnlab.data import (
    DERIVED_FEATURES,
    REQUIRED_COLUMNS,
    add_derived_features,
    check_data_file,
    check_output_file,
    generate_particle_data,
    load_particle_data,
    prepare_csv,
    preprocess_for_training,
    validate_particle_data,
)
from nnlab.errors import ConfigError, DataValidationError
import _forked

REPO = Path(__file__).resolve().parents[1]
# One consistent particle (m=1, q=1, B=1, t=1, v0=(1, 0) at the origin): it turns by one radian.
GOOD = {"particle_id": 0, "mass": 1.0, "initial_velocity_x": 1.0, "initial_velocity_y": 0.0,
        "initial_position_x": 0.0, "initial_position_y": 0.0, "charge": 1.0,
        "magnetic_field_strength": 1.0, "simulation_time": 1.0,
        "final_velocity_x": 0.5403023058681398, "final_velocity_y": -0.8414709848078965,
        "final_position_x": 0.8414709848078965, "final_position_y": -0.45969769413186023,
        "kinetic_energy": 0.5, "displacement": 0.958851077208406, "trajectory_length": 1.0}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``nnlab ARGS`` (or ``main.py`` when args[0] == 'main.py'); a hang fails, not blocks."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    argv = ([sys.executable, str(REPO / "main.py"), *args[1:]] if args[0] == "main.py"
            else [sys.executable, "-m", "nnlab.cli", *args])
    return _forked.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content digest (or kind)."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            state[str(path)] = "link"
        elif path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[str(path)] = "dir" if path.is_dir() else "special"
    return state


def refused(args: list[str], cwd: Path, *fragments: str) -> str:
    """Assert the command exits 2 with a one-line-style error, no traceback, no file changed."""
    before = snapshot(cwd)
    proc = run(args, cwd)
    assert proc.returncode == 2, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "error: " in proc.stderr, proc.stderr  # main.py: TensorFlow may log lines first
    for fragment in fragments:
        assert shows(proc.stderr, fragment), (fragment, proc.stderr)
    assert snapshot(cwd) == before, args
    return proc.stderr


def particle_csv(path: Path, rows: list[dict], header: str | None = None) -> Path:
    frame = pd.DataFrame(rows, columns=REQUIRED_COLUMNS)
    text = frame.to_csv(index=False)
    if header is not None:
        text = header + "\n" + text.split("\n", 1)[1]
    path.write_text(text)
    return path


@pytest.fixture
def good_csv(tmp_path) -> Path:
    path = tmp_path / "good.csv"
    generate_particle_data(60, seed=3).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- 1. the sidecar


def test_check_output_file_refuses_existing_sidecar_without_the_csv(tmp_path):
    out = tmp_path / "new.csv"
    (tmp_path / "new.csv.meta.json").write_text("{}")
    with pytest.raises(ConfigError) as info:
        check_output_file(out, option="--out")
    assert str(info.value) == (f"--out: '{out}.meta.json' (the metadata sidecar of '{out}') already exists; "
                               "choose another file or pass --force to replace it")
    check_output_file(out, force=True, option="--out")  # --force allows it


def test_generate_refuses_existing_sidecar_and_force_replaces_both(tmp_path):
    sidecar = tmp_path / "p.csv.meta.json"
    sidecar.write_text('{"precious": true}')
    refused(["data", "generate", "--num-particles", "5", "--out", "p.csv"], tmp_path,
            "--out: 'p.csv.meta.json' (the metadata sidecar of 'p.csv') already exists", "--force")
    assert not (tmp_path / "p.csv").exists()
    proc = run(["data", "generate", "--num-particles", "5", "--out", "p.csv", "--force"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 5 and '"num_rows": 5' in sidecar.read_text()


def test_drop_invalid_refuses_existing_clean_file_or_sidecar(good_csv, tmp_path):
    (tmp_path / "clean.csv.meta.json").write_text("{}")
    refused(["data", "validate", "good.csv", "--drop-invalid", "clean.csv"], tmp_path,
            "--drop-invalid: 'clean.csv.meta.json' (the metadata sidecar of 'clean.csv') already exists")
    (tmp_path / "other.csv").write_text("precious")
    refused(["data", "validate", "good.csv", "--drop-invalid", "other.csv"], tmp_path,
            "--drop-invalid: 'other.csv' already exists; choose another file or pass --force")
    proc = run(["data", "validate", "good.csv", "--drop-invalid", "other.csv", "--force"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "other.csv")) == 60
    refused(["data", "validate", "good.csv", "--force"], tmp_path, "--force only applies with --drop-invalid")


# --------------------------------------------------------------------------- 2. where --out goes


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can create files in: a read-only tmpfs for root, chmod otherwise."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        yield path
        path.chmod(0o700)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("root without permission to mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("out, fragments", [
    ("blocker/x.csv", ["--out: cannot write 'blocker/x.csv': 'blocker' is not a directory"]),
    ("blocker/deeper/x.csv", ["--out: cannot write 'blocker/deeper/x.csv': 'blocker' is not a directory"]),
    ("/proc/nnlab_particles.csv", ["--out: cannot write '/proc/nnlab_particles.csv': cannot create files in "
                                   "'/proc'"]),
    ("/proc/no_such_dir/x.csv", ["--out: cannot write '/proc/no_such_dir/x.csv': cannot create files in '/proc'"]),
    ("adir", ["--out: 'adir' is a directory, not a regular file"]),
    ("adir/", ["--out: 'adir/' names a directory; give a file name (e.g. adir/particles.csv)"]),
    ("pipe", ["--out: 'pipe' is a named pipe, not a regular file"]),
])
def test_generate_refuses_unwritable_places(tmp_path, out, fragments):
    (tmp_path / "blocker").write_text("a file, not a directory")
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "pipe")
    refused(["data", "generate", "--num-particles", "5", "--out", out, "--force"], tmp_path, *fragments)


def test_generate_refuses_read_only_place(read_only_dir, tmp_path):
    out = read_only_dir / "sub" / "x.csv"
    refused(["data", "generate", "--num-particles", "5", "--out", str(out)], tmp_path,
            f"--out: cannot write '{out}': cannot create files in '{read_only_dir}'")


def test_generate_checks_the_place_before_simulating(tmp_path, monkeypatch, capsys):
    (tmp_path / "blocker").write_text("x")
    calls = []
    monkeypatch.setattr(nnlab.data, "generate_particle_data", lambda *a, **k: calls.append(a))
    status = cli_main(["data", "generate", "--num-particles", "5", "--out", str(tmp_path / "blocker" / "x.csv")])
    assert status == 2 and calls == []
    assert "is not a directory" in capsys.readouterr().err


def test_generate_creates_missing_parent_directories(tmp_path):
    # The documented policy: missing parents are created (after the checks pass).
    proc = run(["data", "generate", "--num-particles", "4", "--out", "new/sub/p.csv"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "new/sub/p.csv")) == 4
    assert (tmp_path / "new/sub/p.csv.meta.json").is_file()


def test_check_output_file_probe_leaves_nothing(tmp_path):
    check_output_file(tmp_path / "missing" / "dirs" / "p.csv")
    assert list(tmp_path.iterdir()) == []


def test_pipeline_cache_in_unwritable_place_fails_before_generating(tmp_path):
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(ConfigError, match="'.*blocker' is not a directory"):
        nnlab.data.complete_data_pipeline(tmp_path / "blocker" / "cache.csv", num_particles=50, seed=0)


# --------------------------------------------------------------------------- 3. derived features


def test_poisoned_derived_columns_are_recomputed_with_a_warning(tmp_path):
    clean = generate_particle_data(200, seed=9)
    poisoned = add_derived_features(clean)
    poisoned["cyclotron_frequency"] = 1e6
    poisoned["initial_speed"] = -3.0
    poisoned["sin_cyclotron_phase"] = np.nan  # would even fail the finiteness check if trusted
    clean_path, poisoned_path = tmp_path / "clean.csv", tmp_path / "poisoned.csv"
    clean.to_csv(clean_path, index=False)
    poisoned.to_csv(poisoned_path, index=False)

    expected = prepare_csv(clean_path)
    with pytest.warns(UserWarning) as record:
        got = prepare_csv(poisoned_path)
    message = str(record[0].message)
    assert str(poisoned_path) in message and "ignored and recomputed" in message
    for name in DERIVED_FEATURES:
        assert name in message
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert got.feature_names == expected.feature_names


def test_no_warning_without_derived_columns(recwarn):
    preprocess_for_training(generate_particle_data(50, seed=1))
    assert not [w for w in recwarn if "derived-feature" in str(w.message)]


def test_derived_warning_is_visible_on_the_command_line(tmp_path):
    frame = add_derived_features(generate_particle_data(60, seed=2)).assign(time_squared=0.0)
    frame.to_csv(tmp_path / "d.csv", index=False)
    code = ("import warnings, nnlab.data as d; d.prepare_csv('d.csv')")
    proc = _forked.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "UserWarning" in proc.stderr and "time_squared" in proc.stderr


# --------------------------------------------------------------------------- 4. overflow


def test_inf_computed_kinetic_energy_is_a_problem_not_a_pass():
    # m = 1e140 (in range), |v| = 1e100: m|v|^2/2 = inf, the column holds a finite value.
    row = dict(GOOD, mass=1e140, initial_velocity_x=1e100, final_velocity_x=1e100, final_velocity_y=0.0,
               kinetic_energy=1e140, trajectory_length=1e100)
    with pytest.raises(DataValidationError) as info:
        validate_particle_data(pd.DataFrame([row, GOOD]))
    assert ("column 'kinetic_energy': 1 row(s) (rows 0) overflow: mass * |v_final|^2 / 2 is out of the "
            "float64 range") in info.value.problems
    # drop_invalid removes exactly that row.
    report = validate_particle_data(pd.DataFrame([row, GOOD]), drop_invalid=True)
    assert report.n_dropped >= 1 and list(report.data["mass"]) == [1.0]


def test_huge_mass_is_out_of_range_and_its_energy_overflows():
    row = dict(GOOD, mass=1e308, final_velocity_x=2.0, final_velocity_y=0.0, initial_velocity_x=2.0,
               kinetic_energy=1e308, trajectory_length=2.0)
    with pytest.raises(DataValidationError) as info:
        validate_particle_data(pd.DataFrame([row]))
    problems = info.value.problems
    assert any(p.startswith("column 'mass': 1 row(s) (rows 0) are out of range (|value| > 1e+150") for p in problems)
    assert any(p.startswith("column 'kinetic_energy': 1 row(s) (rows 0) overflow") for p in problems)


def test_velocities_whose_square_overflows():
    row = dict(GOOD, initial_velocity_x=1e200, final_velocity_x=1e200, final_velocity_y=0.0,
               kinetic_energy=1e300, trajectory_length=1e200)
    with pytest.raises(DataValidationError) as info:
        validate_particle_data(pd.DataFrame([row]))
    text = str(info.value)
    assert "column 'initial_velocity_x': 1 row(s) (rows 0) are out of range" in text
    assert ("columns 'final_velocity_x', 'final_velocity_y': 1 row(s) (rows 0) overflow: the speed |v_final| "
            "or |v_initial| is out of the float64 range") in text
    assert "column 'kinetic_energy': 1 row(s) (rows 0) overflow" in text


def test_derived_feature_overflow_fails_validation():
    # A tiny positive mass: every column is in range but w = qB/m overflows.
    row = dict(GOOD, mass=1e-300, kinetic_energy=0.5e-300, charge=1.0, magnetic_field_strength=1e10,
               simulation_time=0.0, final_velocity_x=1.0, final_velocity_y=0.0, final_position_x=0.0,
               final_position_y=0.0, displacement=0.0, trajectory_length=0.0)
    with pytest.raises(DataValidationError) as info:
        validate_particle_data(pd.DataFrame([row, GOOD]))
    [problem] = [p for p in info.value.problems if p.startswith("derived feature(s)")]
    assert "cyclotron_frequency" in problem and "rows 0)" in problem and "overflow" in problem


def test_preprocess_refuses_values_too_large_to_standardise():
    df = generate_particle_data(50, seed=0)
    df["kinetic_energy"] = df["kinetic_energy"] * 1e200  # not validated: the last guard catches it
    with pytest.raises(DataValidationError, match=r"'kinetic_energy'.*too large to standardise"):
        preprocess_for_training(df, targets=["kinetic_energy"])


def test_validate_and_train_refuse_an_overflowing_csv_the_same_way(tmp_path):
    row = dict(GOOD, mass=1e140, initial_velocity_x=1e100, final_velocity_x=1e100, final_velocity_y=0.0,
               kinetic_energy=1e140, trajectory_length=1e100)
    particle_csv(tmp_path / "f.csv", [row] + [dict(GOOD, particle_id=i) for i in range(1, 20)])
    line = ("column 'kinetic_energy': 1 row(s) (rows 0) overflow: mass * |v_final|^2 / 2 is out of the "
            "float64 range")
    refused(["data", "validate", "f.csv"], tmp_path, "f.csv is invalid", line)
    refused(["main.py", "--data", "f.csv", "--epochs", "1", "--output-dir", "o"], tmp_path, "f.csv", line)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 5. repeated header names


def test_repeated_header_name_is_an_error_naming_it(tmp_path):
    header = ",".join(REQUIRED_COLUMNS[:-1] + ["mass"])  # trajectory_length replaced by a second mass
    path = particle_csv(tmp_path / "dup.csv", [GOOD], header=header)
    with pytest.raises(DataValidationError) as info:
        load_particle_data(path)
    assert str(info.value) == (f"particle data file {path}: column name(s) repeated in the header: "
                               "'mass' (columns 2, 16); every column name must be unique")
    refused(["data", "validate", "dup.csv"], tmp_path, "'mass' (columns 2, 16)")


def test_a_literal_dotted_name_is_not_a_duplicate(tmp_path):
    path = tmp_path / "dots.csv"
    path.write_text("mass,mass.1\n1,2\n")
    assert list(load_particle_data(path).columns) == ["mass", "mass.1"]


# --------------------------------------------------------------------------- 6. separators


@pytest.mark.parametrize("sep, label", [(";", "';'"), ("\t", "tab")])
def test_other_separator_gets_a_hint(tmp_path, sep, label):
    path = tmp_path / "sep.csv"
    values = [str(GOOD[c]) for c in REQUIRED_COLUMNS]
    path.write_text(sep.join(REQUIRED_COLUMNS) + "\n" + sep.join(values) + "\n")
    with pytest.raises(DataValidationError) as info:
        load_particle_data(path)
    assert str(info.value).startswith(f"particle data file {path} looks {label}-separated")
    assert "nnlab reads comma-separated CSV" in str(info.value)
    refused(["data", "validate", "sep.csv"], tmp_path, f"looks {label}-separated", "nnlab reads comma-separated CSV")


def test_semicolon_file_with_decimal_commas_gets_the_hint_not_a_parser_error(tmp_path):
    path = tmp_path / "eu.csv"
    path.write_text(";".join(REQUIRED_COLUMNS) + "\n" + ";".join(["1,5"] * len(REQUIRED_COLUMNS)) + "\n")
    with pytest.raises(DataValidationError, match="looks ';'-separated"):
        load_particle_data(path)


def test_dataframe_with_joined_columns_gets_the_hint():
    df = pd.DataFrame({";".join(REQUIRED_COLUMNS): ["x"]})
    with pytest.raises(DataValidationError) as info:
        validate_particle_data(df)
    assert "missing required column(s): particle_id" in str(info.value)
    assert "the header looks ';'-separated" in str(info.value)


# --------------------------------------------------------------------------- 7. pipes, devices, directories


@pytest.mark.parametrize("name, kind", [("pipe", "a named pipe"), ("adir", "a directory"),
                                        ("/dev/zero", "a character device"), ("/dev/null", "a character device"),
                                        ("link", "a named pipe")])
def test_check_data_file_names_what_it_is(tmp_path, name, kind):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "adir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "pipe")
    path = name if name.startswith("/") else tmp_path / name
    with pytest.raises(DataValidationError) as info:
        check_data_file(path, option="--data")
    assert str(info.value) == f"--data: particle data file {path} is {kind}, not a regular file"
    with pytest.raises(DataValidationError, match=f"is {kind}, not a regular file"):
        load_particle_data(path)  # never opened: no hang


def test_check_data_file_missing_keeps_the_hint(tmp_path):
    with pytest.raises(DataValidationError) as info:
        check_data_file(tmp_path / "nope.csv", option="--data", hint=" (create one)")
    assert str(info.value) == f"--data: particle data file not found: {tmp_path / 'nope.csv'} (create one)"


@pytest.mark.parametrize("args, fragment", [
    (["data", "validate", "pipe"], "particle data file pipe is a named pipe, not a regular file"),
    (["data", "validate", "/dev/zero"], "particle data file /dev/zero is a character device, not a regular file"),
    (["data", "validate", "adir"], "particle data file adir is a directory, not a regular file"),
    (["data", "validate", "good.csv", "--drop-invalid", "pipe"], "--drop-invalid: 'pipe' is a named pipe, not a "
                                                                  "regular file"),
    (["data", "validate", "good.csv", "--drop-invalid", "adir"], "--drop-invalid: 'adir' is a directory"),
    (["main.py", "--data", "pipe", "--output-dir", "o"], "--data: particle data file pipe is a named pipe, "
                                                         "not a regular file"),
    (["main.py", "--data", "/dev/null", "--output-dir", "o"], "--data: particle data file /dev/null is a "
                                                              "character device"),
])
def test_cli_refuses_pipes_devices_and_directories(good_csv, tmp_path, args, fragment):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "adir").mkdir()
    refused(args, tmp_path, fragment)


def test_a_csv_whose_sidecar_cannot_be_written_is_taken_back(tmp_path, monkeypatch):
    import errno

    from nnlab.data import _io

    real = _io.atomic_write

    def sidecar_fails(path, write, **kwargs):
        if str(path).endswith(".meta.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write, **kwargs)

    monkeypatch.setattr(_io, "atomic_write", sidecar_fails)
    with pytest.raises(OSError, match="No space left"):
        _io.save_particle_data(nnlab.data.generate_particle_data(5, seed=1), tmp_path / "p.csv", metadata={"seed": 1})
    # Without its sidecar the CSV would later pass for the user's own data.
    assert list(tmp_path.iterdir()) == []
