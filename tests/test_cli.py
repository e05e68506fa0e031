"""The `nnlab` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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
        assert fragment in proc.stderr, (fragment, proc.stderr)


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
