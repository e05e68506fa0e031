"""Bad-input catalogue cases of issue 23: passwords never written or printed (run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

from typing import Any

CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
]
