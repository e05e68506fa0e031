"""Work claimed from an Optuna storage: what ``nnlab hpo`` and ``nnlab study`` share.

A search's trials and a study's (cell, seed) units are both *units claimed
from a study in an Optuna storage* -- a journal file or a database that
several processes and machines share. This package is that part, once:

* the storage: :class:`StorageSpec`, :func:`storage_spec`, :func:`resolve_storage`
  (:func:`check_storage`), :func:`open_storage`, :func:`open_study`;
* claims: :func:`claim_trial` under a budget and a lock
  (:func:`budget_lock_path`, :func:`counts_towards_budget`), trials whose
  worker is gone (:func:`fail_interrupted_trials`), trials still running
  elsewhere (:func:`running_elsewhere`, :func:`wait_for_running_trials`);
* the worker's loop: :func:`run_claim_loop` (claim, train, report) with
  :func:`train_claimed` (heartbeat, interruption) and a database that stops
  answering (:func:`is_connection_error`, :func:`reconnect`,
  :func:`release_own_trials`, :class:`StorageLostError`,
  :func:`exit_on_lost_storage`);
* worker processes: :func:`run_workers`, :func:`run_processes`,
  :func:`worker_main`, :func:`cap_workers`, :func:`available_cpus`,
  :func:`limit_threads`; the time left on a progress line (:func:`eta_text`);
* MLflow: :class:`MlflowTarget`, :func:`resolve_mlflow`, a parent run per
  study (:func:`open_parent`, :func:`finish_parent`, :func:`abort_parent`).

:mod:`nnlab.hpo` says what a trial is (a sampled configuration, its outcome)
and :mod:`nnlab.study` what a unit is (a cell and a seed); both train through
:func:`nnlab.runs.execute`. Importing this package is cheap: Optuna,
SQLAlchemy, psutil, TensorFlow and MLflow load inside the functions.

Example:
    >>> from nnlab.orchestration import storage_spec, cap_workers
    >>> storage_spec("sqlite:///hpo.db", "out").kind
    'rdb'
    >>> cap_workers(4, 2, cpus=8)
    (2, 'only 2 trials are left to run')
"""

from __future__ import annotations

from nnlab.orchestration._claims import (
    OUTCOME_ATTR,
    POLL_S,
    budget_lock_path,
    claim_trial,
    counts_towards_budget,
    fail_interrupted_trials,
    give_back,
    running_elsewhere,
    this_host,
    trial_id,
    wait_for_running_trials,
    worker_identity,
)
from nnlab.orchestration._loop import heartbeat, open_worker_study, run_claim_loop, train_claimed
from nnlab.orchestration._lost import (
    RECONNECT_DELAYS_S,
    StorageLostError,
    exit_on_lost_storage,
    is_connection_error,
    reconnect,
    release_own_trials,
)
from nnlab.orchestration._mlflow import (
    MlflowTarget,
    abort_parent,
    finish_parent,
    open_parent,
    parent_name,
    resolve_mlflow,
)
from nnlab.orchestration._pool import (
    available_cpus,
    cap_workers,
    capped_workers,
    check_positive,
    eta_text,
    limit_threads,
    one_line,
    progress_printer,
    quiet_retracing,
    report_failed_workers,
    run_processes,
    run_workers,
    worker_main,
)
from nnlab.orchestration._storage import (
    HEARTBEAT_GRACE_S,
    HEARTBEAT_INTERVAL_S,
    JOURNAL_FILE,
    KIND_ATTR,
    SETTINGS_ATTR,
    STUDY_SPEC_ATTR,
    StorageSpec,
    check_storage,
    claim_study,
    has_heartbeats,
    name_objective,
    open_storage,
    open_study,
    repair_journal,
    resolve_storage,
    retry_callback,
    storage_spec,
    study_kind,
)

__all__ = [
    "HEARTBEAT_GRACE_S",
    "HEARTBEAT_INTERVAL_S",
    "JOURNAL_FILE",
    "KIND_ATTR",
    "OUTCOME_ATTR",
    "POLL_S",
    "RECONNECT_DELAYS_S",
    "SETTINGS_ATTR",
    "STUDY_SPEC_ATTR",
    "MlflowTarget",
    "StorageLostError",
    "StorageSpec",
    "abort_parent",
    "available_cpus",
    "budget_lock_path",
    "cap_workers",
    "capped_workers",
    "check_positive",
    "check_storage",
    "claim_study",
    "claim_trial",
    "counts_towards_budget",
    "eta_text",
    "exit_on_lost_storage",
    "fail_interrupted_trials",
    "finish_parent",
    "give_back",
    "has_heartbeats",
    "heartbeat",
    "is_connection_error",
    "limit_threads",
    "one_line",
    "open_parent",
    "open_storage",
    "name_objective",
    "open_study",
    "repair_journal",
    "open_worker_study",
    "parent_name",
    "progress_printer",
    "quiet_retracing",
    "reconnect",
    "release_own_trials",
    "report_failed_workers",
    "resolve_mlflow",
    "resolve_storage",
    "retry_callback",
    "run_claim_loop",
    "run_processes",
    "run_workers",
    "running_elsewhere",
    "storage_spec",
    "study_kind",
    "this_host",
    "train_claimed",
    "trial_id",
    "wait_for_running_trials",
    "worker_identity",
    "worker_main",
]
