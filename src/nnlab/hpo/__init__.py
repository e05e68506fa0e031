"""Hyperparameter search on Optuna: resumable, prunable, spread over worker processes.

Each trial samples a preset and the keys of a :class:`SearchSpace`, trains
through :func:`~nnlab.runs.execute` (its own run directory, as ``python
main.py`` would) and reports validation R² every epoch so a pruner can stop
it. The study lives in an Optuna storage -- by default a journal file under
``<output_dir>/analysis/`` -- so rerunning the same command continues it, and
several processes (``workers``) or machines (a shared database) can work on
one study; claiming, heartbeats, lost databases and worker processes are
:mod:`nnlab.orchestration`'s. Results: ``hpo_results.csv``, ``best_config.json`` (accepted by
``python main.py --config``) and ``hpo_study.json``.

Importing this package is cheap: Optuna and TensorFlow load when a search runs.

Example:
    >>> from nnlab.hpo import run_search, load_search_space
    >>> sorted(load_search_space().keys)[:3]
    ['activation', 'batch_norm_momentum', 'constraint_interval']
    >>> summary = run_search(max_trials=3, epochs=2, num_particles=300,   # doctest: +SKIP
    ...                      output_dir="hpo_demo")
"""

from __future__ import annotations

from nnlab._lazy import lazy_attributes

from nnlab.hpo._cli import add_arguments, run

# name -> private module that defines it; resolved on first use (they import pydantic).
_EXPORTS = {
    "DEFAULT_SEARCH_SPACE": "nnlab.hpo._space",
    "SearchSpace": "nnlab.hpo._space",
    "load_search_space": "nnlab.hpo._space",
    "SearchSettings": "nnlab.hpo._search",
    "SearchSummary": "nnlab.hpo._search",
    "run_search": "nnlab.hpo._search",
    "RESULT_COLUMNS": "nnlab.hpo._results",
    "TrialPruningCallback": "nnlab.hpo._pruning",
}

__all__ = sorted([*_EXPORTS, "add_arguments", "run"])


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals(), __all__)
