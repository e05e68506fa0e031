"""``nnlab predict``: a trained run's predictions for raw rows (issue 25), on a particle run and a table run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

from nnlab.config import Config
from nnlab.data import FINAL_COLUMNS, INITIAL_COLUMNS, generate_particle_data
from nnlab.errors import ConfigError, DataValidationError, NnlabError
from nnlab.export import PREDICTED_PREFIX, TrainedRun, predict_csv
import _forked

REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden_layers": [8], "epochs": 2, "batch_size": 32, "seed": 5, "tensorboard": False,
        "checkpoint_every": 5, "jit_compile": False}


def _train(cfg: Config, out: Path, **source) -> Path:
    from nnlab.runs import DataSource, RunSpec, execute

    result = execute(RunSpec(cfg, DataSource.for_config(cfg, **source), output_dir=out, progress=0,
                             announce=False))
    assert result.status == "completed"
    return out


@pytest.fixture(scope="module")
def particle_run(tmp_path_factory) -> Path:
    return _train(Config.from_flat(TINY), tmp_path_factory.mktemp("particles"), num_particles=250)


def make_houses(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"area": rng.uniform(30, 150, n).round(2), "rooms": rng.integers(1, 6, n),
                       "district": rng.choice(["north", "south", "east"], n)})
    df["price"] = 2.0 * df["area"] + 15 * df["rooms"] + df["district"].map({"north": 40.0, "south": -25.0,
                                                                            "east": 0.0})
    df["rent"] = 0.01 * df["price"] - 0.5 * df["rooms"]
    return df


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("table")
    make_houses(250, seed=0).to_csv(root / "houses.csv", index=False)
    cfg = Config.from_flat({**TINY, "data_targets": ["price", "rent"]})
    return _train(cfg, root / "o", csv_path=root / "houses.csv")


@pytest.fixture(scope="module")
def fresh_particles(tmp_path_factory) -> Path:
    """50 particles never trained on, only the initial columns (what a user has before simulating)."""
    path = tmp_path_factory.mktemp("fresh") / "fresh.csv"
    generate_particle_data(50, seed=99)[INITIAL_COLUMNS].to_csv(path, index=False)
    return path


def nnlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return _forked.run([sys.executable, "-m", "nnlab.cli", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


# --- the particle task ------------------------------------------------------------------------------


def test_cli_predicts_fresh_particles_like_the_reference_path(particle_run, fresh_particles, tmp_path):
    proc = nnlab("predict", fresh_particles, "--out", tmp_path / "sub" / "p.csv", "--output-dir", particle_run,
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = TrainedRun.load(particle_run)
    assert flat(proc.stdout) == (f"predicted 50 row(s) with run {run.run_id} (final weights): wrote "
                                 f"{tmp_path / 'sub' / 'p.csv'}")
    assert "Traceback" not in proc.stderr
    out = pd.read_csv(tmp_path / "sub" / "p.csv")
    targets = [PREDICTED_PREFIX + t for t in run.targets]
    assert list(out.columns) == INITIAL_COLUMNS + targets
    assert targets == ["predicted_" + t for t in FINAL_COLUMNS[:6]]
    raw = pd.read_csv(fresh_particles)
    pd.testing.assert_frame_equal(out[INITIAL_COLUMNS], raw)  # the input columns, exactly as read
    expected = run.predict(raw)
    assert expected.shape == (50, 6)
    np.testing.assert_allclose(out[targets].to_numpy(), expected, rtol=1e-6, atol=1e-9)
    assert (out[targets].std() > 0).all()  # one prediction per row, not a constant
    # Physical units: of the order of the simulated final values (the net is 2 epochs old: no accuracy asserted).
    truth = generate_particle_data(50, seed=99)[run.targets].to_numpy()
    assert np.isfinite(expected).all() and np.abs(expected).max() < 100 * np.abs(truth).max()


def test_extra_columns_are_carried_verbatim_and_best_weights_can_be_chosen(particle_run, tmp_path):
    full = generate_particle_data(20, seed=7)
    full.insert(3, "note", ["a, quoted" if i % 2 else "" for i in range(20)])
    full.to_csv(tmp_path / "full.csv", index=False)
    written = predict_csv(tmp_path / "full.csv", tmp_path / "p.csv", output_dir=particle_run, weights="best")
    assert written == tmp_path / "p.csv"
    out = pd.read_csv(written, dtype=str, keep_default_na=False)
    raw = pd.read_csv(tmp_path / "full.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(out[list(raw.columns)], raw)
    best = TrainedRun.load(particle_run, weights="best")
    predicted = out[[PREDICTED_PREFIX + t for t in best.targets]].astype(float).to_numpy()
    np.testing.assert_allclose(predicted, best.predict(full), rtol=1e-6, atol=1e-9)


# --- a table run ------------------------------------------------------------------------------------


def test_table_run_predicts_raw_rows_with_text(table_run, tmp_path):
    rows = make_houses(30, seed=11).drop(columns=["price", "rent"])
    rows.insert(0, "listing", [f"#{i}" for i in range(30)])  # an extra column, carried along
    rows.to_csv(tmp_path / "new.csv", index=False)
    predict_csv(tmp_path / "new.csv", tmp_path / "p.csv", output_dir=table_run)
    out = pd.read_csv(tmp_path / "p.csv")
    assert list(out.columns) == ["listing", "area", "rooms", "district", "predicted_price", "predicted_rent"]
    assert out["district"].tolist() == rows["district"].tolist()
    run = TrainedRun.load(table_run)
    assert run.task == "table" and run.text_inputs == {"district": ["east", "north", "south"]}
    np.testing.assert_allclose(out[["predicted_price", "predicted_rent"]].to_numpy(), run.predict(rows),
                               rtol=1e-6, atol=1e-9)
    assert out["predicted_price"].nunique() == 30


def test_table_refusals_unseen_category_and_missing_value(table_run, tmp_path):
    rows = make_houses(5, seed=2).drop(columns=["price", "rent"])
    rows.loc[1, "district"] = "west"
    rows.to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(DataValidationError, match=r"column 'district' holds 'west', not a category seen in training "
                                                  r"\(known: east, north, south\)"):
        predict_csv(tmp_path / "new.csv", tmp_path / "p.csv", output_dir=table_run)
    (tmp_path / "gap.csv").write_text("area,rooms,district\n50,2,north\n?,3,south\n")
    with pytest.raises(DataValidationError, match=r"column 'area' holds 1 missing"):
        predict_csv(tmp_path / "gap.csv", tmp_path / "p.csv", output_dir=table_run)
    (tmp_path / "lack.csv").write_text("area,district\n50,north\n")
    with pytest.raises(DataValidationError, match=r"missing input column\(s\) \['rooms'\]"):
        predict_csv(tmp_path / "lack.csv", tmp_path / "p.csv", output_dir=table_run)
    assert not (tmp_path / "p.csv").exists()


# --- refusals ---------------------------------------------------------------------------------------


def _write(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def good(tmp_path) -> pd.DataFrame:
    return generate_particle_data(6, seed=3)[INITIAL_COLUMNS]


def test_existing_out_is_refused_without_force_and_replaced_with_it(particle_run, fresh_particles, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("my own results\n")
    proc = nnlab("predict", fresh_particles, "--out", out, "--output-dir", particle_run, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert flat(proc.stderr) == f"error: --out: '{out}' already exists; choose another file or pass --force to replace it"
    assert out.read_text() == "my own results\n"
    predict_csv(fresh_particles, out, output_dir=particle_run, force=True)
    assert len(pd.read_csv(out)) == 50
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]  # no temporary file left


def test_out_that_is_a_directory_pipe_or_the_input_is_never_written(particle_run, fresh_particles, tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="'.*/d' is a directory, not a regular file"):
        predict_csv(fresh_particles, tmp_path / "d", output_dir=particle_run, force=True)
    with pytest.raises(ConfigError, match="names a directory; give a file name"):
        predict_csv(fresh_particles, f"{tmp_path}/d/", output_dir=particle_run)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match="is a named pipe, not a regular file"):
        predict_csv(fresh_particles, tmp_path / "fifo", output_dir=particle_run, force=True)
    with pytest.raises(ConfigError, match="is the input file; write the predictions to another file"):
        predict_csv(fresh_particles, fresh_particles, output_dir=particle_run, force=True)
    (tmp_path / "notes").write_text("x")
    with pytest.raises(ConfigError, match="'.*notes' is not a directory"):
        predict_csv(fresh_particles, tmp_path / "notes" / "p.csv", output_dir=particle_run)


def test_unknown_run_no_runs_and_missing_weights(particle_run, fresh_particles, tmp_path):
    proc = nnlab("predict", fresh_particles, "--out", "p.csv", "--run", "nope", "--output-dir", particle_run,
                 cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert flat(proc.stderr).startswith(f"error: unknown run id 'nope' in '{particle_run / 'runs'}'; available: ")
    with pytest.raises(NnlabError, match="no runs in"):
        predict_csv(fresh_particles, tmp_path / "p.csv", output_dir=tmp_path / "empty")
    run = TrainedRun.load(particle_run)
    copy = tmp_path / "o" / "runs" / run.run_id
    copy.mkdir(parents=True)
    for name in ("training_config.json", "scalers.json"):
        (copy / name).write_bytes((run.run_dir / name).read_bytes())
    with pytest.raises(NnlabError, match=r"has no final weights .*\(the run did not finish: resume it first\)"):
        predict_csv(fresh_particles, tmp_path / "p.csv", output_dir=tmp_path / "o")
    assert not (tmp_path / "p.csv").exists()


def test_input_values_are_checked_like_training_data_all_at_once(particle_run, good, tmp_path):
    bad = good.astype(object)
    bad.loc[1, "mass"] = 0.0
    bad.loc[2, "mass"] = -1.5
    bad.loc[3, "initial_velocity_x"] = "fast"
    bad.loc[4, "charge"] = float("inf")
    bad.loc[0, "initial_position_y"] = 1e200
    bad.loc[5, "simulation_time"] = -1.0
    with pytest.raises(DataValidationError) as caught:
        predict_csv(_write(tmp_path / "bad.csv", bad), tmp_path / "p.csv", output_dir=particle_run)
    assert caught.value.problems == [
        "column 'initial_velocity_x': 1 row(s) (data row 4) hold non-numbers, e.g. 'fast'",
        "column 'initial_position_y': 1 row(s) (data row 1) are out of range (|value| > 1e+150: squares and sums "
        "of such values overflow float64)",
        "column 'charge': 1 row(s) (data row 5) are missing, NaN or infinite",
        "column 'mass': 2 row(s) (data rows 2, 3) have mass <= 0 (a particle's mass must be positive)",
        "column 'simulation_time': 1 row(s) (data row 6) are negative (a simulation time is >= 0)",
    ]
    assert str(caught.value).startswith(f"input file {tmp_path / 'bad.csv'}: 5 problems:\n  column ")
    assert not (tmp_path / "p.csv").exists()


def test_missing_columns_collisions_and_overflowing_features(particle_run, good, tmp_path):
    out = tmp_path / "p.csv"
    with pytest.raises(DataValidationError, match=r"missing input column\(s\) \['charge', 'simulation_time'\]; "
                                                  r"the run's network takes \['mass'"):
        predict_csv(_write(tmp_path / "a.csv", good.drop(columns=["charge", "simulation_time"])), out,
                    output_dir=particle_run)
    with pytest.raises(DataValidationError, match=r"column\(s\) \['predicted_kinetic_energy'\] already exist"):
        predict_csv(_write(tmp_path / "b.csv", good.assign(predicted_kinetic_energy=1.0)), out,
                    output_dir=particle_run)
    (tmp_path / "c.csv").write_text(";".join(INITIAL_COLUMNS) + "\n" + ";".join(["1"] * 8) + "\n")
    with pytest.raises(DataValidationError, match="looks ';'-separated"):
        predict_csv(tmp_path / "c.csv", out, output_dir=particle_run)
    heavy = good.copy()
    heavy.loc[2, ["mass", "initial_velocity_x"]] = [1e-300, 1e100]  # each in range; m·v and |v|·... are not
    with pytest.raises(DataValidationError, match=r"derived feature\(s\) .*: 1 row\(s\) \(data row 3\) overflow"):
        predict_csv(_write(tmp_path / "d.csv", heavy), out, output_dir=particle_run)
    (tmp_path / "e.csv").write_text(",".join(INITIAL_COLUMNS) + "\n")
    with pytest.raises(DataValidationError, match="a header but no data rows"):
        predict_csv(tmp_path / "e.csv", out, output_dir=particle_run)
    (tmp_path / "f.csv").write_text("")
    with pytest.raises(DataValidationError, match=r"input file .*f.csv is empty \(0 bytes\)"):
        predict_csv(tmp_path / "f.csv", out, output_dir=particle_run)
    assert not out.exists()


def test_refusals_come_before_tensorflow_is_loaded(particle_run, good, tmp_path):
    """A refused prediction never pays for TensorFlow: the run, the files and the values are checked first."""
    bad = good.copy()
    bad.loc[0, "mass"] = -1.0
    _write(tmp_path / "bad.csv", bad)
    script = ("import sys\nfrom nnlab.export import predict_csv\nfrom nnlab.errors import NnlabError\n"
              f"try:\n    predict_csv('bad.csv', 'p.csv', output_dir={str(particle_run)!r})\n"
              "except NnlabError as exc:\n    print(type(exc).__name__, 'tensorflow' in sys.modules, 'keras' in "
              "sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "DataValidationError False False", proc.stderr
