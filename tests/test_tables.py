"""A user's own regression table: choosing columns, encoding, checks, and real training on it (issue 24)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnlab.config import Config
from nnlab.data import (
    TableEncoding,
    encode_table,
    load_scalers,
    prepare_table,
    split_indices,
)
from nnlab.errors import ConfigError, DataValidationError
from nnlab.runs import DataSource
import _forked

REPO = Path(__file__).resolve().parents[1]


def make_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Numeric and text features, a row-number column, and two learnable targets."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "area": rng.uniform(30, 150, n),
        "rooms": rng.integers(1, 6, n),
        "built": 1.6e9 + rng.uniform(0, 1e5, n),  # a timestamp: large offset, small spread
        "district": rng.choice(["north", "south", "east"], n),
    })
    bonus = df["district"].map({"north": 40.0, "south": -25.0, "east": 0.0})
    df["price"] = 2.0 * df["area"] + 15 * df["rooms"] + bonus + (df["built"] - 1.6e9) / 1e3
    df["rent"] = 0.01 * df["price"] - 0.5 * df["rooms"]
    return df


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("table") / "houses.csv"
    make_table().to_csv(path)  # pandas writes its index as a first, unnamed column
    return path


# --- preparing a table ------------------------------------------------------------------------------


def test_columns_encodings_and_row_index(table_csv, caplog):
    with caplog.at_level(logging.INFO, logger="nnlab.data"):
        data = prepare_table(table_csv, targets=["price", "rent"])
    assert "column 'Unnamed: 0' numbers the rows" in caplog.text
    assert data.task == "table" and not data.is_particle_task
    assert data.columns == ["area", "rooms", "built", "district"]
    assert data.encodings == {"district": ["east", "north", "south"]}
    assert data.feature_names == ["area", "rooms", "built", "district=east", "district=north", "district=south"]
    assert data.target_names == ["price", "rent"]
    assert data.X_train.shape == (192, 6) and data.y_test.shape == (60, 2)
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.float32


def test_scaling_uses_training_rows_and_keeps_resolution(table_csv):
    df = make_table()
    data = prepare_table(table_csv, targets=["price", "rent"])
    train, val, test = split_indices(len(df), 0.2, 0.2, 42)
    for j, column in enumerate(["area", "rooms", "built"]):
        values = df[column].to_numpy(float)
        mean, std = values[train].mean(), values[train].std()
        assert data.x_scaler.mean_[j] == pytest.approx(mean, rel=1e-9)
        assert data.x_scaler.scale_[j] == pytest.approx(std, rel=1e-5)
        # float64 reference: the timestamp column is not rounded to float32 before scaling
        np.testing.assert_allclose(data.X_test[:, j], (values[test] - mean) / std, atol=2e-5)
    one_hot = data.X_train[:, 3:]
    assert set(np.unique(one_hot)) == {0.0, 1.0} and (one_hot.sum(axis=1) == 1).all()
    assert list(data.x_scaler.mean_[3:]) == [0, 0, 0] and list(data.x_scaler.scale_[3:]) == [1, 1, 1]
    y = df[["price", "rent"]].to_numpy()
    np.testing.assert_allclose(data.inverse_transform_targets(data.y_val), y[val], rtol=1e-5, atol=1e-4)


def test_chosen_features_keep_their_order_and_the_index_column_when_named(table_csv):
    data = prepare_table(table_csv, targets=["rent"], features=["district", "Unnamed: 0", "area"])
    assert data.columns == ["district", "Unnamed: 0", "area"]
    assert data.feature_names[:3] == ["district=east", "district=north", "district=south"]


def test_encode_table_matches_the_prepared_rows_and_refuses_unseen_categories(table_csv):
    df = make_table()
    data = prepare_table(table_csv, targets=["price", "rent"])
    encoding = TableEncoding(tuple(data.columns), {k: tuple(v) for k, v in data.encodings.items()})
    _, _, test = split_indices(len(df), 0.2, 0.2, 42)
    np.testing.assert_allclose(encode_table(df.iloc[test], encoding, data.x_scaler), data.X_test, atol=2e-5)
    bad = df.iloc[:3].assign(district=["north", "west", "centre"])
    with pytest.raises(DataValidationError, match=r"column 'district' holds 'centre', 'west', not a category"):
        encode_table(bad, encoding, data.x_scaler)
    with pytest.raises(DataValidationError, match=r"lack the feature column\(s\) \['area'\]"):
        encode_table(df.drop(columns="area"), encoding, data.x_scaler)


def test_scalers_file_records_the_task(table_csv, tmp_path):
    data = prepare_table(table_csv, targets=["price", "rent"])
    doc = json.loads(data.save_scalers(tmp_path).read_text())
    assert doc["task"] == "table" and doc["encodings"] == {"district": ["east", "north", "south"]}
    loaded = load_scalers(tmp_path)
    assert (loaded.task, loaded.columns, loaded.encodings) == (data.task, data.columns, data.encodings)
    np.testing.assert_array_equal(loaded.x_scaler.mean_, data.x_scaler.mean_)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


def test_missing_values_counted_per_column_or_dropped(tmp_path, caplog):
    rows = "".join(f"{'' if i in (3, 5) else i},{'?' if i == 7 else 2 * i},{'NA' if i == 9 else i}\n"
                   for i in range(30))
    path = _write(tmp_path, "a,b,y\n" + rows)
    with pytest.raises(DataValidationError) as info:
        prepare_table(path, targets=["y"])
    assert "missing values in 'a' (2 rows), 'b' (1 row), 'y' (1 row); pass --drop-missing" in str(info.value)
    with caplog.at_level(logging.INFO, logger="nnlab.data"):
        data = prepare_table(path, targets=["y"], drop_missing=True)
    assert "--drop-missing left out 4 of 30 rows" in caplog.text
    assert len(data.X_train) + len(data.X_val) + len(data.X_test) == 26


def test_every_problem_is_reported_at_once(tmp_path):
    rows = "".join(f"{i},{'inf' if i == 2 else i},{'x' if i % 2 else 'z'},{'' if i == 4 else i}\n" for i in range(20))
    path = _write(tmp_path, "a,b,name,y\n" + rows)
    with pytest.raises(DataValidationError) as info:
        prepare_table(path, targets=["name", "y"])
    assert len(info.value.problems) == 3
    text = str(info.value)
    assert "3 problems" in text and "target column 'name' is not numeric (it holds text, e.g. 'z')" in text
    assert "missing values in 'y' (1 row)" in text and "infinite values in 'b' (1 row)" in text


@pytest.mark.parametrize(("header", "targets", "features", "message"), [
    ("a,b,price", ["pricee"], None, "--targets (data_targets): no column 'pricee' in the table; did you mean 'price'?"),
    ("a,b,price", ["price"], ["a", "bb"], "no column 'bb' in the table; did you mean 'b'?"),
    ("a,b,price", ["price"], ["a", "price"], "column(s) ['price'] are given both as target and as feature"),
    ("a,b,a,price", ["price"], None, "column name(s) repeated in the header: ['a']"),
])
def test_column_choices_are_checked_before_reading(tmp_path, header, targets, features, message):
    path = _write(tmp_path, header + "\n" + "1," * header.count(",") + "1\n")
    with pytest.raises(DataValidationError) as info:
        prepare_table(path, targets=targets, features=features)
    assert message in str(info.value)


def test_category_limit_and_constant_column(tmp_path):
    rows = "".join(f"{i},id{i},{i % 3},7,{i}\n" for i in range(60))
    path = _write(tmp_path, "a,name,g,k,y\n" + rows)
    with pytest.raises(DataValidationError, match=r"text column 'name' has 38 categories in 38 training rows; at "
                                                  r"most 7 are allowed \(one per 5 training rows, at most 1000\)"):
        prepare_table(path, targets=["y"])
    with pytest.warns(UserWarning, match=r"column 'k' is constant \(7\)"):
        data = prepare_table(path, targets=["y"], features=["a", "g", "k"])
    assert np.all(data.X_train[:, 2] == 0)


def test_a_category_only_in_test_rows_is_encoded_as_none(tmp_path):
    _, _, test = split_indices(40, 0.2, 0.2, 42)
    colour = ["red" if i % 2 else "blue" for i in range(40)]
    colour[test[0]] = "green"
    path = _write(tmp_path, "a,colour,y\n" + "".join(f"{i},{c},{i}\n" for i, c in enumerate(colour)))
    with pytest.warns(UserWarning, match="1 validation/test row\\(s\\) hold a category of 'colour'"):
        data = prepare_table(path, targets=["y"])
    assert data.encodings == {"colour": ["blue", "red"]}
    assert data.X_test[0, 1:].sum() == 0


def test_a_numeric_column_with_text_further_down_is_read_as_text(tmp_path, monkeypatch):
    monkeypatch.setattr("nnlab.data._table.CHUNK_ROWS", 10)  # the text appears in the third chunk
    rows = "".join(f"{i},{'high' if 25 <= i < 35 else i % 2},{i}\n" for i in range(60))
    data = prepare_table(_write(tmp_path, "a,level,y\n" + rows), targets=["y"])
    assert data.encodings == {"level": ["0", "1", "high"]}


# --- the data source and configuration --------------------------------------------------------------


def test_data_source_records_the_table_task(table_csv):
    cfg = Config.from_flat({"data_targets": "price,rent", "data_drop_missing": True})
    source = DataSource.for_config(cfg, csv_path=table_csv)
    assert source.task == "table" and source.targets == ("price", "rent") and source.drop_missing
    record = source.to_record()
    assert record["task"] == "table" and record["targets"] == ["price", "rent"] and record["drop_missing"] is True
    assert DataSource.from_record(record, cfg) == source
    assert "predicting price, rent" in source.describe()
    particle = DataSource.for_config(Config.from_flat({}), csv_path=table_csv)
    assert particle.task == "particles" and "task" not in particle.to_record()


def test_table_keys_need_a_table_and_physics_needs_particles(table_csv):
    with pytest.raises(ConfigError, match=r"data_targets = \[\"y\"\] chooses columns of a --data table"):
        DataSource.for_config(Config.from_flat({"data_targets": ["y"]}))
    cfg = Config.from_flat({"data_targets": ["price"], "physics_loss_weight": 0.5})
    with pytest.raises(ConfigError, match=r"physics_loss_weight = 0.5: the physics-informed loss applies to the "
                                          r"particle task only"):
        DataSource.for_config(cfg, csv_path=table_csv).check_config(cfg)
    with pytest.raises(ConfigError, match="data_features chooses the input columns of a --data table and needs "
                                          "data_targets"):
        Config.from_flat({"data_features": ["a"]})


# --- real training ------------------------------------------------------------------------------------


CONFIG = {"hidden_layers": [32, 16], "epochs": 40, "batch_size": 32, "seed": 3, "learning_rate": 0.01,
          "loss_weighting_strategy": "none", "checkpoint_every": 5, "tensorboard": False, "jit_compile": False}


@pytest.fixture(scope="module")
def trained(table_csv, tmp_path_factory):
    from nnlab.runs import RunSpec, execute

    cfg = Config.from_flat({**CONFIG, "data_targets": ["price", "rent"]})
    out = tmp_path_factory.mktemp("out")
    return execute(RunSpec(cfg, DataSource.for_config(cfg, csv_path=table_csv), output_dir=out)), out


def test_training_on_a_table_learns_both_targets(trained):
    result, _ = trained
    assert result.status == "completed"
    per_target = result.test["per_target_physical"]
    assert set(per_target) == {"price", "rent"}
    assert per_target["price"]["r2"] > 0.9 and per_target["rent"]["r2"] > 0.9
    assert result.test["physics"] == {"applicable": False, "reason": "the consistency relations are the particle "
                                      "task's; this run predicts price, rent from a user's table"}


def test_the_run_records_its_task_and_rebuilds_it_exactly(trained, table_csv):
    result, _ = trained
    saved = json.loads((result.run_dir / "training_config.json").read_text())
    data = saved["data"]
    assert (data["kind"], data["task"], data["targets"], data["csv_path"]) == (
        "csv", "table", ["price", "rent"], str(table_csv.resolve()))
    assert len(data["csv_sha256"]) == 64
    scalers = json.loads((result.run_dir / "scalers.json").read_text())
    assert scalers["encodings"] == {"district": ["east", "north", "south"]}
    rebuilt = DataSource.from_record(data, Config.from_flat(saved["config"])).prepare()
    assert rebuilt.feature_names == scalers["feature_names"]
    from nnlab.runs._runs import arrays_digest

    assert arrays_digest(tuple(rebuilt)) == data["arrays_sha256"]


def test_an_interrupted_table_run_resumes_on_its_table(table_csv, tmp_path):
    import keras

    from nnlab.runs import RunSpec, execute, resume

    class StopAfter(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.run_status = None

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 >= 2:
                self.model.stop_training, self.run_status = True, "interrupted"

    cfg = Config.from_flat({**CONFIG, "epochs": 4, "checkpoint_every": 1,
                            "data_targets": ["rent"], "data_features": ["area", "district"]})
    source = DataSource.for_config(cfg, csv_path=table_csv)
    first = execute(RunSpec(cfg, source, output_dir=tmp_path, callbacks=[StopAfter()]))
    assert first.status == "interrupted"
    resumed = resume(first.run_id, output_dir=tmp_path)
    assert resumed.status == "completed" and resumed.summary["total_epochs"] == 4
    assert list(resumed.test["per_target_physical"]) == ["rent"]
    assert resumed.test["physics"]["applicable"] is False


def test_main_py_trains_on_a_table(table_csv, tmp_path):
    proc = _forked.run(
        [sys.executable, str(REPO / "main.py"), "--data", str(table_csv), "--targets", "price,rent",
         "--features", "area,rooms,district", "--epochs", "2", "--set", "hidden_layers=[8]",
         "--set", "jit_compile=false", "--output-dir", str(tmp_path / "o"), "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "5 features -> 2 targets" not in proc.stdout  # --quiet: no announcement
    assert "physics consistency  not applicable" in proc.stdout
    assert "price" in proc.stdout and "rent" in proc.stdout
