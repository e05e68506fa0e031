"""The `nnlab` command line and `main.py`, each run as a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from console_text import flat, shows  # noqa: F401 - wrapped console lines

import _forked

REPO = Path(__file__).resolve().parents[1]


def nnlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "nnlab.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=120,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert shows(proc.stderr, fragment), (fragment, proc.stderr)


@pytest.fixture(scope="module")
def good_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "particles.csv"
    proc = nnlab("data", "generate", "--num-particles", "300", "--out", str(out), "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    return out


def test_generate_writes_csv_and_sidecar(good_csv):
    df = pd.read_csv(good_csv)
    assert len(df) == 300
    meta = json.loads(Path(str(good_csv) + ".meta.json").read_text())
    assert meta["num_particles"] == 300 and meta["seed"] == 7
    assert meta["generation_config"]["mass_range"] == [0.1, 10.0]


def test_generate_refuses_to_overwrite(good_csv):
    before = good_csv.read_bytes()
    proc = nnlab("data", "generate", "--num-particles", "10", "--out", str(good_csv))
    assert_clean_error(proc, str(good_csv), "already exists", "--force")
    assert good_csv.read_bytes() == before


def test_generate_force_overwrites(tmp_path):
    out = tmp_path / "p.csv"
    assert nnlab("data", "generate", "--num-particles", "5", "--out", str(out)).returncode == 0
    proc = nnlab("data", "generate", "--num-particles", "8", "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(out)) == 8


def test_generate_uses_config_and_overrides(tmp_path):
    out = tmp_path / "p.csv"
    proc = nnlab("data", "generate", "--out", str(out), "--set", "num_particles_default=25",
                 "--set", "charge_values=[-2, 2]")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    assert len(df) == 25 and set(df["charge"]) <= {-2.0, 2.0}


def test_validate_good_file(good_csv):
    proc = nnlab("data", "validate", str(good_csv))
    assert proc.returncode == 0, proc.stderr
    assert str(good_csv) in proc.stdout


def test_validate_bad_file_names_column_and_rows(good_csv, tmp_path):
    df = pd.read_csv(good_csv)
    df.loc[[3, 9], "mass"] = -1.0
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    proc = nnlab("data", "validate", str(bad))
    assert_clean_error(proc, "mass", "3", "9")


def test_validate_missing_column(good_csv, tmp_path):
    bad = tmp_path / "nocol.csv"
    pd.read_csv(good_csv).drop(columns=["charge"]).to_csv(bad, index=False)
    assert_clean_error(nnlab("data", "validate", str(bad)), "charge")


def test_validate_missing_file(tmp_path):
    missing = tmp_path / "nope.csv"
    assert_clean_error(nnlab("data", "validate", str(missing)), str(missing))


def test_validate_drop_invalid_writes_clean_file(good_csv, tmp_path):
    df = pd.read_csv(good_csv)
    df.loc[[0, 1], "simulation_time"] = -5.0
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    clean = tmp_path / "clean.csv"
    proc = nnlab("data", "validate", str(bad), "--drop-invalid", str(clean))
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(clean)) == len(df) - 2
    assert "simulation_time" in proc.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["config", "show", "--set", "dropout_rate=1.5"], ["dropout_rate", "1.5", "less than 1"]),
        (["config", "show", "--set", "learing_rate=0.1"], ["learing_rate", "did you mean 'learning_rate'"]),
        (["config", "show", "--set", "activation=sigmoidal"], ["activation", "sigmoidal", "'relu'"]),
        (["config", "show", "--set", "epochs"], ["KEY=VALUE", "epochs"]),
        (["config", "show", "--preset", "turbo"], ["unknown preset 'turbo'", "baseline"]),
        (["data", "generate", "--num-particles", "0", "--out", "x.csv"], ["--num-particles", "positive integer"]),
        (["data", "generate", "--num-particles", "many", "--out", "x.csv"], ["--num-particles", "'many'"]),
        (["data", "frobnicate"], ["invalid choice", "frobnicate"]),
        (["config", "show", "--config-dir", "no/such/dir"], ["no/such/dir", "does not exist"]),
    ],
)
def test_bad_arguments_exit_2_without_traceback(args, fragments, tmp_path):
    assert_clean_error(nnlab(*args, cwd=REPO), *fragments)
    assert not (REPO / "x.csv").exists()


def test_bad_config_file_names_file(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "model_config.json").write_text('{"max_binary_digits": 30}')
    out = tmp_path / "p.csv"
    proc = nnlab("data", "generate", "--out", str(out), "--config-dir", str(cfg))
    assert_clean_error(proc, "model_config.json", "max_binary_digits = 30", "less than or equal to 24")
    assert not out.exists()


def test_config_show_and_presets():
    proc = nnlab("config", "show", "--preset", "fast_debug", "--set", "epochs=3")
    assert proc.returncode == 0, proc.stderr
    flat = json.loads(proc.stdout)
    assert flat["hidden_layers"] == [64, 32] and flat["epochs"] == 3
    proc = nnlab("config", "presets")
    assert proc.stdout.split() == ["baseline", "deep_regularized", "fast_debug"]


# --- python main.py / nnlab train ----------------------------------------------------

TINY = ["--num-particles", "200", "--epochs", "2", "--set", "hidden_layers=[16]", "--set", "checkpoint_every=1"]


def main_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Trainings: a forked child of the runner that imported TensorFlow once (tests/_forked.py); the
    # `nnlab` commands above start from a fresh interpreter.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return _forked.run([sys.executable, str(REPO / "main.py"), *args], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def two_seeded_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("main")
    procs = [main_py(*TINY, "--seed", "5", "--quiet", "--output-dir", str(out / "o"), cwd=out) for _ in range(2)]
    return out / "o", procs


def test_main_py_runs_and_prints_summary(two_seeded_runs):
    out, procs = two_seeded_runs
    for proc in procs:
        assert proc.returncode == 0, proc.stderr
        assert "completed" in proc.stdout and "test MSE / MAE / R²" in proc.stdout
        assert "Traceback" not in proc.stderr
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert str(run) in procs[0].stdout + procs[1].stdout
        df = pd.read_csv(run / "training_results.csv")
        assert list(df["epoch"]) == [1, 2]
        assert len(pd.read_csv(run / "loss_history.csv")) == 2
        assert (run / "weights" / "final.weights.h5").is_file()
        source = json.loads((run / "training_config.json").read_text())["data"]
        assert source["num_particles"] == 200 and source["seed"] == 5 and source["n_rows"] == 200
    log = pd.read_csv(out / "configuration_log.csv")
    assert len(log) == 2 and set(log["status"]) == {"completed"}


def test_same_seed_gives_identical_metrics(two_seeded_runs):
    out, _ = two_seeded_runs
    metrics = [json.loads((run / "test_metrics.json").read_text())["scaled"] for run in sorted((out / "runs").iterdir())]
    assert metrics[0] == metrics[1]


def test_main_py_trains_on_a_csv(tmp_path, good_csv):
    before = good_csv.read_bytes()
    proc = main_py("--data", str(good_csv), "--epochs", "1", "--set", "hidden_layers=[8]", "--set", "jit_compile=false",
                   "--quiet", "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "192 train" not in proc.stdout  # quiet: no data line
    cfg = json.loads(next((tmp_path / "o" / "runs").iterdir()).joinpath("training_config.json").read_text())
    assert cfg["config"]["hidden_layers"] == [8]
    assert cfg["data"]["csv_path"] == str(good_csv.resolve()) and cfg["data"]["n_rows"] == 300
    assert good_csv.read_bytes() == before  # trained on as found, never regenerated


def test_main_py_never_rewrites_a_cached_csv(tmp_path):
    # A CSV cached by complete_data_pipeline for other settings is still trained on as is.
    from nnlab.data import complete_data_pipeline

    cached = tmp_path / "cache.csv"
    complete_data_pipeline(cached, num_particles=150, seed=1)
    before = cached.read_bytes()
    proc = main_py("--data", str(cached), "--epochs", "1", "--set", "hidden_layers=[8]", "--set", "jit_compile=false",
                   "--quiet", "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert cached.read_bytes() == before


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--epochs", "0"], ["--epochs", "positive integer"]),
        (["--set", "dropout_rate=2"], ["dropout_rate = 2", "less than 1"]),
        (["--set", "optimiser=adam"], ["unknown key 'optimiser'", "did you mean 'optimizer'"]),
        (["--preset", "nope"], ["unknown preset 'nope'"]),
        (["--data", "missing.csv"], ["--data", "missing.csv", "not found"]),
        (["--config", "missing.json"], ["missing.json", "file not found"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_main_py_bad_options(args, fragments, tmp_path):
    proc = main_py(*args, "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert_clean_error(proc, *fragments)
    assert not (tmp_path / "o" / "runs").exists() or not any((tmp_path / "o" / "runs").iterdir())


def test_main_py_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = main_py(*TINY, "--output-dir", str(blocker / "out"), cwd=tmp_path)
    assert_clean_error(proc, str(blocker / "out"), "cannot be written")


def test_main_py_config_file(tmp_path):
    cfg = tmp_path / "best_config.json"
    cfg.write_text(json.dumps({"hidden_layers": [12], "loss_weighting_strategy": "fixed"}))
    proc = main_py("--num-particles", "200", "--epochs", "1", "--config", str(cfg), "--set", "mse_weight=0.8",
                   "--set", "jit_compile=false", "--quiet", "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = next((tmp_path / "o" / "runs").iterdir())
    saved = json.loads((run / "training_config.json").read_text())["config"]
    # the file beats ml_config/, --set beats the file
    assert saved["hidden_layers"] == [12] and saved["loss_weighting_strategy"] == "fixed"
    assert saved["mse_weight"] == 0.8
