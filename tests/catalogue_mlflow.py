"""Bad-input catalogue cases of issue 26: MLflow URIs the installed MLflow cannot track to
(run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

from typing import Any

_FILE_STORE = ("is not an MLflow tracking URI: MLflow's file store is in maintenance mode and does not track "
               "without MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///DIR/mlflow.db")

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    # MLflow 3 refuses to open a file: store: refused before training, with what to use instead.
    ("CLI arguments", "python main.py --mlflow file:///tmp/mlruns --output-dir o", {},
     [f"error: --mlflow: 'file:///tmp/mlruns' {_FILE_STORE}"]),
    ("--set", "nnlab config show --set mlflow_tracking_uri=file:///tmp/mlruns", {},
     [f"mlflow_tracking_uri = \"file:///tmp/mlruns\" is invalid: 'file:///tmp/mlruns' {_FILE_STORE}"]),
]
