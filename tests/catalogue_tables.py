"""Bad-input catalogue cases of issue 24: a user's own table with `nnlab train` (run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

from typing import Any


def _rows(n: int, row) -> str:
    return "".join(row(i) for i in range(n))


HOUSES = "rownames,size,rooms,district,price,volume\n" + _rows(
    40, lambda i: f"{i + 1},{50 + i},{1 + i % 4},{'north' if i % 3 else 'south'},{100 + 3 * i},{i % 7}\n")
MISSING = "a,b,y\n" + _rows(20, lambda i: f"{'' if i in (3, 5) else i},{'?' if i == 7 else 2 * i},{i}\n")
TRAIN = "python main.py --epochs 1 --output-dir o --data"

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("table data", f"{TRAIN} t.csv --targets pricee", {"t.csv": HOUSES},
     ["error: data file t.csv: --targets (data_targets): no column 'pricee' in the table; did you mean 'price'?"]),
    ("table data", f"{TRAIN} t.csv --targets price --features size,room", {"t.csv": HOUSES},
     ["error: data file t.csv: --features (data_features): no column 'room' in the table; did you mean 'rooms'?"]),
    ("table data", f"{TRAIN} t.csv --targets price,volume --features size,price", {"t.csv": HOUSES},
     ["error: data file t.csv: column(s) ['price'] are given both as target and as feature; a target cannot be an "
      "input: drop them from --features (data_features)"]),
    ("table data", f"{TRAIN} t.csv --targets district", {"t.csv": HOUSES},
     ["error: data file t.csv: target column 'district' is not numeric (it holds text, e.g. 'south'); a target "
      "must be a number"]),
    ("table data", f"{TRAIN} t.csv --targets y", {"t.csv": MISSING},
     ["error: data file t.csv: missing values in 'a' (2 rows), 'b' (1 row); pass --drop-missing (config key "
      "data_drop_missing) to leave those rows out, or fill them in"]),
    ("table data", f"{TRAIN} t.csv --targets y",
     {"t.csv": "a,b,y\n" + _rows(20, lambda i: f"{i},{'inf' if i == 4 else 2 * i},{'-inf' if i == 9 else i}\n")},
     ["error: data file t.csv: infinite values in 'b' (1 row), 'y' (1 row); replace or remove them"]),
    ("table data", f"{TRAIN} t.csv --targets y", {"t.csv": "a,b,a,y\n1,2,3,4\n5,6,7,8\n"},
     ["error: data file t.csv: column name(s) repeated in the header: ['a']; every column name must be unique"]),
    ("table data", f"{TRAIN} t.csv --targets y", {"t.csv": "a,y\n1,2\n3,4\n5,6\n"},
     ["error: data file t.csv: too few rows (3) to split with test_size=0.2, val_size=0.2: would give 1 train / "
      "1 val / 1 test rows; need at least 2 training rows and 1 validation row"]),
    ("table data", f"{TRAIN} t.csv --targets y --drop-missing",
     {"t.csv": "a,y\n" + _rows(12, lambda i: f"{'' if i > 2 else i},{i}\n")},
     ["error: data file t.csv: too few rows (3) to split"]),
    ("table data", f"{TRAIN} t.csv --targets y", {"t.csv": "a,name,y\n" + _rows(30, lambda i: f"{i},n{i},{i}\n")},
     ["error: data file t.csv: text column 'name' has 19 categories in 19 training rows; at most 3 are allowed "
      "(one per 5 training rows, at most 1000): leave it out of --features, or encode it as a number"]),
    ("table data", f"{TRAIN} t.csv --targets price --set physics_loss_weight=0.1", {"t.csv": HOUSES},
     ["error: physics_loss_weight = 0.1: the physics-informed loss applies to the particle task only, and this "
      "run predicts price from a table; set physics_loss_weight to 0"]),
    ("table data", "python main.py --epochs 1 --output-dir o --targets price", {},
     ["error: data_targets = [\"price\"] chooses columns of a --data table, but no --data FILE is given (the "
      "simulated particles are the particle task); give --data FILE or unset data_targets"]),
    ("table data", f"{TRAIN} t.csv", {"t.csv": HOUSES},
     ["error: t.csv is not a particle CSV (it has none of the particle columns particle_id, mass, "
      "initial_velocity_x, initial_velocity_y, ...); to train on your own table, name the column(s) to predict "
      "with --targets COL[,COL...] (config key data_targets); its columns are rownames, size, rooms, district, "
      "price, volume"]),
    ("table data", f"{TRAIN} t.csv --features size", {"t.csv": HOUSES},
     ["error: invalid configuration:", "data_features chooses the input columns of a --data table and needs "
      "data_targets (--targets), the column(s) to predict"]),
    ("table data", f"{TRAIN} t.csv --targets a,,b", {"t.csv": HOUSES},
     ["nnlab train: error: argument --targets: expected comma-separated column names, got 'a,,b'"]),
    ("table data", f"{TRAIN} missing.csv --targets price", {}, ["error: --data: data file not found: missing.csv"]),
    ("table data", f"{TRAIN} t.csv --targets price",
     {"t.csv": "size;rooms;price\n1;2;3\n4;5;6\n"},
     ["error: data file t.csv looks ';'-, tab- or '|'-separated (header 'size;rooms;price'); nnlab reads "
      "comma-separated CSV: save it again with ',' between the values"]),
]
