"""Bad-input catalogue cases of issue 23: passwords never written or printed (run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

from typing import Any

# A closed port on this machine: the server cannot be reached, the message shows the URL with its password masked.
_CLOSED = "127.0.0.1:9"

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    # --- a password holding '/' and ':' in the user-info of an unreachable storage
    ("passwords", f"nnlab hpo --storage postgresql+psycopg://nnlab:se/cr:et@{_CLOSED}/hpo", {},
     [f"error: --storage: cannot open 'postgresql+psycopg://nnlab:***@{_CLOSED}/hpo': ", "Connection refused"]),
    # --- a password given as a query parameter
    ("passwords", f"nnlab hpo --storage postgresql+psycopg://nnlab@{_CLOSED}/hpo?password=s3cr3t%2Fx", {},
     [f"error: --storage: cannot open 'postgresql+psycopg://nnlab@{_CLOSED}/hpo?password=***': ",
      "Connection refused"]),
    # --- a percent-encoded '@' and a ':' in a study's storage password
    ("passwords", "nnlab study compare --variant a=activation=relu --variant b=activation=tanh "
                  f"--storage postgresql+psycopg://nnlab:p%40ss:w/rd@{_CLOSED}/s", {},
     [f"error: --storage: cannot open 'postgresql+psycopg://nnlab:***@{_CLOSED}/s': "]),
    # --- a tracking URI refused for its form: the message shows it masked
    ("passwords", "nnlab train --mlflow ftp://u:pw/secret@host/x", {},
     ["error: --mlflow: 'ftp://u:***@host/x' is not an MLflow tracking URI: unknown scheme 'ftp'"]),
    ("passwords", "nnlab train --set mlflow_tracking_uri=https://u:se/cr@t@:0/x", {},
     ["error: invalid configuration:",
      "--set: mlflow_tracking_uri = \"https://u:***@:0/x\" is invalid: 'https://u:***@:0/x' is not an MLflow "
      "tracking URI: its port is not a number from 1 to 65535"]),
]
