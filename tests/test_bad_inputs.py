"""The catalogue of bad inputs (docs/bad_inputs.md): every row is run here.

Each case is a command run in a fresh directory holding the case's files; it
must exit 2, print no traceback, and print the documented error. The catalogue
is generated from CASES, so the document and the tests cannot drift apart:

    python tests/test_bad_inputs.py --write-doc     # regenerate docs/bad_inputs.md
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _forked import ForkRunner

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"

GOOD_ROW = ("0,1.0,1.0,0.0,0.0,0.0,1.0,1.0,1.0,0.5403023058681398,-0.8414709848078965,"
            "0.8414709848078965,-0.45969769413186023,0.5,0.958851077208406,1.0")
HEADER = ("particle_id,mass,initial_velocity_x,initial_velocity_y,initial_position_x,initial_position_y,charge,"
          "magnetic_field_strength,simulation_time,final_velocity_x,final_velocity_y,final_position_x,"
          "final_position_y,kinetic_energy,displacement,trajectory_length")

NON_FINITE = "JSON NaN/Infinity is not allowed; configuration values must be finite numbers"
SEED_RANGE = "a seed must be an integer from 0 to 2**32 - 1 = 4294967295 (what NumPy and scikit-learn accept), or null"
_LONG = [64] * 5000 + ["wide"]
_LONG_SHOWN = json.dumps(_LONG)[:80] + f"… ({len(json.dumps(_LONG))} characters)"
_PARTICLES = HEADER + "\n" + GOOD_ROW + "\n"

GOOD_CSV = HEADER + "\n" + GOOD_ROW + "\n"
# mass 1e308: out of range, and m|v|^2/2 = 2e308 overflows float64 (inf) while the column holds 1e308.
HEAVY_CSV = HEADER + "\n" + "0,1e308,2.0,0.0,0.0,0.0,1.0,1.0,1.0,2.0,0.0,0.0,0.0,1e308,0.0,2.0\n"
# |v| = 1e200: |v|^2 overflows.
FAST_CSV = HEADER + "\n" + "0,1.0,1e200,0.0,0.0,0.0,1.0,1.0,1.0,1e200,0.0,0.0,0.0,1e100,0.0,1e200\n"

RUN = "o/runs/20260101-000000-000000-p1"
OLDER = "o/runs/20251231-000000-000000-p1"


def _status(status, **fields):
    return json.dumps({"status": status, "pid": 1, "hostname": "h", "updated": "2026-01-01T00:00:00+00:00",
                       **fields})

# The original lab's CSV: no displacement column, trajectory_length holding the displacement,
# velocities turning the other way for B along +z (GOOD_ROW with the rotation mirrored).
ORIGINAL_HEADER = HEADER.replace(",displacement", "")
ORIGINAL_ROW = ("0,1.0,1.0,0.0,0.0,0.0,1.0,1.0,1.0,0.5403023058681398,0.8414709848078965,"
                "0.8414709848078965,0.45969769413186023,0.5,0.958851077208406")
ORIGINAL_CSV = ORIGINAL_HEADER + "\n" + ORIGINAL_ROW + "\n"

# Special "files": a named pipe and a directory (content is a str for a plain file).
FIFO = "<named pipe>"
DIRECTORY = "<directory>"

# (area, command, {file: content}, expected error lines (each must appear in stderr, in order))
STUDY_RECORD_OTHER = '{"study_name": "someone-else", "storage": "study_journal.log", "spec": {}}'
STUDY_RECORD_SAME = '{"study_name": "nnlab-study-compare", "storage": "study_journal.log", "spec": {}}'
AB = "--variant a= --variant b=activation=relu"

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/model_config.json": '{"learing_rate": 0.01}'},
     ["error: model_config.json: unknown key 'learing_rate'; did you mean 'learning_rate'?"]),
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/model_config.json": '{"max_binary_digits": 30}'},
     ["error: invalid configuration:",
      "model_config.json: max_binary_digits = 30 is invalid: Input should be less than or equal to 24"]),
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/training_config.json": '{"epochs": 10,\n "batch_size": 32,}'},
     ["error: training_config.json: not valid JSON at line 2, column 19: Expecting property name enclosed "
      "in double quotes"]),
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/particle_generation_config.json": '[0.1, 10.0]'},
     ["error: particle_generation_config.json: must contain a JSON object of key/value pairs, got list"]),
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/particle_generation_config.json": '{"mass_range": [5.0, 1.0]}'},
     ["particle_generation_config.json: mass_range = [5.0, 1.0] is invalid: low must be <= high, "
      "got [5.0, 1.0]"]),
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/particle_generation_config.json": '{"mass_range": [0.0, 1.0]}'},
     ["particle_generation_config.json: mass_range = [0.0, 1.0] is invalid: masses must be > 0, "
      "got [0.0, 1.0]"]),
    ("configuration file", "nnlab config show --config-dir missing_dir", {},
     ["error: configuration directory 'missing_dir' does not exist or is not a directory"]),
    ("configuration file", "python main.py --config best.json",
     {"best.json": '{"hidden_layers": [64, "wide"]}'},
     ["best.json: hidden_layers[1] = [64, \"wide\"] is invalid: Input should be a valid integer"]),
    ("preset", "nnlab config show --preset turbo", {},
     ["error: unknown preset 'turbo'; available presets: baseline, deep_regularized, fast_debug"]),
    ("preset", "nnlab config show --config-dir cfg --preset mine",
     {"cfg/model_presets/mine.json": '{"hiden_layers": [8]}'},
     ["error: preset 'mine': unknown key 'hiden_layers'; did you mean 'hidden_layers'?"]),
    ("preset", "nnlab config show --config-dir cfg --preset mine",
     {"cfg/model_presets/mine.json": '{"activation": "sigmoidal"}'},
     ["preset 'mine': activation = \"sigmoidal\" is invalid: Input should be 'relu', 'tanh', 'elu', "
      "'gelu', 'swish' or 'prelu'"]),
    ("--set", "python main.py --set dropout_rate=1.5", {},
     ["--set: dropout_rate = 1.5 is invalid: Input should be less than 1"]),
    ("--set", "python main.py --set optimiser=adam", {},
     ["error: --set: unknown key 'optimiser'; did you mean 'optimizer'?"]),
    ("--set", "python main.py --set physics_loss_weight=-1", {},
     ["--set: physics_loss_weight = -1 is invalid: Input should be greater than or equal to 0"]),
    ("--set", "python main.py --set tensorboard_histogram_freq=-1", {},
     ["--set: tensorboard_histogram_freq = -1 is invalid: Input should be greater than or equal to 0"]),
    ("--set", "python main.py --set physics_loss_terms=[\"speed\",\"momentum\"]", {},
     ["--set: physics_loss_terms[1] = [\"speed\", \"momentum\"] is invalid: Input should be 'speed', "
      "'energy' or 'displacement'"]),
    ("--set", "python main.py --set physics_loss_terms=[\"speed\",\"speed\"]", {},
     ["--set: physics_loss_terms = [\"speed\", \"speed\"] is invalid: each term at most once"]),
    ("--set", "python main.py --set epochs", {},
     ["error: --set expects KEY=VALUE (e.g. learning_rate=0.001), got 'epochs'"]),
    ("--set", "python main.py --set epochs=abc", {},
     ["--set: epochs = \"abc\" is invalid: Input should be a valid integer, unable to parse string as an integer"]),
    ("--set", "python main.py --set use_batch_norm=yes", {},
     ["--set: use_batch_norm = \"yes\" is invalid: Input should be a valid boolean"]),
    ("--set", "python main.py --set max_binary_digits=true", {},
     ["--set: max_binary_digits = true is invalid: expected a number, not true/false"]),
    ("--set", "python main.py --set loss_weighting_strategy=magic", {},
     ["--set: loss_weighting_strategy = \"magic\" is invalid: Input should be 'r2_based', 'loss_based', "
      "'combined', 'physics_aware', 'softadapt', 'relobralo', 'fixed' or 'none'"]),
    ("--set", "python main.py --set mse_weight=0 --set mae_weight=0", {},
     ["mse_weight + mae_weight must be > 0 (they are normalised to sum 1)"]),
    ("CSV data", "nnlab data validate missing.csv", {},
     ["error: particle data file not found: missing.csv"]),
    ("CSV data", "nnlab data validate empty.csv", {"empty.csv": ""},
     ["error: particle data file empty.csv is empty (0 bytes)"]),
    ("CSV data", "nnlab data validate header_only.csv", {"header_only.csv": HEADER + "\n"},
     ["error: particle data file header_only.csv has a header but no data rows"]),
    ("CSV data", "nnlab data validate no_mass.csv", {"no_mass.csv": HEADER.replace("mass,", "") + "\n"
                                                     + GOOD_ROW.replace("0,1.0,", "0,", 1) + "\n"},
     ["error: no_mass.csv is invalid:", "missing required column(s): mass"]),
    ("CSV data", "nnlab data validate negative_mass.csv",
     {"negative_mass.csv": HEADER + "\n" + GOOD_ROW.replace("0,1.0,", "0,-1.0,", 1) + "\n"},
     ["error: negative_mass.csv is invalid:", "column 'mass': 1 row(s) (rows 0) have mass <= 0"]),
    ("CSV data", "nnlab data validate text_charge.csv",
     {"text_charge.csv": HEADER + "\n" + GOOD_ROW.replace(",1.0,1.0,1.0,0.54", ",x,1.0,1.0,0.54", 1) + "\n"},
     ["column 'charge' is not numeric"]),
    ("CSV data", "nnlab data validate energy.csv",
     {"energy.csv": HEADER + "\n" + GOOD_ROW.replace(",0.5,0.958", ",7.5,0.958", 1) + "\n"},
     ["column 'kinetic_energy': 1 row(s) (rows 0) differ from mass * |v_final|^2 / 2"]),
    ("CSV data", "python main.py --data missing.csv", {},
     ["error: --data: particle data file not found: missing.csv (create one with `nnlab data generate --out FILE`)"]),
    ("CLI arguments", "python main.py --epochs 0", {},
     ["nnlab train: error: argument --epochs: expected a positive integer, got 0"]),
    ("CLI arguments", "python main.py --batch-size many", {},
     ["nnlab train: error: argument --batch-size: expected a positive integer, got 'many'"]),
    ("CLI arguments", "python main.py --bogus", {},
     ["error: unrecognized arguments: --bogus"]),
    ("CLI arguments", "python main.py --output-dir blocker/out", {"blocker": "a file, not a directory"},
     ["error: output directory 'blocker/out' cannot be written: Not a directory"]),
    ("CLI arguments", "python main.py --resume", {},
     ["error: no runs in 'training_output/runs': run `python main.py` first"]),
    ("CLI arguments", "python main.py --resume latest --epochs 5", {},
     ["error: --resume continues a run with its own configuration and data; drop --epochs"]),
    ("CLI arguments", "nnlab data generate --out taken.csv", {"taken.csv": "precious"},
     ["error: --out: 'taken.csv' already exists; choose another file or pass --force to replace it"]),
    ("HPO search space", "python hpo_agent.py --space space.json", {"space.json": '{"learing_rate": [0.001]}'},
     ["error: --space space.json: unknown key 'learing_rate'; did you mean 'learning_rate'?"]),
    ("HPO search space", "python hpo_agent.py --space space.json",
     {"space.json": '{"activation": ["relu", "sigmoidal"]}'},
     ["error: --space space.json: invalid search space:",
      "activation choice: activation = \"sigmoidal\" is invalid: Input should be 'relu', 'tanh', 'elu', "
      "'gelu', 'swish' or 'prelu'"]),
    ("HPO search space", "python hpo_agent.py --space space.json",
     {"space.json": '{"learning_rate": {"low": 0.01, "high": 0.001}}'},
     ["learning_rate: low must be <= high, got low=0.01, high=0.001"]),
    ("HPO search space", "python hpo_agent.py --space space.json",
     {"space.json": '{"num_particles_default": [100]}'},
     ["num_particles_default: changes the data, which is prepared once per search; set it with --set or "
      "--num-particles instead"]),
    ("HPO search space", "python hpo_agent.py --space missing.json", {},
     ["error: --space missing.json: file not found"]),
    ("HPO arguments", "python hpo_agent.py --presets turbo", {},
     ["error: unknown preset 'turbo'; available presets: baseline, deep_regularized, fast_debug"]),
    ("HPO arguments", "python hpo_agent.py --max-trials 0", {},
     ["nnlab hpo: error: argument --max-trials: expected a positive integer, got 0"]),
    ("analysis arguments", "nnlab analyze", {},
     ["error: no training runs found in 'training_output/runs': run `python main.py` first (or pass "
      "--output-dir to the directory you trained into)"]),
    ("analysis arguments", "nnlab analyze --output-dir o --run nope",
     {"o/runs/20260101-000000-000000-p1/training_config.json": "{}"},
     ["error: unknown run id 'nope' in 'o/runs'; available runs:", "20260101-000000-000000-p1"]),
    ("analysis arguments", "nnlab analyze --skip bogus", {},
     ["nnlab analyze: error: argument --skip: unknown section(s) bogus; choose from artifacts, dynamics, "
      "learning_rate, residuals, predictions, baselines, james_stein, recommendations, heatmap, "
      "loss_and_constraints, physics"]),
    ("analysis arguments", "nnlab analyze --sample-size 0", {},
     ["nnlab analyze: error: argument --sample-size: expected an integer >= 1, got 0"]),

    # --- configuration files: size, depth, strict JSON, file type, seed range
    ("configuration file", "nnlab config show --config-dir cfg", {"cfg/model_config.json": "[" * 100000},
     ["error: model_config.json: JSON nested more than 32 levels deep (the limit for a configuration)"]),
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/training_config.json": '{"epochs": 5' + " " * (1 << 20) + "}"},
     ["error: training_config.json: is larger than 1048576 bytes (1 MiB), the limit for a configuration file"]),
    ("configuration file", "nnlab config show --config-dir cfg", {"cfg/model_config.json": '{"learning_rate": NaN}'},
     [f"error: model_config.json: learning_rate = NaN is invalid: {NON_FINITE}"]),
    ("configuration file", "python main.py --config best.json", {"best.json": '{"mass_range": [0.1, Infinity]}'},
     [f"error: best.json: mass_range[1] = Infinity is invalid: {NON_FINITE}"]),
    ("configuration file", "nnlab config show --config-dir cfg", {"cfg/model_config.json": '{"l2_regularization": 1e999}'},
     ["error: invalid configuration:",
      "model_config.json: l2_regularization = Infinity is invalid: Input should be a finite number"]),
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/training_config.json": '{"epochs": 5, "batch_size": 32, "epochs": 10}'},
     ["error: training_config.json: key 'epochs' appears more than once in one JSON object; keep one"]),
    ("configuration file", "python main.py --config best.json",
     {"best.json": '{"hidden_layers": [' + "64, " * 5000 + '"wide"]}'},
     [f"best.json: hidden_layers[5000] = {_LONG_SHOWN} is invalid: Input should be a valid integer"]),
    ("configuration file", "nnlab config show --config-dir cfg",
     {"cfg/particle_generation_config.json": '{"random_seed": -1}'},
     [f"particle_generation_config.json: random_seed = -1 is invalid: {SEED_RANGE}"]),
    ("configuration file", "python main.py --config pipe.json", {"pipe.json": FIFO},
     ["error: pipe.json: is a named pipe, not a regular file"]),
    ("configuration file", "python main.py --config /dev/zero", {},
     ["error: /dev/zero: is a character device, not a regular file"]),
    ("configuration file", "nnlab config show --config-dir cfg", {"cfg/model_config.json": DIRECTORY},
     ["error: model_config.json: is a directory, not a regular file"]),
    ("configuration file", "nnlab config show --config-dir cfg --preset mine", {"cfg/model_presets/mine.json": FIFO},
     ["error: preset 'mine' (cfg/model_presets/mine.json): is a named pipe, not a regular file"]),
    # --- --set
    ("--set", "python main.py --set epochs=NaN", {},
     [f"error: --set: epochs = NaN is invalid: {NON_FINITE}"]),
    ("--set", "python main.py --set learning_rate=Infinity", {},
     [f"error: --set: learning_rate = Infinity is invalid: {NON_FINITE}"]),
    ("--set", "python main.py --set learning_rate=inf", {},
     ["--set: learning_rate = \"inf\" is invalid: Input should be a finite number"]),
    ("--set", "python main.py --set seed=-1", {},
     [f"--set: seed = -1 is invalid: {SEED_RANGE}"]),
    ("--set", "python main.py --set hidden_layers=" + "[" * 40 + "]" * 40, {},
     ["error: --set hidden_layers: JSON nested more than 32 levels deep (the limit for a configuration)"]),
    # --- CLI arguments
    ("CLI arguments", "python main.py --conf x.json", {"x.json": '{"epochs": 1}'},
     ["error: unrecognized arguments: --conf x.json"]),
    ("CLI arguments", "python main.py --seed 4294967296", {},
     ["nnlab train: error: argument --seed: expected a seed from 0 to 4294967295 (2**32 - 1), got 4294967296"]),
    ("CLI arguments", "nnlab data generate --out x.csv --seed -5", {},
     ["nnlab data generate: error: argument --seed: expected a seed from 0 to 4294967295 (2**32 - 1), got -5"]),
    ("CLI arguments", "python hpo_agent.py --max 3", {},
     ["error: unrecognized arguments: --max 3"]),
    # --- HPO: never replace a file the study did not write
    ("HPO arguments", "python hpo_agent.py --output data.csv", {"data.csv": _PARTICLES},
     ["error: --output: 'data.csv' exists and was not written by study 'nnlab-hpo' (",
      "); choose another --output or move the file"]),
    ("HPO arguments", "python hpo_agent.py --output old/configuration_log.csv",
     {"old/configuration_log.csv": "run_id,preset,status\n20260101-000000-000000-p1,baseline,completed\n"},
     ["error: --output: 'old/configuration_log.csv' exists and was not written by study 'nnlab-hpo' ("]),
    ("HPO arguments", "python hpo_agent.py --output-dir o", {"o/analysis/best_config.json": '{"epochs": 300}\n'},
     ["error: --output: 'o/analysis/best_config.json' (written beside the results) exists and was not written by "
      "study 'nnlab-hpo' ("]),
    ("HPO arguments", "python hpo_agent.py --output-dir o", {"o/analysis/hpo_study.json": "my notes"},
     ["error: --output: 'o/analysis/hpo_study.json' (written beside the results) exists and is not a study record "
      "of nnlab hpo (not valid JSON at line 1, column 1: Expecting value); choose another --output or move the file"]),
    ("HPO arguments", "python hpo_agent.py --output-dir o",
     {"o/analysis/hpo_results.csv": "trial_number,preset\n0,baseline\n",
      "o/analysis/hpo_study.json": '{"study_name": "nnlab-hpo", "storage": "o/analysis/hpo_journal.log"}'},
     ["error: --output: 'o/analysis/hpo_study.json' (written beside the results) exists and is not a study record "
      "of nnlab hpo (it lacks the study name, storage and file digests)"]),
    ("HPO arguments", "python hpo_agent.py --output best_config.json", {},
     ["error: --output: 'best_config.json' has the name of a file the search writes beside the results; "
      "choose another file name for the results CSV"]),
    # --- HPO: --storage must be a storage
    ("HPO arguments", "python hpo_agent.py --storage data.csv", {"data.csv": _PARTICLES},
     ["error: --storage: 'data.csv' is not an Optuna journal file (a journal's lines are Optuna's JSON records; "
      "its first line is not one); choose another --storage or move the file"]),
    ("HPO arguments", "python hpo_agent.py --storage notes.txt", {"notes.txt": "remember the milk\n"},
     ["error: --storage: 'notes.txt' is not an Optuna journal file"]),
    ("HPO arguments", "python hpo_agent.py --storage store", {"store": DIRECTORY},
     ["error: --storage: 'store' is a directory, not an Optuna journal file"]),
    ("HPO arguments", "python hpo_agent.py --storage store", {"store": FIFO},
     ["error: --storage: 'store' is a named pipe, not an Optuna journal file"]),
    ("HPO arguments", "python hpo_agent.py --storage sqlite:///data.csv", {"data.csv": _PARTICLES},
     ["error: --storage: 'data.csv' is not a SQLite database (it does not start with 'SQLite format 3'); "
      "choose another --storage or move the file"]),
    ("HPO arguments", "python hpo_agent.py --storage sqlite:///:memory: --workers 2", {},
     ["error: --storage: 'sqlite:///:memory:' is an in-memory database that each process opens empty, so "
      "--workers 2 could not share it; use a journal FILE or sqlite:///FILE"]),
    # --- HPO: seed, space file
    ("HPO arguments", "python hpo_agent.py --seed -1", {},
     ["nnlab hpo: error: argument --seed: expected a seed from 0 to 4294967295 (2**32 - 1), got -1"]),
    ("HPO arguments", "python hpo_agent.py --seed 4294967296", {},
     ["nnlab hpo: error: argument --seed: expected a seed from 0 to 4294967295 (2**32 - 1), got 4294967296"]),
    ("HPO arguments", "python hpo_agent.py --space space.json", {"space.json": FIFO},
     ["error: --space space.json: is a named pipe, not a regular file"]),
    ("HPO arguments", "python hpo_agent.py --space space.json",
     {"space.json": '{"activation": ["relu"], "activation": ["tanh"]}'},
     ["error: --space space.json: key 'activation' appears more than once in one JSON object; keep one"]),

    ("CLI arguments", "nnlab data generate --out new.csv", {"new.csv.meta.json": '{"seed": 1}'},
     ["error: --out: 'new.csv.meta.json' (the metadata sidecar of 'new.csv') already exists; choose another "
      "file or pass --force to replace it"]),
    ("CLI arguments", "nnlab data generate --out blocker/particles.csv", {"blocker": "a file, not a directory"},
     ["error: --out: cannot write 'blocker/particles.csv': 'blocker' is not a directory"]),
    ("CLI arguments", "nnlab data generate --out /proc/particles.csv", {},
     ["error: --out: cannot write '/proc/particles.csv': cannot create files in '/proc'"]),
    ("CLI arguments", "nnlab data generate --out outdir --force", {"outdir": DIRECTORY},
     ["error: --out: 'outdir' is a directory, not a regular file; give the name of a file to write"]),
    ("CLI arguments", "nnlab data generate --out outdir/", {"outdir": DIRECTORY},
     ["error: --out: 'outdir/' names a directory; give a file name (e.g. outdir/particles.csv)"]),
    ("CLI arguments", "nnlab data generate --out pipe.csv --force", {"pipe.csv": FIFO},
     ["error: --out: 'pipe.csv' is a named pipe, not a regular file; give the name of a file to write"]),
    ("CLI arguments", "nnlab data validate good.csv --drop-invalid clean.csv",
     {"good.csv": GOOD_CSV, "clean.csv.meta.json": "{}"},
     ["error: --drop-invalid: 'clean.csv.meta.json' (the metadata sidecar of 'clean.csv') already exists; "
      "choose another file or pass --force to replace it"]),
    ("CLI arguments", "nnlab data validate good.csv --drop-invalid taken.csv",
     {"good.csv": GOOD_CSV, "taken.csv": "precious"},
     ["error: --drop-invalid: 'taken.csv' already exists; choose another file or pass --force to replace it"]),
    ("CLI arguments", "nnlab data validate good.csv --drop-invalid pipe.csv", {"good.csv": GOOD_CSV, "pipe.csv": FIFO},
     ["error: --drop-invalid: 'pipe.csv' is a named pipe, not a regular file; give the name of a file to write"]),
    ("CLI arguments", "nnlab data validate good.csv --force", {"good.csv": GOOD_CSV},
     ["error: --force only applies with --drop-invalid CLEAN_FILE (validate never writes FILE)"]),
    ("CSV data", "nnlab data validate heavy.csv", {"heavy.csv": HEAVY_CSV},
     ["error: heavy.csv is invalid:",
      "column 'mass': 1 row(s) (rows 0) are out of range (|value| > 1e+150: squares and sums of such values "
      "overflow float64)",
      "column 'kinetic_energy': 1 row(s) (rows 0) overflow: mass * |v_final|^2 / 2 is out of the float64 range"]),
    ("CSV data", "python main.py --data heavy.csv", {"heavy.csv": HEAVY_CSV},
     ["error: particle data in heavy.csv failed validation",
      "column 'kinetic_energy': 1 row(s) (rows 0) overflow: mass * |v_final|^2 / 2 is out of the float64 range"]),
    ("CSV data", "nnlab data validate fast.csv", {"fast.csv": FAST_CSV},
     ["error: fast.csv is invalid:",
      "columns 'final_velocity_x', 'final_velocity_y': 1 row(s) (rows 0) overflow: the speed |v_final| or "
      "|v_initial| is out of the float64 range"]),
    ("CSV data", "nnlab data validate dup.csv",
     {"dup.csv": HEADER.replace("trajectory_length", "mass") + "\n" + GOOD_ROW + "\n"},
     ["error: particle data file dup.csv: column name(s) repeated in the header: 'mass' (columns 2, 16); "
      "every column name must be unique"]),
    ("CSV data", "nnlab data validate semicolon.csv",
     {"semicolon.csv": HEADER.replace(",", ";") + "\n" + GOOD_ROW.replace(",", ";") + "\n"},
     ["error: particle data file semicolon.csv looks ';'-separated", "nnlab reads comma-separated CSV"]),
    ("CSV data", "nnlab data validate tabs.csv",
     {"tabs.csv": HEADER.replace(",", "\t") + "\n" + GOOD_ROW.replace(",", "\t") + "\n"},
     ["error: particle data file tabs.csv looks tab-separated", "nnlab reads comma-separated CSV"]),
    ("CSV data", "nnlab data validate pipe.csv", {"pipe.csv": FIFO},
     ["error: particle data file pipe.csv is a named pipe, not a regular file"]),
    ("CSV data", "nnlab data validate /dev/zero", {},
     ["error: particle data file /dev/zero is a character device, not a regular file"]),
    ("CSV data", "nnlab data validate folder.csv", {"folder.csv": DIRECTORY},
     ["error: particle data file folder.csv is a directory, not a regular file"]),
    ("CSV data", "python main.py --data pipe.csv", {"pipe.csv": FIFO},
     ["error: --data: particle data file pipe.csv is a named pipe, not a regular file"]),
    ("CSV data", "python main.py --data /dev/null", {},
     ["error: --data: particle data file /dev/null is a character device, not a regular file"]),

    ("resources", "python main.py --set hidden_layers=[200000,200000]", {},
     ["error: hidden_layers = [200000, 200000] is too large for this machine: the network needs ~894 GiB "
      "(40,006,600,006 parameters: weights, Adam moments, gradients, constraint state) but ~",
      "GiB is available; use fewer or narrower hidden_layers"]),
    ("resources", "python main.py --config big.json", {"big.json": '{"hidden_layers": [100000, 100000, 100000]}'},
     ["error: hidden_layers = [100000, 100000, 100000] is too large for this machine: the network needs ~447 GiB "
      "(20,003,500,006 parameters: weights, Adam moments, gradients, constraint state) but ~"]),
    ("resources", "python main.py --num-particles 1000000000000", {},
     ["error: --num-particles = 1000000000000 is too large for this machine: the data needs ~894,070 GiB "
      "(1,000,000,000,000 rows x 60 columns x 8 bytes x 2 copies) but ~", "GiB is available; use at most ~"]),
    ("resources", "nnlab data generate --num-particles 1000000000000 --out x.csv", {},
     ["error: --num-particles = 1000000000000 is too large for this machine: the data needs ~238,419 GiB "
      "(1,000,000,000,000 rows x 16 columns x 8 bytes x 2 copies) but ~", "GiB is available; use at most ~"]),
    ("resources", "nnlab data generate --config-dir cfg --out x.csv",
     {"cfg/particle_generation_config.json": '{"num_particles_default": 1000000000000}'},
     ["error: num_particles_default = 1000000000000 is too large for this machine: the data needs ~238,419 GiB"]),

    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": "{}", f"{RUN}/run_status.json": _status("completed", epochs=5, epochs_run=5)},
     ["error: run 20260101-000000-000000-p1 completed all 5 epochs (status completed); nothing to resume"]),
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": "{}", f"{RUN}/run_status.json": _status("completed", epochs=5, epochs_run=2)},
     ["error: run 20260101-000000-000000-p1 completed after 2 of 5 epochs: early stopping ended it "
      "(status completed); nothing to resume"]),
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": "{}", f"{RUN}/run_status.json": _status("diverged", epochs=5, epochs_run=3)},
     ["error: run 20260101-000000-000000-p1 diverged (the loss became NaN/inf) after 3 of 5 epochs "
      "(status diverged); start a new run with a smaller learning_rate"]),
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": "{}",
      f"{RUN}/run_status.json": _status("failed", epochs=5, error="DataValidationError: bad rows")},
     ["error: run 20260101-000000-000000-p1 failed (status failed): DataValidationError: bad rows; "
      "fix the cause and start a new run"]),
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": "{}", f"{RUN}/run_status.json": _status("pruned", epochs=5, epochs_run=1)},
     ["error: run 20260101-000000-000000-p1 was pruned by the hyperparameter search after 1 of 5 epochs "
      "(status pruned); nothing to resume"]),
    # The shared log (no run_status.json: a run from before it was written) still decides.
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": "{}",
      "o/configuration_log.csv": "run_id,status,epochs,epochs_run\n20260101-000000-000000-p1,completed,5,5\n"},
     ["error: run 20260101-000000-000000-p1 completed all 5 epochs (status completed); nothing to resume"]),
    ("resume", "python main.py --resume --output-dir o",
     {f"{RUN}/training_config.json": "{}", f"{RUN}/run_status.json": _status("completed", epochs=5, epochs_run=5),
      f"{OLDER}/training_config.json": "{}", f"{OLDER}/run_status.json": _status("failed", epochs=5),
      "o/runs/zz_notes/todo.txt": "a stray folder", "o/runs/README": "a stray file"},
     ["error: no resumable run in 'o/runs': 2 runs, all completed/failed (1 completed, 1 failed); "
      "start a new run with `python main.py`"]),
    ("resume", "python main.py --resume latest --output-dir o",
     {"o/runs/zz_notes/todo.txt": "a stray folder, not a run"},
     ["error: no runs in 'o/runs': run `python main.py` first"]),
    ("resume", "python main.py --resume zz_notes --output-dir o",
     {f"{RUN}/training_config.json": "{}", "o/runs/zz_notes/todo.txt": "a stray folder, not a run"},
     ["error: 'o/runs/zz_notes' is not a run directory (it has no training_config.json)"]),
    ("resume", "python main.py --resume 20260101-000000-000000-p2 --output-dir o",
     {f"{RUN}/training_config.json": "{}"},
     ["error: unknown run id '20260101-000000-000000-p2' in 'o/runs'; available: 20260101-000000-000000-p1"]),
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": "{}", f"{RUN}/run_status.json": "{\"status\": "},
     [f"error: {RUN}/run_status.json: unreadable run status"]),
    # training_config.json edited after the run started (hidden_layers 16 -> 32): its digest no longer matches.
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": json.dumps({
         "run_id": "20260101-000000-000000-p1", "config": {"hidden_layers": [32], "epochs": 5}, "seed": 42,
         "data": {"num_particles": 200, "seed": 42, "random_state": 42},
         "settings_sha256": "0f5ac3c1f1b24d2d9a5b1c0e6f7d8e9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"}),
      f"{RUN}/run_status.json": _status("interrupted", epochs=5, epochs_run=2)},
     [f"error: {RUN}/training_config.json: its configuration or data source was edited after run "
      "20260101-000000-000000-p1 started (it no longer matches the SHA-256 recorded then); a resume continues "
      "a run exactly as it was started: undo the edit, or start a new run with the changed settings"]),
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": json.dumps({"config": {"epochs": 5}}),
      f"{RUN}/run_status.json": _status("interrupted", epochs=5, epochs_run=2)},
     [f"error: run directory '{RUN}' has no checkpoint to resume from"]),
    ("CSV data", "nnlab data validate old.csv", {"old.csv": ORIGINAL_CSV},
     ["error: old.csv looks like a particle CSV of the original lab (no displacement column",
      "convert it with `nnlab data resimulate old.csv NEW.csv`"]),
    ("CSV data", "nnlab data resimulate old.csv new.csv", {"old.csv": ORIGINAL_CSV, "new.csv": "precious"},
     ["error: NEW: 'new.csv' already exists; choose another file or pass --force to replace it"]),
    ("CSV data", "nnlab data resimulate old.csv old.csv --force", {"old.csv": ORIGINAL_CSV},
     ["error: NEW: 'old.csv' is the file being converted"]),
    ("CSV data", "nnlab data resimulate no_charge.csv new.csv",
     {"no_charge.csv": ORIGINAL_HEADER.replace(",charge", "") + "\n"
      + ORIGINAL_ROW.replace(",0.0,1.0,1.0,1.0,", ",0.0,1.0,1.0,", 1) + "\n"},
     ["error: cannot resimulate no_charge.csv: missing initial column(s) charge"]),
    ("--set", "nnlab config show --set save_to_file=true", {},
     ["error: --set: 'save_to_file' is a key of the original project that nnlab does not use"]),
    ("--set", "nnlab config show --set tensorboard=yes", {},
     ["error: invalid configuration:", "tensorboard", "yes"]),
    ("--set", "nnlab config show --set mlflow_tracking_uri=http://", {},
     ["mlflow_tracking_uri = \"http://\" is invalid: 'http://' is not an MLflow tracking URI: it names no host"]),
    ("--set", "nnlab config show --set mlflow_experiment=", {},
     ["--set: mlflow_experiment = \"\" is invalid: String should have at least 1 character"]),
    ("CLI arguments", "python main.py --mlflow foo://x --output-dir o", {},
     ["error: --mlflow: 'foo://x' is not an MLflow tracking URI: unknown scheme 'foo'; use "
      "http(s)://HOST[:PORT][/PATH], sqlite:///FILE"]),
    ("CLI arguments", "python main.py --mlflow mlruns --output-dir o", {},
     ["'mlruns' is not an MLflow tracking URI: unknown scheme '(none)' (a file path needs sqlite:/// in front)"]),
    ("CLI arguments", "python main.py --mlflow sqlite:///missing/m.db --output-dir o", {},
     ["error: --mlflow: 'sqlite:///missing/m.db' is in 'missing', which is not a directory; create it first"]),
    ("CLI arguments", "python main.py --mlflow http://127.0.0.1:99999 --output-dir o", {},
     ["its port is not a number from 1 to 65535"]),
    ("resume", "python main.py --resume latest --mlflow --output-dir o", {},
     ["error: --resume continues a run with its own configuration and data; drop --mlflow"]),

    ("study arguments", "nnlab study precision --seeds 0", {},
     ["error: --seeds must be an integer >= 1 (how many seeds: 0, 1, ... N-1; 6 or more for a significance test "
      "at 0.05), got 0"]),
    ("study arguments", "nnlab study precision --rounding round", {},
     ["error: --rounding: unknown rounding 'round'; choose from truncate, nearest, stochastic"]),
    ("study arguments", "nnlab study precision --bits 24,8,30", {},
     ["error: --bits: 30 is outside 1..24 (the significant bits of a float32, implicit leading 1 included)"]),
    ("study arguments", "nnlab study precision --bits 8,four", {},
     ["error: --bits: 'four' is not an integer; give comma-separated significant bits from 1 to 24, e.g. 24,12,8,4"]),
    ("study arguments", "nnlab study precision --schedule batch", {},
     ["error: --schedule: unknown schedule 'batch'; choose from epoch, step"]),
    ("study arguments", "nnlab study precision --policy float64", {},
     ["error: --policy: unknown policy 'float64'; choose from float32, mixed_bfloat16, mixed_float16"]),
    ("study arguments", "nnlab study precision --set max_binary_digits=4", {},
     ["error: --set max_binary_digits: a precision study sets it in every cell (use --bits); remove the --set"]),
    ("study arguments", "nnlab study precision --set seed=1", {},
     ["error: --set seed: the study sets 'seed' to each of its seeds (--seeds); remove it"]),
    ("study arguments", "nnlab study compare --variant a= --variant a=epochs=3", {},
     ["error: --variant: variant name 'a' is given twice; each variant needs its own name"]),
    ("study arguments", "nnlab study compare --variant =epochs=3 --variant b=", {},
     ["error: --variant: empty variant name in '=epochs=3'; write NAME=\"KEY=VALUE ...\""]),
    ("study arguments", "nnlab study compare --variant a --variant b=", {},
     ["error: --variant expects NAME=\"KEY=VALUE ...\" (e.g. js=\"enable_james_stein=true\"), got 'a'"]),
    ("study arguments", "nnlab study compare --variant a= --variant b=epochs", {},
     ["error: --variant b: expected KEY=VALUE items separated by spaces, got 'epochs'"]),
    ("study arguments", "nnlab study compare --variant a= --variant b=lerning_rate=0.1", {},
     ["error: --variant b: unknown key 'lerning_rate'; did you mean 'learning_rate'?"]),
    ("study arguments", "nnlab study compare --variant a= --variant b=seed=3", {},
     ["error: --variant b: 'seed' is set by the study for each of its seeds (--seeds); remove it from the variant"]),
    ("study arguments", "nnlab study compare --variant a=", {},
     ["error: --variant: a comparison needs at least two variants, got 1; "
      "e.g. --variant plain= --variant js=\"enable_james_stein=true\""]),
    ("study arguments", "nnlab study compare --variant a= --variant b=learning_rate=-1", {},
     ["error: invalid configuration:", "--variant b: learning_rate = -1 is invalid: Input should be greater than 0"]),
    ("study arguments", f"nnlab study compare {AB} --data missing.csv", {},
     ["error: --data: particle data file not found: missing.csv"]),
    ("study arguments", f"nnlab study compare {AB} --data p.csv --num-particles 10", {"p.csv": _PARTICLES},
     ["error: --num-particles sets how many particles the study simulates; with --data FILE the file is used as "
      "found: drop one of them"]),
    ("study arguments", f"nnlab study compare {AB} --storage data.csv", {"data.csv": _PARTICLES},
     ["error: --storage: 'data.csv' is not an Optuna journal file"]),
    ("study arguments", f"nnlab study compare {AB} --storage sqlite:///:memory: --workers 2", {},
     ["error: --storage: 'sqlite:///:memory:' is an in-memory database that each process opens empty, so "
      "--workers 2 could not share it; use a journal FILE or sqlite:///FILE"]),
    ("study arguments", f"nnlab study compare {AB} --output-dir s", {"s/compare_runs.csv": "variant,seed\na,0\n"},
     ["error: --output-dir: '", "compare_runs.csv' exists and was not written by study 'nnlab-study-compare' "
      "(no study_spec.json beside it); move it or choose another --output-dir"]),
    ("study arguments", f"nnlab study compare {AB} --output-dir s", {"s/study_spec.json": STUDY_RECORD_OTHER},
     ["holds study 'someone-else' in study_journal.log; this command runs study 'nnlab-study-compare' in "
      "study_journal.log. Choose another --output-dir (or the same --storage and --study-name to continue that "
      "study)"]),
    ("study arguments", f"nnlab study compare {AB} --output-dir s", {"s/study_spec.json": STUDY_RECORD_SAME},
     ["holds the outputs of study 'nnlab-study-compare', which s/study_journal.log no longer has; move them or "
      "choose another --output-dir"]),
    ("study arguments", f"nnlab study compare {AB} --output-dir s", {"s/study_spec.json": "my notes"},
     ["study_spec.json' is not a study record (Expecting value: line 1 column 1 (char 0)); move it or choose "
      "another --output-dir"]),
    ("study arguments", f"nnlab study compare {AB} --output-dir s", {"s/particles.csv": _PARTICLES},
     ["particles.csv' is not particle data generated by this study (no nnlab sidecar); pass it with --data FILE, "
      "or move it"]),
    ("HPO arguments", "python hpo_agent.py --mlflow foo://x --output-dir o", {},
     ["error: --mlflow: 'foo://x' is not an MLflow tracking URI: unknown scheme 'foo'; use "
      "http(s)://HOST[:PORT][/PATH], sqlite:///FILE"]),
    ("HPO arguments", "nnlab hpo --mlflow mlruns --output-dir o", {},
     ["error: --mlflow: 'mlruns' is not an MLflow tracking URI: unknown scheme '(none)' "
      "(a file path needs sqlite:/// in front)"]),
    ("HPO arguments", "nnlab hpo --mlflow sqlite:///missing/m.db --output-dir o", {},
     ["error: --mlflow: 'sqlite:///missing/m.db' is in 'missing', which is not a directory; create it first"]),
    ("study arguments", "nnlab study compare --variant a= --variant b=learning_rate=0.01 --mlflow http:// --output-dir o", {},
     ["error: --mlflow: 'http://' is not an MLflow tracking URI: it names no host (or port 0)"]),
    ("study arguments", "nnlab study precision --mlflow http://127.0.0.1:99999 --output-dir o", {},
     ["error: --mlflow: 'http://127.0.0.1:99999' is not an MLflow tracking URI: its port is not a number from 1 to 65535"]),
    ("HPO arguments", "nnlab hpo --heartbeat 10 --grace-period 5 --output-dir o", {},
     ["error: --grace-period (5 s) must be longer than --heartbeat (10 s): a live trial would be failed between "
      "two heartbeats"]),
    ("HPO arguments", "nnlab hpo --retries -1 --output-dir o", {},
     ["nnlab hpo: error: argument --retries: expected an integer >= 0, got -1"]),
    ("HPO arguments", "nnlab hpo --export results --output-dir o", {},
     ["error: --storage: journal file 'o/analysis/hpo_journal.log' does not exist; give the search's --storage "
      "(and --output-dir for the default journal)"]),
    ("HPO arguments", "nnlab hpo --storage postgresql+psycopg://nnlab:secret@127.0.0.1:1/nnlab --output-dir o", {},
     ["error: --storage: cannot open 'postgresql+psycopg://nnlab:***@127.0.0.1:1/nnlab': (psycopg.OperationalError) "
      "connection failed"]),
    ("--set", "nnlab hpo --set mlflow_tracking_uri=http:// --output-dir o", {},
     ["error: invalid configuration:", "--set: mlflow_tracking_uri = \"http://\" is invalid: 'http://' is not an "
      "MLflow tracking URI: it names no host"]),
]


# Issue 23's cases live in one module per area (each may define file builders of its own: a callable
# content is called with the path to create, and its docstring's first line is shown in the catalogue).
from catalogue_secrets import CASES as _SECRETS_CASES  # noqa: E402
from catalogue_ownership import CASES as _OWNERSHIP_CASES  # noqa: E402
from catalogue_studies import CASES as _STUDIES_CASES  # noqa: E402
from catalogue_runs import CASES as _RUNS_CASES  # noqa: E402
from catalogue_tables import CASES as _TABLES_CASES  # noqa: E402
from catalogue_tables_search import CASES as _TABLES_SEARCH_CASES  # noqa: E402
from catalogue_predict import CASES as _PREDICT_CASES  # noqa: E402
from catalogue_export import CASES as _EXPORT_CASES  # noqa: E402
from catalogue_cli import CASES as _CLI_CASES  # noqa: E402
from catalogue_mlflow import CASES as _MLFLOW_CASES  # noqa: E402

CASES += _SECRETS_CASES + _OWNERSHIP_CASES + _STUDIES_CASES + _RUNS_CASES + _TABLES_CASES
CASES += _TABLES_SEARCH_CASES
CASES += _PREDICT_CASES
CASES += _EXPORT_CASES
CASES += _CLI_CASES
CASES += _MLFLOW_CASES


def _argv(command: str) -> list[str]:
    parts = command.split()
    if parts[:2] == ["python", "main.py"]:
        return [sys.executable, str(REPO / "main.py"), *parts[2:]]
    if parts[:2] == ["python", "hpo_agent.py"]:
        return [sys.executable, str(REPO / "hpo_agent.py"), *parts[2:]]
    assert parts[0] == "nnlab", command
    return [sys.executable, "-m", "nnlab.cli", *parts[1:]]


def make_files(root: Path, files: dict[str, Any]) -> None:
    """Create a case's files under ``root`` (FIFO and DIRECTORY make those instead of a file; a
    callable makes whatever it makes at the path it is given)."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif content == FIFO:
            os.mkfifo(path)
        elif content == DIRECTORY:
            path.mkdir()
        else:
            path.write_text(content)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content (or its kind), symlinks as links."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = "link:" + os.readlink(path)
        elif path.is_file():
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[key] = "dir" if path.is_dir() else "special"
    return state


def case_environment() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return env


def run_case(case: tuple[str, str, dict[str, str], list[str]], tmp_path: Path, runner: ForkRunner,
             scratch: Path) -> subprocess.CompletedProcess:
    """Run one catalogue case in ``tmp_path`` as a forked child of ``runner`` (its output kept in
    ``scratch``) and assert everything the catalogue promises."""
    area, command, files, expected = case
    make_files(tmp_path, files)
    before = snapshot(tmp_path)
    proc = runner.run(_argv(command), tmp_path, case_environment(), scratch, timeout=180)
    assert proc.returncode == 2, (command, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    # Lines longer than 120 columns continue on the next line, indented: compared with runs of
    # white space as one space, each expected line must still appear whole and in order.
    err, position = " ".join(proc.stderr.split()), 0
    message = proc.stderr[proc.stderr.find("error: "):].splitlines()  # the error (warnings before it are Python's)
    assert all(len(line) <= 120 or " " not in line.strip() for line in message), proc.stderr
    for line in expected:
        wanted = " ".join(line.split())
        found = err.find(wanted, position)
        assert found >= 0, f"{command}: expected {line!r} in stderr:\n{proc.stderr}"
        position = found + len(wanted)
    # Nothing half-written left behind (the lock/probe files of a refused run included),
    # and every file that was there is unchanged.
    after = snapshot(tmp_path)
    assert after == before, (command, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                                       if before.get(k) != after.get(k)})
    return proc


# Cases run two at a time (two runners, each case a forked process: see tests/_fork_runner.py), about
# half the wall time on the 2-core CI machine. Each case still passes or fails on its own.
PARALLEL_CASES = 2


@pytest.fixture(scope="module")
def case_outcomes(request, tmp_path_factory) -> dict[int, BaseException | None]:
    """Run every selected case (in its own directory) and keep what each raised, if anything."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    selected = sorted({item.callspec.params["number"] for item in request.session.items
                       if getattr(item, "originalname", "") == "test_bad_input"})
    # pytest creates its base temporary directory on first use; two threads doing that at once (the
    # first test of an xdist worker) race, and one of them fails or removes the other's directory.
    tmp_path_factory.getbasetemp()
    runners: queue.Queue[ForkRunner] = queue.Queue()
    started = [ForkRunner(case_environment()) for _ in range(PARALLEL_CASES)]
    for runner in started:
        runners.put(runner)

    def outcome(number: int) -> BaseException | None:
        runner = runners.get()
        try:
            run_case(CASES[number], tmp_path_factory.mktemp(f"case{number + 1:02d}"), runner,
                     tmp_path_factory.mktemp(f"case{number + 1:02d}_output"))
        except BaseException as exc:  # an assertion, a timeout: reported by the case's own test
            return exc
        finally:
            runners.put(runner)
        return None

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_CASES) as pool:
            return dict(zip(selected, pool.map(outcome, selected)))
    finally:
        for runner in started:
            runner.close()


@pytest.mark.parametrize("number", range(len(CASES)), ids=lambda n: f"case{n + 1:02d}")
def test_bad_input(number, case_outcomes):
    failure = case_outcomes[number]
    if failure is not None:
        raise failure


def render_catalogue() -> str:
    lines = [
        "# Bad inputs and the errors they give",
        "",
        "Every row is a test (`tests/test_bad_inputs.py`, which also generates this page:",
        "`python tests/test_bad_inputs.py --write-doc`). Each command runs in a directory",
        "holding the files listed; it exits with status 2, prints no traceback, prints the",
        "error shown (on stderr; long messages continue on further lines) and leaves no",
        "file behind.",
        "",
        "| # | area | command | files | error |",
        "|---|---|---|---|---|",
    ]

    def cell(text: str) -> str:  # a non-UTF-8 path's surrogate escape shown as \udcff
        return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("|", "\\|").replace("\n", "<br>")

    def shown(content: Any) -> str:
        if callable(content):
            return f"`{cell((content.__doc__ or content.__name__).strip().splitlines()[0])}`"
        return f"`{cell(content[:60]) or '(empty)'}`" + ("…" if len(content) > 60 else "")

    for n, (area, command, files, expected) in enumerate(CASES, start=1):
        setup = "<br>".join(f"`{name}`: {shown(content)}" for name, content in files.items()) or "—"
        error = "<br>".join(f"`{cell(line)}`" for line in expected)
        lines.append(f"| {n} | {area} | `{cell(command)}` | {setup} | {error} |")
    return "\n".join(lines) + "\n"


def test_catalogue_document_is_current():
    assert DOC.read_text(encoding="utf-8") == render_catalogue(), \
        "docs/bad_inputs.md is stale: run `python tests/test_bad_inputs.py --write-doc`"


def test_catalogue_has_at_least_25_cases_in_every_area():
    areas = {area for area, *_ in CASES}
    assert len(CASES) >= 25
    assert {"configuration file", "preset", "--set", "CSV data", "CLI arguments", "HPO search space",
            "analysis arguments"} <= areas


if __name__ == "__main__":
    if "--write-doc" in sys.argv:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(render_catalogue(), encoding="utf-8")
        print(f"wrote {DOC}")
    else:
        sys.exit(pytest.main([__file__, *sys.argv[1:]]))
