"""Bad-input catalogue cases of issue 25: `nnlab predict` refusals, all before a network is loaded
(run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
The runs here are faked: a record (default configuration) and, where the input's values are
checked, the scalers and a weights file that is never opened (every refusal comes first).
"""

from __future__ import annotations

import json
from typing import Any

RUN_ID = "20260101-000000-000000-p1"
RUN_DIR = f"o/runs/{RUN_ID}"
INITIAL = ["mass", "initial_velocity_x", "initial_velocity_y", "initial_position_x", "initial_position_y", "charge",
           "magnetic_field_strength", "simulation_time"]
DERIVED = ["initial_speed", "initial_position_mag", "initial_momentum_x", "initial_momentum_y",
           "initial_momentum_mag", "momentum_dot_position", "charge_field_product", "abs_charge",
           "cyclotron_frequency", "cyclotron_phase", "lorentz_force_mag", "sim_time_field", "time_squared",
           "sin_cyclotron_phase", "cos_cyclotron_phase"]
TARGETS = ["final_velocity_x", "final_velocity_y", "final_position_x", "final_position_y", "kinetic_energy",
           "displacement"]


def _scaler(n: int) -> dict[str, Any]:
    return {"mean_": [0.0] * n, "scale_": [1.0] * n, "var_": [1.0] * n, "n_samples_seen_": 100}


def _scalers(features: list[str], targets: list[str], **task: Any) -> str:
    return json.dumps({"format_version": 1, "feature_names": features, "target_names": targets,
                       "x_scaler": _scaler(len(features)), "y_scaler": _scaler(len(targets)), **task})


RECORD = {f"{RUN_DIR}/training_config.json": '{"config": {}}'}
# A particle run as far as predict reads it before its network: record, scalers, a weights file.
PARTICLE_RUN = {**RECORD, f"{RUN_DIR}/scalers.json": _scalers(INITIAL + DERIVED, TARGETS),
                f"{RUN_DIR}/weights/final.weights.h5": "never opened: the input is refused first\n"}
TABLE_RUN = {f"{RUN_DIR}/training_config.json": '{"config": {"data_targets": ["price"]}}',
             f"{RUN_DIR}/scalers.json": _scalers(["area", "district=east", "district=north"], ["price"],
                                                 task="table", columns=["area", "district"],
                                                 encodings={"district": ["east", "north"]}),
             f"{RUN_DIR}/weights/final.weights.h5": "never opened: the input is refused first\n"}

ROW = "1.5,1.0,-2.0,0.5,0.0,1.0,0.8,3.0"
PARTICLES = ",".join(INITIAL) + "\n" + ROW + "\n"
PREDICT = "nnlab predict in.csv --output-dir o --out p.csv"

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("predict", PREDICT, {"in.csv": PARTICLES},
     ["error: no runs in 'o/runs': run `python main.py` first"]),
    ("predict", f"{PREDICT} --run 20250101-nope", {**RECORD, "in.csv": PARTICLES},
     [f"error: unknown run id '20250101-nope' in 'o/runs'; available: {RUN_ID}"]),
    ("predict", PREDICT, {**RECORD, "in.csv": PARTICLES},
     [f"error: run {RUN_ID} has no final weights ({RUN_DIR}/weights/final.weights.h5) (the run did not finish: "
      "resume it first)"]),
    ("predict", f"{PREDICT} --weights last", {**RECORD, "in.csv": PARTICLES},
     ["nnlab predict: error: argument --weights: invalid choice: 'last' (choose from 'final', 'best')"]),
    ("predict", PREDICT, RECORD, ["error: INPUT: input file not found: in.csv"]),
    ("predict", PREDICT, {**RECORD, "in.csv": "<directory>"},
     ["error: INPUT: input file in.csv is a directory, not a regular file"]),
    ("predict", PREDICT, {**RECORD, "in.csv": "<named pipe>"},
     ["error: INPUT: input file in.csv is a named pipe, not a regular file"]),
    ("predict", PREDICT, {**RECORD, "in.csv": ""}, ["error: INPUT: input file in.csv is empty (0 bytes)"]),
    ("predict", PREDICT, {**RECORD, "in.csv": PARTICLES, "p.csv": "earlier predictions\n"},
     ["error: --out: 'p.csv' already exists; choose another file or pass --force to replace it"]),
    ("predict", f"{PREDICT}/", {**RECORD, "in.csv": PARTICLES},
     ["error: --out: 'p.csv/' names a directory; give a file name (e.g. p.csv/predicted.csv)"]),
    ("predict", f"{PREDICT} --force", {**RECORD, "in.csv": PARTICLES, "p.csv": "<directory>"},
     ["error: --out: 'p.csv' is a directory, not a regular file; give the name of a file to write"]),
    ("predict", f"{PREDICT} --force", {**RECORD, "in.csv": PARTICLES, "p.csv": "<named pipe>"},
     ["error: --out: 'p.csv' is a named pipe, not a regular file; give the name of a file to write"]),
    ("predict", "nnlab predict in.csv --output-dir o --out in.csv --force", {**RECORD, "in.csv": PARTICLES},
     ["error: --out: 'in.csv' is the input file; write the predictions to another file"]),
    ("predict", PREDICT, {**PARTICLE_RUN, "in.csv": "mass,charge\n1.0,1.0\n"},
     ["error: input file in.csv: missing input column(s) ['initial_velocity_x', 'initial_velocity_y', "
      "'initial_position_x', 'initial_position_y', 'magnetic_field_strength', 'simulation_time']; the run's "
      "network takes ['mass', "]),
    ("predict", PREDICT, {**PARTICLE_RUN, "in.csv": ";".join(INITIAL) + "\n" + ROW.replace(",", ";") + "\n"},
     ["error: input file in.csv: missing input column(s) ['mass', ", "the header looks ';'-separated ('mass;initial_"
      "velocity_x;initial_velocity'): nnlab reads comma-separated CSV, save it again with ',' between the "
      "values"]),
    ("predict", PREDICT, {**PARTICLE_RUN, "in.csv": ",".join(INITIAL) + "\n"},
     ["error: input file in.csv: a header but no data rows"]),
    ("predict", PREDICT, {**PARTICLE_RUN, "in.csv": ",".join(INITIAL) + ",predicted_displacement\n" + ROW + ",0\n"},
     ["error: input file in.csv: column(s) ['predicted_displacement'] already exist; the predictions are written "
      "under these names: rename or drop them in the input"]),
    ("predict", PREDICT, {**PARTICLE_RUN, "in.csv": PARTICLES + "0.0,fast,-2.0,0.5,0.0,inf,0.8,-3.0\n"},
     ["error: input file in.csv: 4 problems:",
      "column 'initial_velocity_x': 1 row(s) (data row 2) hold non-numbers, e.g. 'fast'",
      "column 'charge': 1 row(s) (data row 2) are missing, NaN or infinite",
      "column 'mass': 1 row(s) (data row 2) have mass <= 0 (a particle's mass must be positive)",
      "column 'simulation_time': 1 row(s) (data row 2) are negative (a simulation time is >= 0)"]),
    ("predict", PREDICT, {**PARTICLE_RUN, "in.csv": PARTICLES + "1e-300,1e100,0,0,0,1,1,1\n"},
     ["error: input file in.csv: derived feature(s) cyclotron_frequency, cyclotron_phase: 1 row(s) (data row 2) "
      "overflow (not finite or |value| > 1e+150) when computed from the initial columns"]),
    ("predict", PREDICT, {**TABLE_RUN, "in.csv": "area,district\n50,north\n70,west\n"},
     ["error: input file in.csv: column 'district' holds 'west', not a category seen in training (known: east, "
      "north)"]),
]
