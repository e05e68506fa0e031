"""Bad-input catalogue cases of issue 23: training runs, resume, configuration and advice (run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
from typing import Any

from nnlab.runs._runs import settings_digest

RUN = "o/runs/20260101-000000-000000-p1"
_STATUS = json.dumps({"status": "interrupted", "pid": 1, "hostname": "h", "updated": "2026-01-01T00:00:00+00:00",
                      "epochs": 5, "epochs_run": 2})


def _config_with_scalers_digest() -> str:
    saved = {"run_id": RUN.rsplit("/", 1)[1], "config": {"hidden_layers": [8], "epochs": 5}, "seed": 42,
             "data": {"num_particles": 200, "seed": 42, "random_state": 42}}
    saved["settings_sha256"] = settings_digest(saved)
    saved["scalers_sha256"] = "0" * 64  # not the digest of the scalers.json beside it
    return json.dumps(saved)

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("resume", "python main.py --resume latest --config-dir cfg", {},
     ["error: --resume continues a run with its own configuration and data; drop --config-dir"]),
    # scalers.json edited after the run started: its SHA-256 in training_config.json no longer matches.
    ("resume", "python main.py --resume 20260101-000000-000000-p1 --output-dir o",
     {f"{RUN}/training_config.json": _config_with_scalers_digest(), f"{RUN}/scalers.json": '{"edited": true}',
      f"{RUN}/run_status.json": _STATUS},
     [f"error: {RUN}/scalers.json: the scalers were edited after run 20260101-000000-000000-p1 started (it no "
      "longer matches the SHA-256 recorded then in training_config.json); a resume continues a run exactly as "
      "it was started: undo the edit, or start a new run"]),
]
