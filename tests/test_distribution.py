"""distribution = "mirrored": one run over several devices (2 logical CPU devices here), same results."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import _forked

REPO = Path(__file__).resolve().parents[1]
RUN = ["--num-particles", "400", "--epochs", "3", "--seed", "3", "--quiet", "--set", "hidden_layers=[16]",
       "--set", "checkpoint_every=1", "--set", "constraint_interval=1", "--set", "steps_per_execution=1",
       "--set", "jit_compile=false", "--set", "tensorboard=false"]


def train(out: Path, *extra: str) -> tuple[Path, str]:
    # A fresh process: logical CPU devices can only be made before TensorFlow starts its runtime.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = _forked.run([sys.executable, str(REPO / "main.py"), *RUN, "--output-dir", str(out), *extra],
                       capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return next((out / "runs").iterdir()), proc.stderr


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    return train(tmp_path_factory.mktemp("single") / "o")[0]


def test_mirrored_over_two_cpu_devices_matches_one_device(tmp_path, single_device):
    mirrored, stderr = train(tmp_path / "o", "--set", "distribution=mirrored", "--set", "distribution_devices=2")
    assert "Traceback" not in stderr
    one, two = (pd.read_csv(d / "training_results.csv") for d in (single_device, mirrored))
    assert len(two) == 3
    # The same seed, the global batch split over two replicas, gradients all-reduced: the same training.
    for column in ("train_loss", "val_loss", "r2_score", "mse_weight"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-4, atol=1e-6, err_msg=column)
    # The constraint chain ran every epoch on the mirrored weights; checkpoints were written from them.
    assert (two["constraint/applied"] == 1).all()
    assert len(list((mirrored / "checkpoints").glob("ckpt_*.json"))) == 3
    r2 = [json.loads((d / "test_metrics.json").read_text())["scaled"]["r2"] for d in (single_device, mirrored)]
    assert r2[1] == pytest.approx(r2[0], abs=1e-4)
    saved = json.loads((mirrored / "training_config.json").read_text())["config"]
    assert saved["distribution"] == "mirrored" and saved["distribution_devices"] == 2


def test_mirrored_warns_that_it_runs_one_step_per_call(tmp_path):
    from nnlab.config import load_config

    with pytest.warns(UserWarning, match="distribution = 'mirrored' trains with steps_per_execution = 1"):
        load_config(str(REPO / "ml_config"), overrides={"distribution": "mirrored"})
