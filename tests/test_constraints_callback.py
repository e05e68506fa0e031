"""WeightConstraintCallback inside model.fit (graph mode) and on its own."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from nnlab.constraints import (
    AdaptiveOscillationDampener,
    BinaryChangeMax,
    BinaryPrecisionMax,
    JamesSteinShrinkage,
    OscillationDampener,
    WeightConstraintCallback,
    build_constraint_callback,
    significant_bits,
)


class Snapshot(keras.callbacks.Callback):
    """Copies of the trainable weights at every epoch end, by variable path."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict[str, np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({v.path: np.array(v.numpy()) for v in self.model.trainable_weights})


def small_model(use_bias: bool = True) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="tanh", use_bias=use_bias),
            keras.layers.Dense(1, use_bias=use_bias),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


def data():
    x = np.random.default_rng(0).normal(size=(128, 4)).astype(np.float32)
    return x, (x @ np.float32([1.0, -2.0, 0.5, 0.0]))[:, None]


def fit_with(callback, tmp_path, epochs):
    keras.utils.set_random_seed(0)
    model = small_model()
    before, after = Snapshot(), Snapshot()
    log = tmp_path / "log.csv"
    x, y = data()
    history = model.fit(
        x, y, epochs=epochs, batch_size=32, verbose=0,
        callbacks=[before, callback, after, keras.callbacks.CSVLogger(str(log))],
    )
    return SimpleNamespace(model=model, callback=callback, before=before, after=after, history=history, log=log)


@pytest.fixture(scope="module")
def interval_run(tmp_path_factory):
    callback = WeightConstraintCallback([BinaryPrecisionMax(4), OscillationDampener()], interval=2)
    return fit_with(callback, tmp_path_factory.mktemp("interval"), epochs=4)


@pytest.fixture(scope="module")
def config_run(tmp_path_factory):
    callback = build_constraint_callback(
        {
            "constraint_interval": 1,
            "constraint_targets": "kernel",
            "max_binary_digits": 10,
            "max_additional_binary_digits": 2,
            "binary_rounding": "stochastic",
            "enable_james_stein": True,
            "seed": 3,
        }
    )
    return fit_with(callback, tmp_path_factory.mktemp("config"), epochs=3)


# ---------------------------------------------------------------------------
# Inside model.fit


def test_weights_change_only_on_interval_epochs_in_graph_mode(interval_run):
    assert interval_run.model.run_eagerly is False
    for epoch, (before, after) in enumerate(zip(interval_run.before.epochs, interval_run.after.epochs)):
        changed = any(not np.array_equal(before[k], after[k]) for k in before)
        assert changed == (epoch in (1, 3)), f"epoch {epoch}"
        if epoch in (1, 3):
            assert all((significant_bits(w) <= 4).all() for w in after.values())


def test_stats_are_in_the_history_logs_and_csv(interval_run):
    logs = interval_run.history.history
    assert logs["constraint/applied"] == [0.0, 1.0, 0.0, 1.0]
    assert logs["constraint/non_finite"] == [0.0] * 4
    changed = logs["constraint/binary_precision_max/fraction_changed"]
    # The dampener has recorded only two applications: it has not changed anything yet.
    assert logs["constraint/oscillation_dampener/fraction_changed"] == [0.0] * 4
    assert logs["constraint/oscillation_dampener/fraction_oscillating"] == [0.0] * 4
    for epoch in (1, 3):
        before, after = interval_run.before.epochs[epoch], interval_run.after.epochs[epoch]
        total = sum(w.size for w in before.values())
        differ = sum(int((before[k] != after[k]).sum()) for k in before)
        mean_abs = sum(float(np.abs(after[k].astype(np.float64) - before[k]).sum()) for k in before) / total
        assert changed[epoch] == pytest.approx(differ / total)
        assert logs["constraint/binary_precision_max/mean_abs_change"][epoch] == pytest.approx(mean_abs, rel=1e-5)
    assert changed[0] == changed[2] == 0.0 and changed[1] > 0.5
    with open(interval_run.log, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["constraint/applied"]) for r in rows] == [0.0, 1.0, 0.0, 1.0]
    assert float(rows[3]["constraint/binary_precision_max/fraction_changed"]) == pytest.approx(changed[3])
    cb = interval_run.callback
    assert [h["epoch"] for h in cb.history] == [0, 1, 2, 3]
    assert all(h[k] == logs[k][h["epoch"]] for h in cb.history for k in cb.log_keys)


def test_the_chain_is_compiled_functions_each_traced_once(interval_run):
    assert interval_run.callback.tracing_counts() == [1, 1, 1]


def test_config_built_callback_applies_every_constraint_to_kernels_only(config_run):
    callback = config_run.callback
    assert [c.name for c in callback.constraints] == [
        "adaptive_oscillation_dampener", "binary_change_max", "binary_precision_max", "james_stein",
    ]
    logs = config_run.history.history
    assert set(callback.log_keys) <= set(logs)
    assert "constraint/james_stein/mean_factor" in callback.log_keys
    assert "constraint/adaptive_oscillation_dampener/fraction_oscillating" in callback.log_keys
    assert logs["constraint/applied"] == [1.0, 1.0, 1.0]
    assert all(np.isfinite(logs[k]).all() for k in callback.log_keys)
    # James-Stein estimates the noise from the second application on.
    assert logs["constraint/james_stein/mean_factor"][0] == 1.0
    assert 0.0 < logs["constraint/james_stein/mean_factor"][2] < 1.0
    for before, after in zip(config_run.before.epochs, config_run.after.epochs):
        for path in before:
            same = np.array_equal(before[path], after[path])
            assert same == path.endswith("bias"), path


# ---------------------------------------------------------------------------
# Outside fit: apply(), special values, options, errors


def test_non_finite_weights_are_counted_and_left_alone():
    model = small_model()
    kernel = model.layers[0].kernel
    values = kernel.numpy()
    values[0, 0], values[1, 1] = np.nan, np.inf
    kernel.assign(values)
    callback = WeightConstraintCallback([BinaryPrecisionMax(3), JamesSteinShrinkage(noise_variance=1e-4)])
    callback.set_model(model)
    stats = callback.apply()
    assert stats["constraint/non_finite"] == 2.0
    out = kernel.numpy()
    assert np.isnan(out[0, 0]) and out[1, 1] == np.inf
    assert np.isfinite(np.delete(out.ravel(), [0, 9])).all()
    assert stats["constraint/binary_precision_max/fraction_changed"] > 0.5


def test_constraints_are_put_in_chain_order_and_xla_is_optional():
    given = [JamesSteinShrinkage(noise_variance=0.01), BinaryPrecisionMax(6), BinaryChangeMax(3), OscillationDampener()]
    results = []
    for jit in (True, False):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])  # small: XLA compiles fast
        callback = WeightConstraintCallback(
            [JamesSteinShrinkage(noise_variance=0.01), BinaryPrecisionMax(6), BinaryChangeMax(3), OscillationDampener()],
            jit_compile=jit,
        )
        callback.set_model(model)
        stats = [callback.apply() for _ in range(2)]
        results.append(([w.numpy() for w in model.trainable_weights], stats))
    assert [c.name for c in WeightConstraintCallback(given).constraints] == [
        "oscillation_dampener", "binary_change_max", "binary_precision_max", "james_stein",
    ]
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for key in results[0][1][1]:
        assert results[0][1][1][key] == pytest.approx(results[1][1][1][key], rel=1e-5, abs=1e-9)


def test_targets_select_weights_and_missing_targets_fail_loud():
    model = small_model(use_bias=False)
    callback = WeightConstraintCallback([AdaptiveOscillationDampener()], targets="bias")
    callback.set_model(model)
    with pytest.raises(ValueError, match="targets='bias'"):
        callback.apply()


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ([], {}, ValueError),
        ([BinaryPrecisionMax(4), BinaryPrecisionMax(5)], {}, ValueError),
        (["max_bits"], {}, TypeError),
        ([BinaryPrecisionMax(4)], {"interval": 0}, ValueError),
        ([BinaryPrecisionMax(4)], {"interval": 1.5}, ValueError),
        ([BinaryPrecisionMax(4)], {"targets": "weights"}, ValueError),
    ],
)
def test_bad_callback_arguments_raise(args, kwargs, error):
    with pytest.raises(error):
        WeightConstraintCallback(args, **kwargs)


@pytest.mark.parametrize("rounding, james_stein, dampener, jit", [
    ("truncate", False, OscillationDampener, False), ("nearest", False, OscillationDampener, False),
    ("truncate", True, OscillationDampener, False),
    # The XLA-compiled core (jit_compile, the training default) and the adaptive dampener.
    ("truncate", False, AdaptiveOscillationDampener, True), ("nearest", False, OscillationDampener, True),
    ("nearest", False, AdaptiveOscillationDampener, False), ("truncate", True, AdaptiveOscillationDampener, True),
])
def test_joined_chain_gives_the_values_of_weight_by_weight_application(rounding, james_stein, dampener, jit):
    # The callback runs the elementwise constraints on all weights joined into one vector;
    # each weight must come out as the same chain applied to it alone, application after
    # application (the state, "seen" included, split back per weight). Bit for bit without
    # James-Stein; with it (per weight, after the joined part; a norm, summed in another order
    # by XLA in the reference) to float32 rounding.
    rng = np.random.default_rng(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7), keras.layers.PReLU(), keras.layers.Dense(3)])

    def chain():
        return [dampener(), BinaryChangeMax(3, rounding=rounding), BinaryPrecisionMax(10, rounding=rounding),
                *([JamesSteinShrinkage()] if james_stein else [])]

    callback = WeightConstraintCallback(chain(), interval=1, jit_compile=jit)
    callback.set_model(model)
    reference = {v.path: chain() for v in model.trainable_weights}
    for application in range(5):
        for v in model.trainable_weights:  # moves up and down, as training does: the dampener sees swings
            v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32) * (-1) ** application)
        before = {v.path: v.numpy() for v in model.trainable_weights}
        oscillating = callback.apply()[f"constraint/{dampener.name}/fraction_oscillating"]
        for v in model.trainable_weights:
            expected = before[v.path]
            for constraint in reference[v.path]:
                expected = constraint.apply(expected)
            if james_stein:
                np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-7)
            else:
                np.testing.assert_array_equal(v.numpy(), expected, err_msg=f"{v.path}, application {application}")
        assert (oscillating > 0) == (application >= 2)  # the dampener only records at its first two
    assert callback.constraints[0]._states[callback._keys[0]]["seen"].numpy() == 2  # capped at 2 per weight


def test_xla_core_gives_the_plain_graph_values_with_stochastic_rounding():
    # jit_compile compiles the chain's elementwise core with XLA: the same seeded draws, so the
    # same bits as the plain graph, application after application (the statistics' float32 sums
    # to rounding).
    rng = np.random.default_rng(5)
    models = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(64), keras.layers.Dense(2)]) for _ in range(2)]
    models[1].set_weights(models[0].get_weights())
    callbacks = []
    for model, jit in zip(models, (False, True)):
        chain = [AdaptiveOscillationDampener(), BinaryChangeMax(2, rounding="stochastic", seed=7),
                 BinaryPrecisionMax(6, rounding="stochastic", seed=8)]
        callbacks.append(WeightConstraintCallback(chain, interval=1, jit_compile=jit))
        callbacks[-1].set_model(model)
    for application in range(4):
        noise = [rng.normal(0, 0.05, w.shape).astype(np.float32) * (-1) ** application for w in models[0].get_weights()]
        stats = []
        for model, callback in zip(models, callbacks):
            model.set_weights([w + n for w, n in zip(model.get_weights(), noise)])
            stats.append(callback.apply())
        assert stats[0] == pytest.approx(stats[1], rel=1e-6)  # float32 sums, added in another order by XLA
        for plain, compiled in zip(models[0].get_weights(), models[1].get_weights()):
            np.testing.assert_array_equal(plain, compiled)
