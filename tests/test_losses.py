"""Tests for nnlab.losses: strategy formulas, their robustness, and the Keras loss/callback."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnlab.config import LOSS_WEIGHTING_STRATEGIES, Config
from nnlab.errors import ConfigError
from nnlab.losses import LossWeightScheduler, compute_loss_weights

SQRT_HALF = math.sqrt(0.5)


def approx_pair(expected, rel=1e-9, abs=1e-9):
    return pytest.approx(tuple(expected), rel=rel, abs=abs)


# ---------------------------------------------------------------------------
# Strategy formulas against hand-computed values


@pytest.mark.parametrize(
    "r2, expected",
    [
        (0.5, (0.55, 0.45)),
        (0.25, (0.375, 0.625)),
        (0.0, (0.2, 0.8)),
        (1.0, (0.9, 0.1)),
        (-3.0, (0.2, 0.8)),  # R² < 0 clips to 0
        (1.7, (0.9, 0.1)),  # R² > 1 clips to 1
        (-math.inf, (0.2, 0.8)),
        (math.inf, (0.9, 0.1)),
        (math.nan, (0.2, 0.8)),  # no evidence of fit counts as 0
    ],
)
def test_r2_based(r2, expected):
    assert compute_loss_weights("r2_based", prev_r2=r2) == approx_pair(expected)


@pytest.mark.parametrize(
    "loss, expected",
    [
        (1.0, (0.55, 0.45)),  # n = 0.5
        (0.5, (0.725, 0.275)),  # n = 0.25: 0.2 + 0.7 * 0.75
        (0.0, (0.9, 0.1)),
        (2.0, (0.2, 0.8)),  # n = 1
        (1e30, (0.2, 0.8)),  # huge loss clips to n = 1
        (math.inf, (0.2, 0.8)),
        (math.nan, (0.2, 0.8)),  # diverged counts as the worst loss
        (-5.0, (0.9, 0.1)),
    ],
)
def test_loss_based(loss, expected):
    assert compute_loss_weights("loss_based", prev_loss=loss) == approx_pair(expected)


@pytest.mark.parametrize(
    "r2, loss, expected",
    [
        (0.5, 0.0, (0.725, 0.275)),  # mean of (0.55, 0.45) and (0.9, 0.1)
        (1.0, 2.0, (0.55, 0.45)),  # mean of (0.9, 0.1) and (0.2, 0.8)
        (-1.0, 1e9, (0.2, 0.8)),
        (5.0, -1.0, (0.9, 0.1)),
    ],
)
def test_combined(r2, loss, expected):
    assert compute_loss_weights("combined", prev_r2=r2, prev_loss=loss) == approx_pair(expected)


@pytest.mark.parametrize("epoch", [0, 1, 2, 3])
def test_physics_aware_explores_with_sines_for_the_first_four_epochs(epoch):
    expected = ((1 + math.sin(epoch)) / 2, (1 - math.sin(epoch)) / 2)
    # The histories are ignored during exploration.
    got = compute_loss_weights(
        "physics_aware", epoch=epoch, loss_history=[(1, 1), (0.5, 2)], weight_history=[(0.1, 0.9), (0.9, 0.1)]
    )
    assert got == approx_pair(expected)


@pytest.mark.parametrize(
    "epoch, weights, losses, expected",
    [
        # d = (0.2, -0.2) -> unit (1, -1)/sqrt2, negated since the loss fell (1.7 < 2);
        # sine(4) = (0.12160, 0.87840); raw = (-0.58551, 1.58551); MSE floor
        # 0.1 * mean|raw| = 0.108551; normalised.
        (4, [(0.5, 0.5), (0.7, 0.3)], [(1.0, 1.0), (0.8, 0.9)], (0.0640773513, 0.9359226487)),
        # Same, the loss rose: not negated; raw = (0.82871, 0.17129) already sums to 1.
        (4, [(0.5, 0.5), (0.7, 0.3)], [(1.0, 1.0), (1.2, 1.0)], (0.8287055335, 0.1712944665)),
        # sine(8) = (0.99468, 0.00532); raw = (1.70179, -0.70179): shifted to (2.40357, 0).
        (8, [(0.5, 0.5), (0.7, 0.3)], [(1.0, 1.0), (1.2, 1.0)], (1.0, 0.0)),
        # Weights did not move: sine(11) = (4.9e-6, 0.999995) alone; MSE floored at 0.05.
        (11, [(0.5, 0.5), (0.5, 0.5)], [(1.0, 1.0), (0.5, 0.5)], (0.0476192697, 0.9523807303)),
        # No weight history yet: sine and floor only.
        (11, None, None, (0.0476192697, 0.9523807303)),
    ],
)
def test_physics_aware_after_exploration(epoch, weights, losses, expected):
    got = compute_loss_weights("physics_aware", epoch=epoch, loss_history=losses, weight_history=weights)
    assert got == approx_pair(expected, rel=1e-8)


def test_softadapt_gives_the_faster_falling_term_less_weight():
    # MSE fell by 0.5, MAE by 0.1: softmax(0.1 * (-0.5, -0.1)).
    history = [(1.0, 1.0), (0.5, 0.9)]
    mse_w, mae_w = compute_loss_weights("softadapt", loss_history=history)
    assert (mse_w, mae_w) == approx_pair((0.4900013331, 0.5099986669))
    assert mse_w < mae_w
    assert compute_loss_weights("softadapt", loss_history=history, beta=10.0) == approx_pair(
        (0.0179862100, 0.9820137900)
    )
    # Only the latest slope counts; a diverged (NaN) epoch is skipped.
    assert compute_loss_weights("softadapt", loss_history=[(9.0, 1.0), (1.0, 1.0), (math.nan, 0.2), (0.5, 0.9)]) == (
        mse_w,
        mae_w,
    )
    # Rising MSE gets the weight.
    rising = compute_loss_weights("softadapt", loss_history=[(1.0, 1.0), (1.5, 0.5)], beta=1.0)
    assert rising[0] > rising[1]


@pytest.mark.parametrize("history", [None, [], [(1.0, 2.0)], [(1.0, 2.0), (math.inf, 1.0)]])
def test_softadapt_is_uniform_without_two_finite_epochs(history):
    assert compute_loss_weights("softadapt", loss_history=history) == (0.5, 0.5)


def test_relobralo_formula_with_and_without_lookback():
    # rho = 1 always: 0.9 * w(t-1) + 0.1 * softmax(L(t)/L(t-1) / T), T = 1.
    keep = compute_loss_weights(
        "relobralo",
        loss_history=[(1.0, 1.0), (0.5, 0.9)],
        weight_history=[(0.5, 0.5)],
        alpha=0.9,
        temperature=1.0,
        expected_lookback=1.0,
    )
    assert keep == approx_pair((0.4901312340, 0.5098687660))
    # rho = 0 always: 0.5 * softmax(L(t)/L(0)) + 0.5 * softmax(L(t)/L(t-1)).
    lookback = compute_loss_weights(
        "relobralo",
        loss_history=[(1.0, 1.0), (0.5, 0.5), (0.25, 0.45)],
        weight_history=[(0.9, 0.1)],
        alpha=0.5,
        temperature=1.0,
        expected_lookback=0.0,
    )
    assert lookback == approx_pair((0.4257391713, 0.5742608287))


def test_relobralo_gives_the_larger_relative_loss_more_weight():
    # MSE is at 50 % of its previous value, MAE at 90 %: MAE lags, gets more weight.
    history = [(1.0, 1.0), (0.5, 0.9)]
    for alpha in (0.999, 0.9, 0.0):
        mse_w, mae_w = compute_loss_weights(
            "relobralo", loss_history=history, weight_history=[(0.5, 0.5)], alpha=alpha, seed=0
        )
        assert mae_w > mse_w
    # Scale-free: multiplying MSE's whole history by 1000 changes nothing.
    scaled = [(1000.0, 1.0), (500.0, 0.9)]
    assert compute_loss_weights("relobralo", loss_history=scaled, alpha=0.5, seed=0) == approx_pair(
        compute_loss_weights("relobralo", loss_history=history, alpha=0.5, seed=0)
    )


def test_relobralo_is_seeded():
    def run(seed):
        scheduler = LossWeightScheduler("relobralo", alpha=0.5, expected_lookback=0.5, seed=seed)
        for k in range(1, 25):
            scheduler.next_weights(1.0 / k, 1.0 / math.sqrt(k))
        return scheduler.weight_history

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize(
    "mse_weight, mae_weight, expected", [(0.5, 0.5, (0.5, 0.5)), (3.0, 1.0, (0.75, 0.25)), (0.0, 2.0, (0.0, 1.0))]
)
def test_fixed(mse_weight, mae_weight, expected):
    got = compute_loss_weights("fixed", mse_weight=mse_weight, mae_weight=mae_weight, prev_r2=0.9, prev_loss=5)
    assert got == approx_pair(expected)


def test_none_is_pure_mse():
    assert compute_loss_weights("none", prev_r2=0.1, loss_history=[(1, 1), (0, 5)]) == (1.0, 0.0)


def test_unknown_strategy_lists_the_strategies():
    with pytest.raises(ConfigError) as excinfo:
        compute_loss_weights("adaptive")
    message = str(excinfo.value)
    assert "loss_weighting_strategy" in message and "'adaptive'" in message
    assert all(name in message for name in LOSS_WEIGHTING_STRATEGIES)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"temperature": 0.0}, "relobralo_temperature"),
        ({"alpha": 1.5}, "relobralo_alpha"),
        ({"expected_lookback": -0.1}, "relobralo_expected_lookback"),
        ({"beta": math.nan}, "softadapt_beta"),
        ({"mse_weight": -1.0}, "mse_weight"),
    ],
)
def test_out_of_range_options_name_their_config_key(options, key):
    with pytest.raises(ConfigError, match=key):
        compute_loss_weights("relobralo", **options)


def test_fixed_weights_must_not_both_be_zero():
    with pytest.raises(ConfigError, match="mse_weight \\+ mae_weight"):
        compute_loss_weights("fixed", mse_weight=0.0, mae_weight=0.0)


def test_history_formats_are_equivalent():
    pairs = [(1.0, 1.0), (0.6, 0.9), (0.5, 0.85)]
    mapping = {"mse": [1.0, 0.6, 0.5], "mae": [1.0, 0.9, 0.85]}
    for strategy in ("softadapt", "relobralo", "physics_aware"):
        expected = compute_loss_weights(strategy, loss_history=pairs, epoch=6, seed=1)
        assert compute_loss_weights(strategy, loss_history=mapping, epoch=6, seed=1) == expected
        assert compute_loss_weights(strategy, loss_history=np.array(pairs), epoch=6, seed=1) == expected


@pytest.mark.parametrize("bad", [[1.0, 2.0, 3.0], [(1.0, 2.0, 3.0)], {"mse": [1.0]}, {"mse": [1.0], "mae": [1, 2]}])
def test_malformed_history_is_rejected(bad):
    with pytest.raises(ValueError, match="loss_history"):
        compute_loss_weights("softadapt", loss_history=bad)


# ---------------------------------------------------------------------------
# Whatever the history: finite, non-negative, summing to 1

_any_float = st.floats(allow_nan=True, allow_infinity=True)
_rows = st.lists(st.tuples(_any_float, _any_float), max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    strategy=st.sampled_from(LOSS_WEIGHTING_STRATEGIES),
    prev_r2=_any_float,
    prev_loss=_any_float,
    loss_history=_rows,
    weight_history=_rows,
    epoch=st.integers(0, 10_000),
    beta=st.floats(-1e6, 1e6),
    alpha=st.floats(0, 1),
    temperature=st.floats(1e-300, 1e6),
    expected_lookback=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_weights_are_always_a_distribution(
    strategy, prev_r2, prev_loss, loss_history, weight_history, epoch, **options
):
    weights = compute_loss_weights(
        strategy,
        prev_r2=prev_r2,
        prev_loss=prev_loss,
        loss_history=loss_history,
        weight_history=weight_history,
        epoch=epoch,
        **options,
    )
    assert len(weights) == 2
    assert all(math.isfinite(w) and w >= 0 for w in weights)
    assert math.isclose(sum(weights), 1.0, abs_tol=1e-9)


# ---------------------------------------------------------------------------
# LossWeightScheduler


def test_scheduler_feeds_its_histories_to_the_functional_core():
    scheduler = LossWeightScheduler("physics_aware")
    assert scheduler.epoch == 0 and scheduler.current_weights == (0.5, 0.5)
    losses = [(1.0, 0.8), (0.7, 0.75), (0.5, 0.7), (0.45, 0.6), (0.44, 0.61), (0.3, 0.5)]
    for k, (mse, mae) in enumerate(losses, start=1):
        expected = compute_loss_weights(
            "physics_aware",
            loss_history=losses[:k],
            weight_history=scheduler.weight_history,
            epoch=k,
        )
        assert scheduler.next_weights(mse, mae) == expected
        assert scheduler.epoch == k
    assert scheduler.loss_history == losses
    assert len(scheduler.weight_history) == len(losses) + 1
    # reset() starts over.
    assert scheduler.reset() == (0.5, 0.5) and scheduler.loss_history == []


def test_scheduler_passes_r2_and_loss():
    scheduler = LossWeightScheduler("combined")
    assert scheduler.next_weights(0.3, 0.4, r2=0.5, loss=0.0) == approx_pair((0.725, 0.275))
    # Without r2/loss: R² 0.5 and the weighted loss 0.725 * 4 + 0.275 * 4 = 4 -> n = 1.
    assert scheduler.next_weights(4.0, 4.0) == approx_pair(((0.55 + 0.2) / 2, (0.45 + 0.8) / 2))


def test_scheduler_rejects_unknown_strategy_at_construction():
    with pytest.raises(ConfigError, match="r2_based"):
        LossWeightScheduler("softmax")


def test_strategies_do_not_import_tensorflow():
    code = (
        "import sys; from nnlab.losses import compute_loss_weights, LossWeightScheduler; "
        "compute_loss_weights('relobralo', loss_history=[(1, 1), (0.5, 0.2)]); "
        "LossWeightScheduler('softadapt').next_weights(1.0, 2.0); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# Keras: AdaptiveLoss and AdaptiveLossCallback (small models, graph mode)

import keras  # noqa: E402
from nnlab.losses import AdaptiveLoss, AdaptiveLossCallback, build_adaptive_loss  # noqa: E402

METRIC_TOL = dict(rel=1e-4, abs=1e-6)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    # Targets of scale ~3 so MSE and MAE differ clearly.
    y = (3 * rng.normal(size=(96, 2))).astype("float32")
    return x[:64], y[:64], x[64:], y[64:]


def make_model(loss, **compile_kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=loss,
        metrics=["mse", "mae", keras.metrics.R2Score()],
        **compile_kwargs,
    )
    return model


@pytest.fixture(scope="module")
def shared(data):
    """One compiled model and its loss, reused so tests skip retracing."""
    loss = AdaptiveLoss()
    return make_model(loss), loss


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean", None])
def test_adaptive_loss_is_the_weighted_keras_losses(reduction):
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    sample_weight = rng.uniform(size=6)
    loss = AdaptiveLoss(0.3, 0.7, reduction=reduction)
    mse = keras.losses.MeanSquaredError(reduction=reduction)(y_true, y_pred, sample_weight=sample_weight)
    mae = keras.losses.MeanAbsoluteError(reduction=reduction)(y_true, y_pred, sample_weight=sample_weight)
    got = np.asarray(loss(y_true, y_pred, sample_weight=sample_weight))
    np.testing.assert_allclose(got, 0.3 * np.asarray(mse) + 0.7 * np.asarray(mae), rtol=1e-6)


def test_adaptive_loss_rank_handling_matches_keras():
    y_true, y_pred = np.array([1.0, 2.0, 4.0]), np.array([[1.5], [2.0], [1.0]])
    expected = keras.losses.MeanSquaredError()(y_true, y_pred)
    assert float(AdaptiveLoss(1, 0)(y_true, y_pred)) == pytest.approx(float(expected))


def test_adaptive_loss_weights_are_normalised_and_validated():
    loss = AdaptiveLoss(3.0, 1.0)
    assert (loss.mse_weight, loss.mae_weight) == (0.75, 0.25)
    loss.assign_weights(0.0, 5.0)
    assert (loss.mse_weight, loss.mae_weight) == (0.0, 1.0)
    assert loss.weights_variable.shape == (2,) and not loss.weights_variable.trainable
    for bad in [(-1.0, 1.0), (0.0, 0.0), (math.nan, 1.0), ("a", 1.0)]:
        with pytest.raises(ValueError, match="loss weights"):
            loss.assign_weights(*bad)


def test_adaptive_loss_serialization_round_trip():
    loss = AdaptiveLoss(0.2, 0.8, name="my_loss", reduction="sum")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, AdaptiveLoss)
    assert (restored.mse_weight, restored.mae_weight) == pytest.approx((0.2, 0.8))
    assert (restored.name, restored.reduction) == ("my_loss", "sum")
    assert restored.get_config() == loss.get_config()
    assert restored.weights_variable is not loss.weights_variable


# Keras' own save path warns under NumPy 2 (with any loss); not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_model_with_adaptive_loss_saves_and_loads(data, tmp_path):
    x, y, _, _ = data
    model = make_model(AdaptiveLoss(0.3, 0.7))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(restored.loss, AdaptiveLoss)
    assert (restored.loss.mse_weight, restored.loss.mae_weight) == pytest.approx((0.3, 0.7))
    expected = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert restored.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-6)


class _SetWeightsEachEpoch(keras.callbacks.Callback):
    """Assigns given loss weights at the start of each epoch."""

    def __init__(self, loss, schedule):
        super().__init__()
        self.loss, self.schedule = loss, schedule

    def on_epoch_begin(self, epoch, logs=None):
        self.loss.assign_weights(*self.schedule[epoch])


@pytest.mark.parametrize("jit_compile, steps_per_execution", [(False, 1), (True, 1), (False, 3), (True, 3)])
def test_compiled_step_reads_the_weight_variable(data, jit_compile, steps_per_execution):
    x, y, _, _ = data
    loss = AdaptiveLoss()
    model = make_model(loss, jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    schedule = [(1.0, 0.0), (0.0, 1.0), (0.25, 0.75)]
    fit = model.fit(x, y, batch_size=16, epochs=3, callbacks=[_SetWeightsEachEpoch(loss, schedule)], verbose=0)
    assert not model.run_eagerly
    h = fit.history
    assert h["mse"][0] != pytest.approx(h["mae"][0], rel=0.05)  # the test can tell them apart
    assert h["loss"][0] == pytest.approx(h["mse"][0], **METRIC_TOL)
    assert h["loss"][1] == pytest.approx(h["mae"][1], **METRIC_TOL)
    assert h["loss"][2] == pytest.approx(0.25 * h["mse"][2] + 0.75 * h["mae"][2], **METRIC_TOL)

    # The already-compiled test step, too.
    for weights, metric in [((1.0, 0.0), "mse"), ((0.0, 1.0), "mae")]:
        loss.assign_weights(*weights)
        result = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
        assert result["loss"] == pytest.approx(result[metric], **METRIC_TOL)


def test_callback_records_one_row_per_epoch_and_logs_the_weights(data, tmp_path):
    x, y, xv, yv = data
    loss = AdaptiveLoss()
    callback = AdaptiveLossCallback(loss, strategy="physics_aware")
    model = make_model(loss)  # its own model: the exact weights matter
    csv_path = tmp_path / "log.csv"
    epochs = 6
    fit = model.fit(
        x,
        y,
        batch_size=16,
        epochs=epochs,
        validation_data=(xv, yv),
        callbacks=[callback, keras.callbacks.CSVLogger(str(csv_path))],
        verbose=0,
    )
    h = fit.history
    rows = callback.history
    assert [row["epoch"] for row in rows] == list(range(epochs))
    assert list(rows[0]) == ["epoch", "mse", "mae", "val_r2", "mse_weight", "mae_weight", "combined_loss"]
    for k, row in enumerate(rows):
        assert row["mse"] == pytest.approx(h["mse"][k]) and row["mae"] == pytest.approx(h["mae"][k])
        assert row["val_r2"] == pytest.approx(h["val_r2_score"][k])
        assert (row["mse_weight"], row["mae_weight"]) == (h["mse_weight"][k], h["mae_weight"][k])
        assert row["mse_weight"] + row["mae_weight"] == pytest.approx(1.0)
        # The weights this epoch trained with produced its loss.
        assert row["combined_loss"] == pytest.approx(h["loss"][k], **METRIC_TOL)
    for k in range(4):  # exploration epochs
        assert rows[k]["mse_weight"] == pytest.approx((1 + math.sin(k)) / 2)
    # Epochs 4, 5 and the variable's final value follow the functional core.
    losses = [(row["mse"], row["mae"]) for row in rows]
    weights = [(row["mse_weight"], row["mae_weight"]) for row in rows]
    for k in (4, 5):
        expected = compute_loss_weights("physics_aware", loss_history=losses[:k], weight_history=weights[:k], epoch=k)
        assert weights[k] == expected
    final = compute_loss_weights("physics_aware", loss_history=losses, weight_history=weights, epoch=epochs)
    assert (loss.mse_weight, loss.mae_weight) == pytest.approx(final, abs=1e-7)
    with open(csv_path, newline="") as handle:
        logged = list(csv.DictReader(handle))
    assert len(logged) == epochs and float(logged[1]["mse_weight"]) == pytest.approx(weights[1][0])


def test_callback_without_validation_uses_training_r2(data, shared):
    x, y, _, _ = data
    model, loss = shared
    callback = AdaptiveLossCallback(loss, strategy="r2_based")
    fit = model.fit(x, y, batch_size=16, epochs=2, callbacks=[callback], verbose=0)
    rows = callback.history
    assert all(math.isnan(row["val_r2"]) for row in rows)
    assert (rows[0]["mse_weight"], rows[0]["mae_weight"]) == (0.55, 0.45)  # neutral R² 0.5 at epoch 0
    expected = compute_loss_weights("r2_based", prev_r2=fit.history["r2_score"][0])
    assert (rows[1]["mse_weight"], rows[1]["mae_weight"]) == expected


@pytest.mark.parametrize("strategy", LOSS_WEIGHTING_STRATEGIES)
def test_every_strategy_trains_in_graph_mode(data, shared, strategy):
    x, y, xv, yv = data
    model, loss = shared
    callback = AdaptiveLossCallback(loss, strategy, alpha=0.5)
    fit = model.fit(x, y, batch_size=32, epochs=3, validation_data=(xv, yv), callbacks=[callback], verbose=0)
    assert not model.run_eagerly
    assert len(callback.history) == 3
    assert all(math.isfinite(v) for v in fit.history["loss"])
    for row in callback.history:
        assert row["mse_weight"] >= 0 and row["mae_weight"] >= 0
        assert row["mse_weight"] + row["mae_weight"] == pytest.approx(1.0)
        assert row["combined_loss"] == pytest.approx(fit.history["loss"][row["epoch"]], **METRIC_TOL)


def test_second_fit_starts_a_fresh_schedule(data, shared):
    x, y, _, _ = data
    model, loss = shared
    callback = AdaptiveLossCallback(loss, strategy="physics_aware")
    model.fit(x, y, batch_size=32, epochs=3, callbacks=[callback], verbose=0)
    first = [row["mse_weight"] for row in callback.history]
    model.fit(x, y, batch_size=32, epochs=2, callbacks=[callback], verbose=0)
    assert [row["epoch"] for row in callback.history] == [0, 1]
    assert [row["mse_weight"] for row in callback.history] == first[:2]


def test_callback_needs_the_mse_and_mae_metrics(data):
    x, y, _, _ = data
    loss = AdaptiveLoss()
    callback = AdaptiveLossCallback(loss, strategy="r2_based")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=loss)
    with pytest.raises(ValueError, match="metrics=\\['mse', 'mae'"):
        model.fit(x, y, epochs=1, callbacks=[callback], verbose=0)


def test_callback_refuses_a_model_compiled_with_another_loss(data):
    x, y, _, _ = data
    callback = AdaptiveLossCallback(AdaptiveLoss(), strategy="r2_based")
    model = make_model("mse")
    with pytest.raises(ValueError, match="not compiled with this callback's AdaptiveLoss"):
        model.fit(x, y, epochs=1, callbacks=[callback], verbose=0)


def test_callback_validates_its_arguments():
    with pytest.raises(TypeError, match="AdaptiveLoss"):
        AdaptiveLossCallback("mse")
    with pytest.raises(ConfigError, match="physics_aware"):
        AdaptiveLossCallback(AdaptiveLoss(), strategy="bogus")


def test_build_adaptive_loss_from_config():
    loss, callback = build_adaptive_loss({"loss_weighting_strategy": "fixed", "mse_weight": 3.0, "mae_weight": 1.0})
    assert (loss.mse_weight, loss.mae_weight) == (0.75, 0.25)  # epoch-0 weights already assigned
    assert callback.loss is loss and callback.strategy == "fixed"

    cfg = Config.from_flat(
        {
            "loss_weighting_strategy": "relobralo",
            "relobralo_alpha": 0.9,
            "relobralo_temperature": 0.5,
            "relobralo_expected_lookback": 0.8,
            "softadapt_beta": 2.0,
            "seed": 7,
        }
    )
    _, callback = build_adaptive_loss(cfg)
    assert callback.scheduler.options == {
        "beta": 2.0,
        "alpha": 0.9,
        "temperature": 0.5,
        "expected_lookback": 0.8,
        "mse_weight": 0.5,
        "mae_weight": 0.5,
    }
    assert callback.scheduler.seed == 7

    loss, callback = build_adaptive_loss(None)
    assert callback.strategy == "physics_aware" and (loss.mse_weight, loss.mae_weight) == (0.5, 0.5)
    with pytest.raises(ConfigError, match="loss_weighting_strategy"):
        build_adaptive_loss({"loss_weighting_strategy": "bogus"})


@pytest.mark.parametrize(
    "module",
    [
        "nnlab.losses",
        "nnlab.losses._strategies",
        "nnlab.losses._scheduler",
        "nnlab.losses._adaptive_loss",
        "nnlab.losses._callback",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
