"""The catalogue of bad inputs (docs/bad_inputs.md): every row is run here.

Each case is a command run in a fresh directory holding the case's files; it
must exit 2, print no traceback, and print the documented error. The catalogue
is generated from CASES, so the document and the tests cannot drift apart:

    python tests/test_bad_inputs.py --write-doc     # regenerate docs/bad_inputs.md
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"

GOOD_ROW = ("0,1.0,1.0,0.0,0.0,0.0,1.0,1.0,1.0,0.5403023058681398,-0.8414709848078965,"
            "0.8414709848078965,-0.45969769413186023,0.5,0.958851077208406,1.0")
HEADER = ("particle_id,mass,initial_velocity_x,initial_velocity_y,initial_position_x,initial_position_y,charge,"
          "magnetic_field_strength,simulation_time,final_velocity_x,final_velocity_y,final_position_x,"
          "final_position_y,kinetic_energy,displacement,trajectory_length")

# Special "files": a named pipe and a directory (content is a str for a plain file).
FIFO = "<named pipe>"
DIRECTORY = "<directory>"

# (area, command, {file: content}, expected error lines (each must appear in stderr, in order))
CASES: list[tuple[str, str, dict[str, str], list[str]]] = [
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
      "loss_and_constraints"]),
    ("analysis arguments", "nnlab analyze --sample-size 0", {},
     ["nnlab analyze: error: argument --sample-size: expected an integer >= 1, got 0"]),
]


def _argv(command: str) -> list[str]:
    parts = command.split()
    if parts[:2] == ["python", "main.py"]:
        return [sys.executable, str(REPO / "main.py"), *parts[2:]]
    if parts[:2] == ["python", "hpo_agent.py"]:
        return [sys.executable, str(REPO / "hpo_agent.py"), *parts[2:]]
    assert parts[0] == "nnlab", command
    return [sys.executable, "-m", "nnlab.cli", *parts[1:]]


def make_files(root: Path, files: dict[str, str]) -> None:
    """Create a case's files under ``root`` (FIFO and DIRECTORY make those instead of a file)."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == FIFO:
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


def run_case(case: tuple[str, str, dict[str, str], list[str]], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run one catalogue case in ``tmp_path`` and assert everything the catalogue promises."""
    area, command, files, expected = case
    make_files(tmp_path, files)
    before = snapshot(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    proc = subprocess.run(_argv(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, (command, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    position = 0
    for line in expected:
        found = proc.stderr.find(line, position)
        assert found >= 0, f"{command}: expected {line!r} in stderr:\n{proc.stderr}"
        position = found + len(line)
    # Nothing half-written left behind (the lock/probe files of a refused run included),
    # and every file that was there is unchanged.
    after = snapshot(tmp_path)
    assert after == before, (command, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                                       if before.get(k) != after.get(k)})
    return proc


@pytest.mark.parametrize("number", range(len(CASES)), ids=lambda n: f"case{n + 1:02d}")
def test_bad_input(number, tmp_path):
    run_case(CASES[number], tmp_path)


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

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    for n, (area, command, files, expected) in enumerate(CASES, start=1):
        setup = "<br>".join(f"`{name}`: `{cell(content[:60]) or '(empty)'}`" + ("…" if len(content) > 60 else "")
                            for name, content in files.items()) or "—"
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
