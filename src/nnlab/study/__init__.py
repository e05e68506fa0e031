"""Controlled multi-seed comparisons on the Optuna storage layer of :mod:`nnlab.orchestration`.

A study is a set of *cells* (configurations that differ in a controlled way)
each trained once per *seed*. Every (cell, seed) is a normal run through
:func:`~nnlab.runs.execute`, with its own run directory under
the study directory. Runs of one seed share the data split and the initial
weights, so cells are compared in pairs, seed by seed. The units are claimed
from an Optuna study: a killed study resumes where it stopped, worker
processes and machines sharing a database never run a unit twice.

Two kinds have a command: ``nnlab study precision`` (significant bits ×
rounding × precision policy, see :func:`precision_cells`) and ``nnlab study
compare`` (named variants, see :func:`compare_cells`). Outputs in the study
directory: ``<kind>_runs.csv`` (one row per unit, rebuilt after every run) and
the summary (``<kind>_study.csv``, ``<kind>_study.png``, ``<kind>_summary.json``).

Importing this package is cheap: Optuna and TensorFlow load when a study runs.

Example:
    >>> from nnlab.study import StudySpec, run_study
    >>> spec = StudySpec.compare({"plain": {}, "js": {"enable_james_stein": True}}, seeds=6,
    ...                          base={"epochs": 20, "hidden_layers": [64, 32]})
    >>> result = run_study(spec, output_dir="js_study", data="particles.csv", workers=2)  # doctest: +SKIP
    >>> result.runs.groupby("variant")["test_r2"].mean()                                 # doctest: +SKIP
"""

from __future__ import annotations

from nnlab._lazy import lazy_attributes
from nnlab.study._cli import add_arguments, run

# name -> private module that defines it; resolved on first use.
_EXPORTS = {
    "Cell": "nnlab.study._cells",
    "StudySpec": "nnlab.study._cells",
    "precision_cells": "nnlab.study._cells",
    "compare_cells": "nnlab.study._cells",
    "parse_variant": "nnlab.study._cells",
    "DEFAULT_SEEDS": "nnlab.study._cells",
    "PRECISION_KEYS": "nnlab.study._cells",
    "ROUNDINGS": "nnlab.study._cells",
    "StudyResult": "nnlab.study._results",
    "run_study": "nnlab.study._engine",
    "default_output_dir": "nnlab.study._plan",
    "RUN_COLUMNS": "nnlab.study._results",
    "write_study_outputs": "nnlab.study._summary",
    "summarise_study": "nnlab.study._summary",
    "read_study_dir": "nnlab.study._summary",
    "format_r2_difference": "nnlab.study._summary",
}

__all__ = sorted([*_EXPORTS, "add_arguments", "run"])


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals(), __all__)
