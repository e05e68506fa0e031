"""The analysis' James-Stein section runs its variants as a real ``compare`` study inside the analysis folder."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import _forked

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("binary_constraints", "james_stein", "no_constraints")


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return env


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> SHA-256 of its content."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny real run (200 particles, 2 epochs); returns the training output root."""
    root = tmp_path_factory.mktemp("js_study")
    out = root / "training_output"
    proc = _forked.run([sys.executable, str(REPO / "main.py"), "--num-particles", "200", "--epochs", "2",
                        "--set", "hidden_layers=[8]", "--set", "jit_compile=false", "--quiet",
                        "--output-dir", str(out)], cwd=root, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_section_runs_are_study_runs_inside_the_analysis_folder(tiny_run, monkeypatch):
    from nnlab.analysis import ExperimentAnalysis
    from nnlab.analysis.james_stein import STUDY_DIR_NAME

    root = tiny_run.parent
    monkeypatch.chdir(root)  # a stray relative write would land here, and be seen
    analysis_dir = root / "analysis_out"
    before = _snapshot(root)
    lines: list[str] = []
    analysis = ExperimentAnalysis(tiny_run, analysis_dir=analysis_dir, js_seeds=2, js_epochs=2, js_workers=1,
                                  progress=lines.append)
    result = analysis.run_section("james_stein")
    assert result.status == "done", result.reason

    # Nothing outside the analysis folder was written or changed.
    after = _snapshot(root)
    outside = {p for p in set(before) | set(after) if not (root / p).is_relative_to(analysis_dir)
               and before.get(p) != after.get(p)}
    assert outside == set()

    study_dir = analysis_dir / STUDY_DIR_NAME
    summary = result.summary
    assert summary["study_dir"] == str(study_dir.resolve())
    assert summary["runs_csv"] == str(study_dir.resolve() / "compare_runs.csv")
    assert summary["workers"] == 1 and summary["seeds"] == [42, 43] and summary["seeds_left_out"] == []
    runs = pd.read_csv(summary["runs_csv"])
    assert sorted(zip(runs["variant"], runs["seed"])) == sorted((v, s) for v in VARIANTS for s in (42, 43))
    assert (runs["status"] == "completed").all()
    for row in runs.itertuples():
        run_dir = Path(row.run_dir)
        assert run_dir.is_relative_to(study_dir.resolve() / "runs") and (run_dir / "weights" / "final.weights.h5").is_file()
        # The run trained the variant's configuration on top of the analysed run's own configuration.
        config = json.loads((run_dir / "training_config.json").read_text())["config"]
        assert config["seed"] == row.seed and config["epochs"] == 2 and config["hidden_layers"] == [8]
        assert config["enable_james_stein"] is (row.variant == "james_stein")
        assert config["jit_compile"] is False and config["checkpoint_every"] == 2
        # The section's numbers are the runs' own: the curve is their training_results.csv.
        record_index = [42, 43].index(row.seed)
        best = summary["variants"][row.variant]["best_loss_per_seed"][record_index]
        assert best == pytest.approx(pd.read_csv(run_dir / "training_results.csv")["val_mse"].min())
        assert summary["variants"][row.variant]["test_r2_per_seed"][record_index] == pytest.approx(row.test_r2)
    # The runs trained on the analysed run's particles, written into the study folder.
    regenerated = analysis.data().source
    assert summary["data"] == str(study_dir.resolve() / "particles.csv")
    assert len(pd.read_csv(summary["data"])) == regenerated["num_particles"] == 200
    assert any("study compare" in line for line in lines)  # the study's own lines went through `progress`
    assert any(f"nnlab analyze --study {study_dir.resolve()}" in note for note in result.notes)

    # A second analysis into the same folder gets a study directory of its own; the first one is untouched.
    from nnlab.analysis.james_stein import _new_study_dir

    first = _snapshot(study_dir)
    assert _new_study_dir(analysis_dir) == analysis_dir / f"{STUDY_DIR_NAME}_2"
    assert _new_study_dir(analysis_dir) == analysis_dir / f"{STUDY_DIR_NAME}_3"
    assert _snapshot(study_dir) == first


def test_a_data_file_with_its_recorded_digest_is_used_as_found(tmp_path):
    from nnlab.analysis import ExperimentAnalysis
    from nnlab.data import generate_particle_data, save_particle_data

    data = save_particle_data(generate_particle_data(150, seed=3), tmp_path / "p.csv")
    out = tmp_path / "training_output"
    proc = _forked.run([sys.executable, str(REPO / "main.py"), "--data", str(data), "--epochs", "2",
                        "--set", "hidden_layers=[8]", "--set", "jit_compile=false", "--quiet",
                        "--output-dir", str(out)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    analysis = ExperimentAnalysis(out, analysis_dir=tmp_path / "a", js_seeds=1, js_epochs=2, js_workers=1)
    particles, metadata = analysis._run_particles()
    assert particles == data.resolve() and metadata is None
    # Changed since the run: its content is no longer what the run recorded, so a copy of it is used.
    data.write_text(data.read_text() + "\n")
    particles, metadata = analysis._run_particles()
    assert isinstance(particles, pd.DataFrame) and len(particles) == 150
    assert metadata["csv_path"] == str(data.resolve())


def test_variant_records_pair_only_complete_seeds(tmp_path):
    from nnlab.analysis.james_stein import variant_records

    rows = []
    for seed in (0, 1):
        for v in VARIANTS:
            run_dir = tmp_path / f"{v}-{seed}"
            run_dir.mkdir()
            pd.DataFrame({"epoch": [1, 2], "val_mse": [2.0 + seed, 1.0 + seed]}).to_csv(
                run_dir / "training_results.csv", index=False)
            failed = seed == 1 and v == "james_stein"
            rows.append({"variant": v, "seed": seed, "run_dir": "" if failed else str(run_dir),
                         "status": "failed" if failed else "completed", "test_r2": 0.5})
    records, dropped = variant_records(pd.DataFrame(rows), epochs=3)
    assert [r["seed"] for r in records["no_constraints"]] == [0]
    assert dropped == ["seed 1: no finished run of james_stein (failed)"]
    record = records["binary_constraints"][0]
    np.testing.assert_array_equal(record["curve"][:2], [2.0, 1.0])
    assert np.isnan(record["curve"][2])  # padded to the requested epochs
    assert record["best_loss"] == 1.0 and record["convergence_epoch"] == 2
    assert np.isnan(record["mean_significant_bits"]) and record["weights"].size == 0  # no weights file


@pytest.mark.parametrize("value", ["0", "two"])
def test_js_workers_must_be_a_positive_integer(value):
    proc = _forked.run([sys.executable, "-m", "nnlab.cli", "analyze", "--js-workers", value],
                       capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("nnlab analyze: error: argument --js-workers: expected "
                                                          "an integer >= 1")


def test_js_workers_is_checked_by_the_library():
    from nnlab.analysis import ExperimentAnalysis
    from nnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="js_workers must be an integer >= 1, got 0"):
        ExperimentAnalysis("nowhere", js_workers=0)
