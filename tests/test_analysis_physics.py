"""The analysis section "physics" (11. Physics consistency) on two tiny real runs, one with the physics loss term."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnlab.cli import main
from nnlab.physics import PHYSICS_METRICS, RELATIONS

REPO = Path(__file__).resolve().parents[1]
# jit_compile off: XLA compilation costs more than these epochs; TensorBoard off: not what is tested here.
TINY = ["--num-particles", "600", "--epochs", "3", "--seed", "1", "--config-dir", str(REPO / "ml_config"),
        "--set", "hidden_layers=[16]", "--set", "jit_compile=false", "--set", "tensorboard=false", "--quiet"]
TERMS = ["speed", "energy", "displacement"]
# Every section but the two under test: the others are tested in test_analysis_run.py.
OTHER_SECTIONS = "dynamics,learning_rate,residuals,predictions,baselines,james_stein,recommendations,heatmap," \
                 "loss_and_constraints"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, str, str]:
    """Two runs trained in this process on the same data: without and with the physics term (weight 1)."""
    out = tmp_path_factory.mktemp("physics") / "training_output"
    assert main(["train", *TINY, "--output-dir", str(out)]) == 0
    assert main(["train", *TINY, "--set", "physics_loss_weight=1.0", "--set", "physics_collocation_points=2000",
                 "--set", "physics_collocation_batch_size=64", "--output-dir", str(out)]) == 0
    plain, physics = sorted(p.name for p in (out / "runs").iterdir())
    return out, plain, physics


def recorded(out: Path, run_id: str) -> dict:
    return json.loads((out / "runs" / run_id / "test_metrics.json").read_text())


def section(out: Path, run_id: str, analysis_dir: Path):
    from nnlab.analysis import ExperimentAnalysis

    return ExperimentAnalysis(out, run=run_id, analysis_dir=analysis_dir).run_section("physics")


@pytest.fixture(scope="module")
def physics_section(runs, tmp_path_factory):
    out, _, physics = runs
    return section(out, physics, tmp_path_factory.mktemp("physics_analysis"))


def test_table_has_every_run_with_its_recorded_violations(runs, physics_section):
    out, plain, physics = runs
    result = physics_section
    assert result.status == "done", result.reason
    assert result.title == "11. Physics consistency"
    table = result.tables["violations per run"].set_index("run_id")
    assert list(table.index) == [plain, physics]
    assert table["this_run"].tolist() == [False, True]
    assert table.loc[plain, "physics_loss_weight"] == 0.0 and table.loc[physics, "physics_loss_weight"] == 1.0
    assert table.loc[physics, "physics_loss_terms"] == ", ".join(TERMS)
    assert pd.isna(table.loc[plain, "physics_loss_terms"])
    for run_id in (plain, physics):
        metrics = recorded(out, run_id)
        for metric in PHYSICS_METRICS:
            assert table.loc[run_id, metric] == metrics["physics"][metric]
            assert 0 < metrics["physics"][metric] < 10
        assert table.loc[run_id, "test_r2"] == metrics["scaled"]["r2"]
        assert table.loc[run_id, "true_data_max"] == max(metrics["physics"]["true_data"].values())
        assert table.loc[run_id, "true_data_max"] < 1e-5  # the simulation obeys its own physics


def test_summary_figure_and_notes_of_the_physics_run(runs, physics_section):
    from PIL import Image

    out, _, physics = runs
    result = physics_section
    summary = result.summary
    metrics = recorded(out, physics)["physics"]
    assert summary["run_id"] == physics and summary["violations_source"] == "test_metrics.json"
    assert summary["violations"] == {m: metrics[m] for m in PHYSICS_METRICS}
    assert summary["true_data"] == metrics["true_data"]
    assert summary["physics_loss"] == {"weight": 1.0, "terms": TERMS}
    assert summary["not_applicable"] == {} and summary["runs_without_physics"] == [] and summary["n_runs"] == 2
    # One panel per relation: the default task predicts every quantity the four relations need.
    assert summary["panels"] == list(RELATIONS)
    assert set(summary["spearman"]) == set(RELATIONS)
    for rho in summary["spearman"].values():
        assert isinstance(rho, float) and -1.0 <= rho <= 1.0
    for p in summary["spearman_p"].values():
        assert 0.0 <= p <= 1.0
    per_relation = result.tables["this run per relation"].set_index("relation")
    assert per_relation["spearman_rho"].to_dict() == summary["spearman"]
    assert per_relation.loc["speed", "n_samples"] == recorded(out, physics)["n_samples"]
    assert 0 < per_relation.loc["gyration", "n_samples"] <= per_relation.loc["speed", "n_samples"]
    [figure] = result.figures
    assert figure.name == "physics_consistency.png"
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.info["dpi"] == pytest.approx((300, 300), abs=0.1)
    text = " ".join(result.notes)
    assert "physics_loss_weight 1, terms speed, energy, displacement" in text
    assert "relative RMS" in text and "Spearman" in text
    # The network rebuilt by the analysis reproduces the recorded metrics (none differ by 0.1 %).
    assert "differ" not in text


def test_plain_run_note_says_the_term_was_off(runs, tmp_path):
    out, plain, _ = runs
    result = section(out, plain, tmp_path)
    assert result.status == "done", result.reason
    assert result.summary["physics_loss"] == {"weight": 0.0, "terms": None}
    assert result.tables["violations per run"]["this_run"].tolist() == [True, False]
    assert any("without the physics loss term (physics_loss_weight 0); 1 of the 2 runs" in n for n in result.notes)


def prediction_arrays(n: int = 50, *, seed: int = 0) -> tuple[dict, dict, dict]:
    """Synthetic particles on their true circles (all charged, all turned more than 1 rad)."""
    rng = np.random.default_rng(seed)
    mass, charge, field = rng.uniform(1, 2, n), rng.choice([-1.0, 1.0], n), rng.uniform(1, 2, n)
    vx, vy, x0, y0 = rng.normal(size=(4, n))
    t = np.full(n, 3.0)
    omega = charge * field / mass
    # Clockwise rotation at omega (B along +z), as in nnlab.physics.
    c, s = np.cos(omega * t), np.sin(omega * t)
    vxf, vyf = vx * c + vy * s, -vx * s + vy * c
    xf, yf = x0 + (vx * s + vy * (1 - c)) / omega, y0 + (vy * s - vx * (1 - c)) / omega
    initial = {"mass": mass, "charge": charge, "magnetic_field_strength": field, "initial_velocity_x": vx,
               "initial_velocity_y": vy, "initial_position_x": x0, "initial_position_y": y0, "simulation_time": t}
    actual = {"final_velocity_x": vxf, "final_velocity_y": vyf, "final_position_x": xf, "final_position_y": yf,
              "kinetic_energy": 0.5 * mass * (vxf**2 + vyf**2), "displacement": np.hypot(xf - x0, yf - y0)}
    return initial, actual, {k: v.copy() for k, v in actual.items()}


def test_prediction_errors_are_relative_and_zero_for_true_values():
    from nnlab.analysis.physics import prediction_errors
    from nnlab.physics import consistency_metrics

    initial, actual, predicted = prediction_arrays()
    assert consistency_metrics(actual, initial)["gyration_violation"] < 1e-9  # the synthetic circles are right
    errors = prediction_errors(predicted, actual, initial)
    assert all(np.array_equal(errors[r], np.zeros(50)) for r in RELATIONS)
    predicted["kinetic_energy"] = actual["kinetic_energy"] * 1.1
    predicted["final_position_x"] = actual["final_position_x"] + 0.5
    errors = prediction_errors(predicted, actual, initial)
    ke = actual["kinetic_energy"]
    np.testing.assert_allclose(errors["energy"], 0.1 * ke / np.sqrt(np.mean(ke**2)))
    r = np.hypot(actual["final_position_x"] - initial["initial_position_x"],
                 actual["final_position_y"] - initial["initial_position_y"])
    np.testing.assert_allclose(errors["gyration"], 0.5 / np.sqrt(np.mean(r**2)))
    np.testing.assert_array_equal(errors["speed"], np.zeros(50))
    # Without kinetic_energy the energy relation does not apply.
    del predicted["kinetic_energy"]
    assert prediction_errors(predicted, actual, initial)["energy"] is None


def test_a_relation_that_does_not_apply_has_no_panel(tmp_path):
    from nnlab.analysis.physics import physics_consistency

    initial, actual, _ = prediction_arrays()
    targets = [t for t in actual if t != "kinetic_energy"]
    features = list(initial)
    y_true = np.column_stack([actual[t] for t in targets])
    y_pred = y_true * np.random.default_rng(1).normal(1.0, 0.1, size=y_true.shape)
    X = np.column_stack([initial[f] for f in features])
    result = physics_consistency(tmp_path, "r1", tmp_path, config={}, test_metrics={}, y_pred=y_pred,
                                 y_true=y_true, X=X, target_names=targets, feature_names=features)
    summary = result.summary
    assert summary["panels"] == ["speed", "displacement", "gyration"]
    assert summary["violations"]["energy_violation"] is None and summary["violations"]["speed_violation"] > 0
    assert summary["not_applicable"] == {"energy_violation": "needs kinetic_energy"}
    assert summary["violations_source"] == "recomputed from the test predictions"
    assert "energy_violation: not applicable (needs kinetic_energy); no panel." in result.notes
    # A run that predates the physics metrics (and the output dir holds no runs): its row is recomputed.
    [row] = result.tables["violations per run"].to_dict("records")
    assert row["run_id"] == "r1" and row["this_run"] and row["physics_loss_weight"] == 0.0
    assert row["true_data_max"] < 1e-9
    for relation, rho in summary["spearman"].items():
        assert -1.0 <= rho <= 1.0, relation
    assert (tmp_path / "physics_consistency.png").is_file()


def without_physics(out: Path, run_id: str) -> None:
    path = out / "runs" / run_id / "test_metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["physics"]
    path.write_text(json.dumps(metrics))


def test_older_run_is_recomputed_or_skipped(runs, tmp_path):
    out, plain, physics = runs
    copy = tmp_path / "training_output"
    shutil.copytree(out / "runs", copy / "runs", ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
    without_physics(copy, plain)
    # With its weights: the analysed run's metrics are recomputed from the network's predictions.
    result = section(copy, plain, tmp_path / "a")
    assert result.status == "done", result.reason
    assert result.summary["violations_source"] == "recomputed from the test predictions"
    for metric in PHYSICS_METRICS:
        assert result.summary["violations"][metric] == pytest.approx(recorded(out, plain)["physics"][metric],
                                                                     rel=1e-4)
    assert result.tables["violations per run"]["run_id"].tolist() == [plain, physics]
    assert any("recomputed from the network's test predictions" in n for n in result.notes)
    # Another run's view: the older run is left out of the table, and a note names it.
    other = section(copy, physics, tmp_path / "b")
    assert other.tables["violations per run"]["run_id"].tolist() == [physics]
    assert other.summary["runs_without_physics"] == [plain]
    assert any("left out of the table: " + plain in n for n in other.notes)
    # Without weights as well: nothing to show, skipped with the reason.
    shutil.rmtree(copy / "runs" / plain / "weights")
    skipped = section(copy, plain, tmp_path / "c")
    assert skipped.status == "skipped"
    assert f"test_metrics.json of run {plain} has no physics metrics" in skipped.reason
    assert "no weights" in skipped.reason


def test_without_weights_the_table_stays_and_the_figure_goes(runs, tmp_path):
    out, _, physics = runs
    copy = tmp_path / "training_output"
    shutil.copytree(out / "runs", copy / "runs", ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
    shutil.rmtree(copy / "runs" / physics / "weights")
    result = section(copy, physics, tmp_path / "a")
    assert result.status == "done", result.reason
    assert result.figures == [] and result.summary["panels"] == [] and result.summary["spearman"] == {}
    assert result.summary["violations"] == {m: recorded(out, physics)["physics"][m] for m in PHYSICS_METRICS}
    assert len(result.tables["violations per run"]) == 2
    assert any(n.startswith("No figure: the network's test predictions are not available (no weights")
               for n in result.notes)
    assert not (tmp_path / "a" / "physics_consistency.png").exists()


def test_cli_report_and_summary_include_the_section_and_skip_works(runs, tmp_path, capsys):
    out, _, physics = runs
    analysis_dir = tmp_path / "analysis"
    assert main(["analyze", "--output-dir", str(out), "--analysis-dir", str(analysis_dir),
                 "--skip", OTHER_SECTIONS, "--quiet"]) == 0
    [path] = analysis_dir.glob("*/analysis_summary_*.json")  # <analysis-dir>/<run_id>/
    summary = json.loads(path.read_text())
    assert summary["run_id"] == physics and "physics" not in summary["skipped_sections"]
    assert summary["physics_consistency"]["violations"] == {m: recorded(out, physics)["physics"][m]
                                                            for m in PHYSICS_METRICS}
    assert summary["sections"]["physics"]["figures"] == ["physics_consistency.png"]
    html = (path.parent / "report.html").read_text(encoding="utf-8")
    assert "<h2 id='physics'>11. Physics consistency" in html
    assert "alt='physics_consistency.png'" in html and "<h3>violations per run" in html

    skipped_dir = tmp_path / "skipped"
    assert main(["analyze", "--output-dir", str(out), "--analysis-dir", str(skipped_dir),
                 "--skip", OTHER_SECTIONS + ",physics", "--quiet"]) == 0
    [path] = skipped_dir.glob("*/analysis_summary_*.json")
    summary = json.loads(path.read_text())
    assert "--skip" in summary["skipped_sections"]["physics"] and summary["physics_consistency"] is None
    assert not (skipped_dir / "physics_consistency.png").exists()
    capsys.readouterr()
