"""Bad-input catalogue cases of issue 23: training runs, resume, configuration and advice (run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nnlab.runs._runs import settings_digest

RUN = "o/runs/20260101-000000-000000-p1"
_STATUS = json.dumps({"status": "interrupted", "pid": 1, "hostname": "h", "updated": "2026-01-01T00:00:00+00:00",
                      "epochs": 5, "epochs_run": 2})


def _link_out_of_the_study(path: Path) -> None:
    """a symbolic link to outside.png, a file outside the study directory"""
    outside = path.parent.parent / "outside.png"
    outside.write_bytes(b"the user's own figure")
    path.symlink_to(outside)


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
    # An output directory whose path a run's files cannot hold: refused before any work, nothing written.
    ("CLI arguments", "python main.py --epochs 1 --output-dir o\udcff", {},
     ["error: --output-dir: 'o\\xff' is not a UTF-8 path (a run's files record it); choose a directory whose full "
      "path is UTF-8"]),
    ("CLI arguments", f"python main.py --epochs 1 --output-dir {'n' * 300}", {},
     ["error: --output-dir: '", "has a name of 300 bytes", "this file system allows at most 255: choose a shorter "
      "--output-dir"]),
    # Files that are not nnlab's in a directory a command writes to: refused before any work.
    ("output ownership", "python main.py --output-dir o", {"o/configuration_log.csv": "px,py,pz\n1,2,3\n"},
     ["error: --output-dir: 'o/configuration_log.csv' is not nnlab's configuration log (a CSV whose header is "
      "'px,py,pz'; the log's header is run_id,timestamp,status,...); a run would add its row to it. Move the "
      "file or choose another --output-dir"]),
    ("output ownership", "nnlab hpo --max-trials 1 --output-dir o", {"o/configuration_log.csv": "notes\n"},
     ["error: --output-dir: 'o/configuration_log.csv' is not nnlab's configuration log (a CSV whose header is "
      "'notes'"]),
    ("output ownership", "nnlab study precision --seeds 1 --bits 24 --output-dir s",
     {"s/precision_study.csv": "cell,my result\n24,0.99\n"},
     ["error: --output-dir: 's/precision_study.csv' exists and is not a file nnlab wrote; a precision study writes "
      "its table of cells there. Move the file or choose another --output-dir"]),
    ("output ownership", "nnlab study compare --variant a= --variant b=epochs=2 --seeds 1 --output-dir s",
     {"s/compare_summary.json": '{"kind": "mine"}'},
     ["error: --output-dir: 's/compare_summary.json' exists and is not a file nnlab wrote; a compare study writes "
      "its summary there."]),
    ("output ownership", "nnlab study precision --seeds 1 --bits 24 --output-dir s",
     {"s/particles.csv.meta.json": '{"note": "my own sidecar"}'},
     ["error: --output-dir: 's/particles.csv.meta.json' exists and is not the sidecar nnlab writes beside "
      "generated particle data; the study would replace it when it generates 's/particles.csv'. Move the file "
      "or choose another --output-dir"]),
    ("output ownership", "nnlab study precision --seeds 1 --bits 24 --output-dir s",
     {"s/precision_study.png": _link_out_of_the_study},
     ["error: --output-dir: 's/precision_study.png' is a symbolic link to '", "outside.png', outside 's'; nnlab "
      "does not write through it. Remove the link or choose another --output-dir"]),
]
