"""Bad-input catalogue cases of issue 24: searches and studies on a user's table (run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
Every refusal comes before any trial or unit, and before the journal, the analysis directory or a run
is written.
"""

from __future__ import annotations

import math
from typing import Any

_KINDS = ("red", "green", "blue")
_SHIFT = {"red": 1.0, "green": 0.0, "blue": -1.0}


def table_text(n_rows: int) -> str:
    """A user's table as pandas writes it: a row-index column (read back as 'Unnamed: 0'), three numeric
    features a, b, c, a text feature kind (3 categories), and targets y1, y2 that are functions of them."""
    lines = [",a,b,c,kind,y1,y2"]
    for i in range(n_rows):
        a, b, c = math.sin(i * 1.3), math.cos(i * 0.7), ((i * 7) % 11) / 5 - 1
        kind = _KINDS[(i * 5 + i // 7) % 3]
        y1, y2 = 2 * a - b + _SHIFT[kind], a * c + 0.5 * b
        lines.append(f"{i},{a:.4f},{b:.4f},{c:.4f},{kind},{y1:.4f},{y2:.4f}")
    return "\n".join(lines) + "\n"


TABLE = table_text(60)
HPO = "nnlab hpo --max-trials 1 --epochs 1 --output-dir o"
STUDY = "nnlab study precision --bits 4 --rounding truncate --seeds 1 --epochs 1 --output-dir s"
COMPARE = "nnlab study compare --variant a= --seeds 1 --epochs 1 --output-dir s"
PHYSICS = ("physics_loss_weight = 0.1: the physics-informed loss applies to the particle task only, and this run "
           "predicts y1 from a table; set physics_loss_weight to 0")
NO_DATA = ('data_targets = ["y1"] chooses columns of a --data table, but no --data FILE is given (the simulated '
           "particles are the particle task); give --data FILE or unset data_targets")
UNKNOWN = "data file t.csv: --targets (data_targets): no column 'y_2' in the table; did you mean 'y2'?"

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("table in a search", f"{HPO} --data t.csv --targets y_2", {"t.csv": TABLE}, [f"error: {UNKNOWN}"]),
    ("table in a search", f"{HPO} --data t.csv --targets y1 --set physics_loss_weight=0.1", {"t.csv": TABLE},
     [f"error: {PHYSICS}"]),
    ("table in a search", f"{HPO} --targets y1", {}, [f"error: {NO_DATA}"]),
    ("table in a search", "python hpo_agent.py --data t.csv --targets y1 --space space.json --output-dir o",
     {"t.csv": TABLE, "space.json": '{"physics_loss_weight": [0.0, 0.5]}'},
     ["error: --space space.json: physics_loss_weight samples values up to 0.5; the physics-informed loss applies "
      "to the particle task only, and this search predicts y1 from a table: leave physics_loss_weight out of the "
      "space"]),
    ("table in a search", f"{HPO} --data t.csv --targets y1 --num-particles 500", {"t.csv": TABLE},
     ["error: --num-particles sets how many particles the search simulates; with --data FILE the file is used "
      "as found: drop one of them"]),
    ("table in a search", "python hpo_agent.py --data t.csv --targets y1 --space space.json --output-dir o",
     {"t.csv": TABLE, "space.json": '{"data_features": [["a"], ["a", "b"]]}'},
     ["data_features: changes the data, which is prepared once per search; set it with --targets, --features or "
      "--drop-missing instead"]),
    ("table in a study", f"{STUDY} --data t.csv --targets y_2", {"t.csv": TABLE}, [f"error: {UNKNOWN}"]),
    ("table in a study", f"{STUDY} --data t.csv --targets y1 --set physics_loss_weight=0.1", {"t.csv": TABLE},
     [f"error: {PHYSICS}"]),
    ("table in a study", f"{STUDY} --targets y1", {}, [f"error: {NO_DATA}"]),
    ("table in a study", f"{COMPARE} --variant b=physics_loss_weight=0.1 --data t.csv --targets y1",
     {"t.csv": TABLE}, [f"error: --variant b: {PHYSICS}"]),
    ("table in a study", f"{COMPARE} --variant b=data_targets=y2 --data t.csv --targets y1", {"t.csv": TABLE},
     ["error: --variant b: data_targets chooses the data, which every cell of a study shares; set it for the "
      "whole study with --targets, --features or --drop-missing"]),
]
