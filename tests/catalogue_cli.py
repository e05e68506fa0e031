"""Bad-input catalogue cases of issue 26: TOML configuration files and the command line's conventions
(run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

from typing import Any

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    # TOML syntax: the file, the line and column, and what is wrong (tomllib's words).
    ("configuration file", "nnlab config show --config best.toml",
     {"best.toml": "hidden_layers = [16, 8\nepochs = 3\n"},
     ["error: best.toml: not valid TOML at line 2, column 1: Unclosed array"]),
    ("configuration file", "python main.py --epochs 1 --config best.toml",
     {"best.toml": "epochs = 3\nepochs = 4\n"},
     ["error: best.toml: not valid TOML at line 2, column 11: Cannot overwrite a value"]),
    # A TOML file's keys are checked like a JSON file's: unknown keys, types, non-finite numbers.
    ("configuration file", "nnlab config show --config best.toml", {"best.toml": "learning_rat = 0.1\n"},
     ["error: best.toml: unknown key 'learning_rat'; did you mean 'learning_rate'?"]),
    ("configuration file", "python main.py --epochs 1 --config best.toml",
     {"best.toml": 'hidden_layers = [64, "wide"]\n'},
     ['best.toml: hidden_layers[1] = [64, "wide"] is invalid: Input should be a valid integer']),
    ("configuration file", "nnlab config show --config best.toml", {"best.toml": "learning_rate = inf\n"},
     ["error: best.toml: learning_rate = inf is invalid: TOML inf/nan is not allowed; configuration values must "
      "be finite numbers"]),
    ("configuration file", "nnlab config show --config best.toml", {"best.toml": "[model]\nepochs = 3\n"},
     ["error: best.toml: [model] is a TOML table, but configuration keys are flat: write them at the top level "
      "(key = value), without [table] headers"]),
    ("configuration file", "nnlab config show --config best.toml", {"best.toml": "epochs = 2026-12-05\n"},
     ["error: best.toml: epochs = 2026-12-05 is invalid: a TOML date or time is not a configuration value"]),
    # An abbreviated option is an error, never silently another option (--epoch is not --epochs).
    ("CLI arguments", "python main.py --epoch 2", {},
     ["nnlab: error: unrecognized arguments: --epoch 2"]),
    ("CLI arguments", "nnlab config show --format yaml", {},
     ["nnlab config show: error: argument --format: invalid choice: 'yaml' (choose from 'json', 'toml')"]),
    ("CLI arguments", "nnlab completion fish", {},
     ["nnlab completion: error: argument shell: invalid choice: 'fish' (choose from 'bash', 'zsh', 'tcsh')"]),
]
