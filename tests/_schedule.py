"""The order in which the suite's files are handed to the xdist workers: longest first.

pytest runs with ``--dist loadfile --no-loadscope-reorder`` (pyproject.toml): each file goes whole
to one worker, in collection order, the next one to whichever worker is nearly done. xdist's own
order (most tests first) put files that take minutes but hold few tests, such as the PostgreSQL
storage tests that wait for a stopped database, at the end, where one worker ran them alone while
the other had nothing left. Longest first (the classic LPT rule) leaves the short files to even
out the end.

The files' times are in tests/file_durations.json (seconds of wall time per file on two workers).
A file missing from it (a new one) runs first: its time is unknown, and unknown is safest early.
``NNLAB_TESTS_RECORD_DURATIONS=PATH python -m pytest`` writes this run's times to PATH, to
refresh the file after the suite changes. The order changes only when files run, never what they
do or whether they run: within a file, tests keep their order.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

DURATIONS = Path(__file__).with_name("file_durations.json")

_recorded: defaultdict[str, float] = defaultdict(float)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def file_order(files: list[str], durations: dict[str, float]) -> list[str]:
    """``files`` longest first by ``durations``; unknown files before every known one, in their own order."""
    unknown = [f for f in files if f not in durations]
    known = sorted((f for f in files if f in durations), key=lambda f: -durations[f])
    return unknown + known


def pytest_collection_modifyitems(session, config, items) -> None:
    durations = json.loads(DURATIONS.read_text(encoding="utf-8")) if DURATIONS.is_file() else {}
    files = list(dict.fromkeys(_file_of(item.nodeid) for item in items))
    rank = {name: i for i, name in enumerate(file_order(files, durations))}
    items.sort(key=lambda item: rank[_file_of(item.nodeid)])  # stable: a file's tests keep their order


def pytest_runtest_logreport(report) -> None:
    # On the xdist controller (or the single process with -n 0): setup, call and teardown of every test.
    if os.environ.get("NNLAB_TESTS_RECORD_DURATIONS") and not os.environ.get("PYTEST_XDIST_WORKER"):
        _recorded[_file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session, exitstatus) -> None:
    path = os.environ.get("NNLAB_TESTS_RECORD_DURATIONS")
    if path and _recorded and not os.environ.get("PYTEST_XDIST_WORKER"):
        Path(path).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_recorded.items())}, indent=1) + "\n",
                              encoding="utf-8")
