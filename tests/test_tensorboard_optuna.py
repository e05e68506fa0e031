"""TensorBoard and Optuna by their own conventions, read back with their own readers.

TensorBoard: the column -> (writer, tag) map of ``keras.callbacks.TensorBoard``'s
layout, and a resume cutting both writers' event files (read with TensorBoard's
EventAccumulator). Optuna: a search's and a study's storage read with Optuna's
storage API (``optuna.load_study``) -- the objective's name, intermediate values
stepped by epoch from 1, a study unit's cell keys as trial parameters (and a study
created before they were stored, continued). Real training on tiny data (300
particles, 1-2 epochs, one hidden layer of 8), in-process through ``nnlab.cli.main``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
import tensorflow as tf
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nnlab.cli import main
from nnlab.integrations.tensorboard import cut_event_files, tensorboard_tag

REPO = Path(__file__).resolve().parents[1]
TINY = ["--num-particles", "300", "--config-dir", str(REPO / "ml_config"), "--set", "batch_size=32",
        "--set", "jit_compile=false", "--set", "tensorboard=false", "--set", "hidden_layers=[8]"]


def journal_study(path: Path) -> optuna.Study:
    """The study of a journal file, as optuna-dashboard opens it."""
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    [summary] = storage.get_all_studies()
    return optuna.load_study(study_name=summary.study_name, storage=storage)


# --- TensorBoard ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("column", "expected"), [
    ("train_loss", ("train", "epoch_loss")), ("val_loss", ("validation", "epoch_loss")),
    ("train_mse", ("train", "epoch_mse")), ("val_mae", ("validation", "epoch_mae")),
    ("val_rmse", ("validation", "epoch_rmse")), ("r2_score", ("validation", "epoch_r2")),
    ("learning_rate", ("train", "epoch_learning_rate")),
    ("physics_loss", ("train", "epoch_physics_loss")), ("val_physics_loss", ("validation", "epoch_physics_loss")),
    ("mse_weight", ("train", "loss_weights/mse_weight")),
    ("physics_loss_weight", ("train", "loss_weights/physics_loss_weight")),
    ("constraint/binary_precision_max/fraction_changed", ("train", "constraints/binary_precision_max/fraction_changed")),
    ("constraint/step_max_significant_bits", ("train", "constraints/step_max_significant_bits")),
    ("epoch_time", ("train", "system/epoch_time_s")), ("memory_mb", ("train", "system/memory_mb")),
    ("something_new", ("train", "something_new")),
])
def test_each_csv_column_has_its_keras_writer_and_tag(column, expected):
    assert tensorboard_tag(column) == expected


def test_a_resume_cuts_both_writers_after_the_checkpoint(tmp_path):
    for writer in ("train", "validation"):
        with tf.summary.create_file_writer(str(tmp_path / writer)).as_default():
            for step in range(1, 6):
                tf.summary.scalar("epoch_loss", float(step), step=step)
    assert cut_event_files(tmp_path, 3) == 4  # steps 4 and 5 of each writer
    for writer in ("train", "validation"):
        accumulator = EventAccumulator(str(tmp_path / writer), size_guidance={"tensors": 0})
        accumulator.Reload()
        assert [e.step for e in accumulator.Tensors("epoch_loss")] == [1, 2, 3], writer


# --- Optuna: pruning steps -----------------------------------------------------------------------

def test_intermediate_values_are_stepped_by_epoch_from_one():
    from nnlab.hpo._pruning import TrialPruningCallback

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = TrialPruningCallback(trial, monitor="val_loss")
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=3, verbose=0, callbacks=[callback])
    history = study._storage.get_trial(trial._trial_id).intermediate_values
    assert sorted(history) == [1, 2, 3]


def test_median_pruner_warm_up_is_still_the_first_fifth_of_the_epochs():
    from nnlab.hpo._worker import make_pruner

    # 10 epochs: epochs 1 and 2 are never pruned, epoch 3 is the first that can be (as before the steps moved).
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", startup_trials=1, epochs=10))
    good = study.ask()
    for epoch in range(1, 11):
        good.report(0.9, step=epoch)
    study.tell(good, 0.9)
    bad = study.ask()
    decisions = []
    for epoch in range(1, 4):
        bad.report(0.1, step=epoch)
        decisions.append(bad.should_prune())
    assert decisions == [False, False, True]


# --- Optuna: a search's and a study's storage ----------------------------------------------------

def test_search_objective_is_named_and_its_epochs_count_from_one(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"hidden_layers": [[8]], "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}))
    out = tmp_path / "out"
    assert main(["hpo", "--max-trials", "2", "--epochs", "2", "--presets", "fast_debug", "--space", str(space),
                 "--output-dir", str(out), *TINY]) == 0
    study = journal_study(out / "analysis" / "hpo_journal.log")
    assert study.metric_names == ["val_r2"]  # optuna-dashboard's axis, not "Objective 0"
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.value == pytest.approx(max(trial.intermediate_values.values()))  # the best validation R²


def _compare(out: Path, seeds: int) -> int:
    return main(["study", "compare", "--variant", "a=", "--variant", "b=learning_rate=0.01", "--seeds", str(seeds),
                 "--epochs", "1", "--output-dir", str(out), *TINY])


def test_study_units_carry_their_cell_keys_as_trial_parameters(tmp_path):
    out = tmp_path / "study"
    assert _compare(out, 2) == 0
    study = journal_study(out / "study_journal.log")
    assert study.metric_names == ["test_r2"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted((t.params["variant"], t.params["seed"]) for t in trials) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    for trial in trials:
        assert trial.distributions == {"variant": CategoricalDistribution(["a", "b"]), "seed": IntDistribution(0, 1)}
        assert json.loads(trial.user_attrs["cell"]) == {"variant": trial.params["variant"]}  # the study's own record
        assert trial.user_attrs["seed"] == trial.params["seed"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        importances = optuna.importance.get_param_importances(study)
    assert set(importances) == {"variant", "seed"}


def test_a_study_stored_before_the_parameters_continues_with_them(tmp_path, monkeypatch):
    import nnlab.study._engine as engine
    import nnlab.study._worker as worker

    out = tmp_path / "study"
    with monkeypatch.context() as old:  # the study as the previous version stored it: no params, no metric name
        old.setattr(worker, "_record_unit_params", lambda *args: None)
        old.setattr(engine, "name_objective", lambda *args: None)
        assert _compare(out, 1) == 0
    before = journal_study(out / "study_journal.log")
    assert before.metric_names is None and all(not t.params for t in before.get_trials())
    assert _compare(out, 2) == 0  # one more seed: the first seed's units are kept, the second's run
    study = journal_study(out / "study_journal.log")
    assert study.metric_names == ["test_r2"]
    trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert [t.user_attrs["seed"] for t in trials] == [0, 0, 1, 1]
    assert [t.params for t in trials[:2]] == [{}, {}]
    assert sorted(t.params["variant"] for t in trials[2:]) == ["a", "b"]
    assert all(t.params["seed"] == 1 for t in trials[2:])
