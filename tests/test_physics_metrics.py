"""Physics consistency: the NumPy metrics (nnlab.physics) and the in-graph loss term (PhysicsLoss)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnlab.config import Config
from nnlab.data import (
    DEFAULT_TARGETS,
    INITIAL_COLUMNS,
    complete_data_pipeline,
    generate_particle_data,
)
from nnlab.data._simulate import final_state
from nnlab.errors import ConfigError
from nnlab.physics import (
    GYRATION_MIN_TURN,
    PHYSICS_METRICS,
    consistency_metrics,
    consistency_residuals,
    physics_report,
)


@pytest.fixture(scope="module")
def particles():
    return generate_particle_data(num_particles=3000, seed=7)


def _split(df, perturb=None):
    initial = {c: df[c].to_numpy() for c in INITIAL_COLUMNS}
    predicted = {c: df[c].to_numpy().copy() for c in DEFAULT_TARGETS}
    if perturb:
        perturb(predicted)
    return predicted, initial


# --- the metrics ------------------------------------------------------------------------

def test_every_metric_is_zero_on_the_true_data(particles):
    metrics = consistency_metrics(*_split(particles))
    for name in PHYSICS_METRICS:
        assert metrics[name] is not None and metrics[name] < 1e-12, (name, metrics[name])
    assert metrics["not_applicable"] == {}


@pytest.mark.parametrize("eps", [0.01, 0.1, -0.2])
def test_each_metric_equals_a_known_perturbation(particles, eps):
    def scale_velocity(p):  # |v_pred| = (1 + eps)|v0|: speed violation exactly |eps|
        p["final_velocity_x"] *= 1 + eps
        p["final_velocity_y"] *= 1 + eps
        p["kinetic_energy"] *= (1 + eps) ** 2  # keeps the energy relation exact
    m = consistency_metrics(*_split(particles, scale_velocity))
    assert m["speed_violation"] == pytest.approx(abs(eps), rel=1e-9)
    assert m["energy_violation"] < 1e-12 and m["displacement_violation"] < 1e-12

    def scale_energy(p):
        p["kinetic_energy"] *= 1 + eps
    m = consistency_metrics(*_split(particles, scale_energy))
    assert m["energy_violation"] == pytest.approx(abs(eps), rel=1e-9)
    assert m["speed_violation"] < 1e-12

    def scale_displacement(p):
        p["displacement"] *= 1 + eps
    m = consistency_metrics(*_split(particles, scale_displacement))
    assert m["displacement_violation"] == pytest.approx(abs(eps), rel=1e-9)
    assert m["gyration_violation"] < 1e-12


def test_hand_computed_cases():
    # Speed: v0 = (3, 4) -> 5; predicted (0, 5.5) -> 0.5 / 5.
    m = consistency_metrics({"final_velocity_x": [0.0], "final_velocity_y": [5.5]},
                            {"initial_velocity_x": [3.0], "initial_velocity_y": [4.0]})
    assert m["speed_violation"] == pytest.approx(0.1)
    # Energy: m = 2, v = (1, 0): 1/2 * 2 * 1 = 1; KE_pred 1.5 -> 0.5 / 1.
    m = consistency_metrics({"kinetic_energy": [1.5], "final_velocity_x": [1.0], "final_velocity_y": [0.0]},
                            {"mass": [2.0]})
    assert m["energy_violation"] == pytest.approx(0.5)
    # Displacement: r0 = 0, r_pred = (3, 4) -> 5; d_pred 6 -> 1 / 5. Two samples: RMS over both.
    m = consistency_metrics({"displacement": [6.0, 5.0], "final_position_x": [3.0, 3.0],
                             "final_position_y": [4.0, 4.0]},
                            {"initial_position_x": [0.0, 0.0], "initial_position_y": [0.0, 0.0]})
    assert m["displacement_violation"] == pytest.approx(math.sqrt((1.0 + 0.0) / 2) / 5.0)
    # Gyration: q = B = m = 1, v0 = (0, 1) at the origin: omega = 1, centre (1, 0), radius 1.
    # After half a turn (t = pi) the particle is at (2, 0); a prediction (2.5, 0) is 1.5 from the centre.
    initial = {"mass": [1.0], "charge": [1.0], "magnetic_field_strength": [1.0], "initial_velocity_x": [0.0],
               "initial_velocity_y": [1.0], "initial_position_x": [0.0], "initial_position_y": [0.0],
               "simulation_time": [math.pi]}
    exact = final_state(*(np.asarray(initial[c]) for c in INITIAL_COLUMNS))
    assert (exact["final_position_x"][0], exact["final_position_y"][0]) == pytest.approx((2.0, 0.0), abs=1e-12)
    m = consistency_metrics({"final_position_x": [2.5], "final_position_y": [0.0]}, initial)
    assert m["gyration_violation"] == pytest.approx(0.5)
    m = consistency_metrics({"final_position_x": exact["final_position_x"],
                             "final_position_y": exact["final_position_y"]}, initial)
    assert m["gyration_violation"] < 1e-12


def test_gyration_counts_only_particles_that_turned_far_enough(particles):
    initial = {c: particles[c].to_numpy() for c in INITIAL_COLUMNS}
    turned = (np.abs(initial["charge"] * initial["magnetic_field_strength"] / initial["mass"])
              * initial["simulation_time"] >= GYRATION_MIN_TURN)
    assert 0 < turned.sum() < len(particles)  # neutral and slow-turning ones are left out
    violation, reference = consistency_residuals(*_split(particles))["gyration"]
    assert len(violation) == len(reference) == turned.sum()
    neutral = {**initial, "charge": np.zeros(len(particles))}
    m = consistency_metrics(_split(particles)[0], neutral)
    assert m["gyration_violation"] is None
    assert "turned" in m["not_applicable"]["gyration_violation"]


def test_a_metric_whose_quantities_are_missing_is_not_applicable():
    m = consistency_metrics({"final_velocity_x": [1.0], "final_velocity_y": [0.0]},
                            {"initial_velocity_x": [1.0], "initial_velocity_y": [0.0]})
    assert m["speed_violation"] == 0.0
    assert m["energy_violation"] is None and m["displacement_violation"] is None
    assert m["not_applicable"]["energy_violation"] == "needs kinetic_energy, mass"
    assert "displacement" in m["not_applicable"]["displacement_violation"]


def test_physics_report_of_a_prediction_and_the_true_data(particles):
    names = list(DEFAULT_TARGETS)
    y_true = particles[names].to_numpy()
    y_pred = y_true.copy()
    y_pred[:, names.index("kinetic_energy")] *= 1.05
    report = physics_report(y_pred, y_true, particles[INITIAL_COLUMNS].to_numpy(),
                            target_names=names, feature_names=list(INITIAL_COLUMNS))
    assert report["energy_violation"] == pytest.approx(0.05, rel=1e-9)
    assert max(report["true_data"].values()) < 1e-12
    json.dumps(report)  # plain floats, None and strings only


# --- the loss term -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared():
    return complete_data_pipeline(num_particles=1200, seed=3)


def _physical(prepared, y_scaled):
    return prepared.inverse_transform_targets(np.asarray(y_scaled))


def test_loss_term_is_zero_on_exact_predictions_and_matches_the_formula(prepared):
    from nnlab.losses import PhysicsLoss

    loss = PhysicsLoss(prepared, ["speed", "energy", "displacement"])
    assert float(loss(prepared.X_test, prepared.y_test)) < 1e-9
    # The speed term of a scaled-velocity prediction: mean((|v_pred| - |v0|)^2) / E|v0|^2, E from the scalers.
    speed = PhysicsLoss(prepared, ["speed"])
    names = prepared.target_names
    y = _physical(prepared, prepared.y_test)
    y[:, names.index("final_velocity_x")] *= 1.1
    y[:, names.index("final_velocity_y")] *= 1.1
    y_scaled = prepared.y_scaler.transform(y).astype(np.float32)
    X = prepared.x_scaler.inverse_transform(prepared.X_test)
    v0 = np.hypot(X[:, prepared.feature_names.index("initial_velocity_x")],
                  X[:, prepared.feature_names.index("initial_velocity_y")])
    X_train = prepared.x_scaler.inverse_transform(prepared.X_train)
    mean_square = np.mean(X_train[:, prepared.feature_names.index("initial_velocity_x")] ** 2
                          + X_train[:, prepared.feature_names.index("initial_velocity_y")] ** 2)
    expected = np.mean((0.1 * v0) ** 2) / mean_square
    assert float(speed(prepared.X_test, y_scaled)) == pytest.approx(expected, rel=1e-4)


def test_gradient_moves_a_perturbed_prediction_toward_consistency(prepared):
    import tensorflow as tf

    from nnlab.losses import PhysicsLoss
    from nnlab.physics import physics_report

    loss = PhysicsLoss(prepared, ["speed", "energy", "displacement"])
    names = prepared.target_names
    y = _physical(prepared, prepared.y_test)
    for name, factor in (("final_velocity_x", 1.1), ("final_velocity_y", 0.9), ("kinetic_energy", 1.2),
                         ("displacement", 0.85)):
        y[:, names.index(name)] *= factor
    y_pred = tf.Variable(prepared.y_scaler.transform(y).astype(np.float32))
    X_phys = prepared.x_scaler.inverse_transform(prepared.X_test)

    def report():
        return physics_report(_physical(prepared, y_pred.numpy()), _physical(prepared, prepared.y_test), X_phys,
                              target_names=names, feature_names=prepared.feature_names)

    before, value_before = report(), float(loss(prepared.X_test, y_pred))
    for _ in range(10):  # plain gradient descent on the term (a batch mean: the step scales with the rows)
        with tf.GradientTape() as tape:
            value = loss(prepared.X_test, y_pred)
        y_pred.assign_sub(0.02 * len(prepared.X_test) * tape.gradient(value, y_pred))
    after = report()
    assert float(loss(prepared.X_test, y_pred)) < 0.5 * value_before
    for metric in ("speed_violation", "energy_violation", "displacement_violation"):
        assert after[metric] < before[metric], metric


@pytest.mark.parametrize(("flat", "key", "allowed"), [
    ({"physics_loss_weight": -0.5}, "physics_loss_weight", "greater than or equal to 0"),
    ({"physics_loss_terms": ["speed", "momentum"]}, "physics_loss_terms", "speed"),
    ({"physics_loss_terms": []}, "physics_loss_terms", "at least 1"),
    ({"physics_loss_terms": ["speed", "speed"]}, "physics_loss_terms", "each term at most once"),
])
def test_bad_physics_config_names_the_key(flat, key, allowed):
    with pytest.raises(ConfigError) as err:
        Config.from_flat(flat)
    assert key in str(err.value) and allowed in str(err.value)


def test_a_term_whose_targets_are_not_predicted_is_refused(prepared):
    from nnlab.model import AdvancedNeuralNetwork

    velocity_only = complete_data_pipeline(num_particles=300, seed=3,
                                           targets=["final_velocity_x", "final_velocity_y"])
    cfg = {"physics_loss_weight": 1.0, "physics_loss_terms": ["speed", "energy"], "hidden_layers": [8]}
    with pytest.raises(ConfigError, match=r"physics_loss_terms includes 'energy', which needs the target\(s\) "
                                          r"kinetic_energy; the model predicts final_velocity_x, final_velocity_y"):
        AdvancedNeuralNetwork((velocity_only.X_train.shape[1],), 2, cfg, scalers=velocity_only)
    with pytest.raises(ConfigError, match="physics_loss_weight = 1 needs the data's scalers"):
        AdvancedNeuralNetwork((prepared.X_train.shape[1],), 6, cfg)
    # Speed alone only needs the velocities: accepted.
    net = AdvancedNeuralNetwork((velocity_only.X_train.shape[1],), 2, {**cfg, "physics_loss_terms": ["speed"]},
                                scalers=velocity_only)
    assert net.physics_loss.terms == ["speed"]


def test_training_with_the_term_under_every_strategy(prepared):
    """The term is in the compiled loss (also with XLA and several steps per call) and logged."""
    from nnlab.config import LOSS_WEIGHTING_STRATEGIES
    from nnlab.losses import PhysicsInformedModel
    from nnlab.model import AdvancedNeuralNetwork

    p = prepared
    for strategy in LOSS_WEIGHTING_STRATEGIES:
        cfg = {"hidden_layers": [16], "physics_loss_weight": 2.0, "loss_weighting_strategy": strategy,
               "physics_collocation_points": 2000, "physics_collocation_batch_size": 64,
               "steps_per_execution": 4, "jit_compile": strategy == "physics_aware", "l2_regularization": 0.0}
        net = AdvancedNeuralNetwork((p.X_train.shape[1],), p.y_train.shape[1], cfg, scalers=p)
        assert isinstance(net.model, PhysicsInformedModel)
        h = net.train_with_custom_constraints(p.X_train[:400], p.y_train[:400], p.X_val, p.y_val, epochs=2,
                                              batch_size=100, verbose=0)["history"]
        assert len(h["physics_loss"]) == len(h["val_physics_loss"]) == 2
        assert all(v > 0 and np.isfinite(v) for v in h["physics_loss"] + h["val_physics_loss"])
        # val_loss = the adaptive loss at this epoch's weights + this epoch's (warm-up) weight * physics term.
        np.testing.assert_allclose(h["physics_loss_weight"], [2.0 / 31, 4.0 / 31], rtol=1e-6)
        expected = (np.array(h["mse_weight"]) * h["val_mse"] + np.array(h["mae_weight"]) * h["val_mae"]
                    + np.array(h["physics_loss_weight"]) * h["val_physics_loss"])
        np.testing.assert_allclose(h["val_loss"], expected, rtol=1e-4, err_msg=strategy)
    # Off (the default): a plain functional model, no physics metric.
    net = AdvancedNeuralNetwork((p.X_train.shape[1],), p.y_train.shape[1], {"hidden_layers": [16]})
    assert net.physics_loss is None and not isinstance(net.model, PhysicsInformedModel)


def test_collocation_inputs_are_fresh_initial_states_scaled_like_the_data(prepared):
    from nnlab.config import GenerationConfig
    from nnlab.data import add_derived_features, collocation_inputs
    from nnlab.model import AdvancedNeuralNetwork

    generation = GenerationConfig()
    rows = collocation_inputs(prepared, generation, 500, seed=9)
    assert rows.shape == (500, len(prepared.feature_names)) and rows.dtype == np.float32
    physical = prepared.x_scaler.inverse_transform(rows.astype(np.float64))
    frame = {name: physical[:, j] for j, name in enumerate(prepared.feature_names)}
    low, high = generation.mass_range
    assert low - 1e-4 <= frame["mass"].min() and frame["mass"].max() <= high + 1e-4
    assert set(np.round(frame["charge"], 4)) <= {-1.0, 0.0, 1.0}
    import pandas as pd
    derived = add_derived_features(pd.DataFrame({c: frame[c] for c in INITIAL_COLUMNS}))
    np.testing.assert_allclose(frame["initial_speed"], derived["initial_speed"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(rows, collocation_inputs(prepared, generation, 500, seed=9))  # repeatable
    assert collocation_inputs(prepared, generation, 0, seed=9).shape == (0, len(prepared.feature_names))
    # The model's pool: the configured size, the same for the same seed (a resumed run gets the same one).
    cfg = {"hidden_layers": [8], "physics_loss_weight": 1.0, "physics_collocation_points": 300, "seed": 5}
    a = AdvancedNeuralNetwork((rows.shape[1],), 6, cfg, scalers=prepared).physics_loss.collocation
    b = AdvancedNeuralNetwork((rows.shape[1],), 6, cfg, scalers=prepared).physics_loss.collocation
    assert a.shape == (300, rows.shape[1]) and np.array_equal(a, b)
    off = AdvancedNeuralNetwork((rows.shape[1],), 6, {**cfg, "physics_collocation_points": 0}, scalers=prepared)
    assert off.physics_loss.collocation is None


def test_collocation_settings_that_cannot_work_are_warned(prepared):
    import warnings

    from nnlab.model import AdvancedNeuralNetwork

    n_features = len(prepared.feature_names)
    cfg = {"hidden_layers": [8], "physics_loss_weight": 1.0, "physics_collocation_points": 100, "seed": 5}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AdvancedNeuralNetwork((n_features,), 6, {**cfg, "physics_collocation_batch_size": 64}, scalers=prepared)
    assert not [w for w in caught if "collocation" in str(w.message)]  # the defaults' ranges fit the data
    with pytest.warns(UserWarning, match="physics_collocation_batch_size = 1000000 is larger than "
                                         "physics_collocation_points = 100"):
        AdvancedNeuralNetwork((n_features,), 6, {**cfg, "physics_collocation_batch_size": 1_000_000},
                              scalers=prepared)
    # Data from other ranges (velocities of 100-110) than the collocation rows are drawn from (-5..5).
    far = complete_data_pipeline(num_particles=300, seed=3,
                                 config={"velocity_x_range": [100.0, 110.0]})
    with pytest.warns(UserWarning, match=r"collocation rows lie far outside the training data for "
                                         r"initial_velocity_x \(velocity_x_range = \[-5.0, 5.0\]; the data's "
                                         r"mean ± 2 sd: \[\d+"):
        AdvancedNeuralNetwork((n_features,), 6, {**cfg, "physics_collocation_batch_size": 64}, scalers=far)
