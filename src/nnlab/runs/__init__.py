"""Training runs -- the one path of every run: ``RunSpec`` -> ``execute()`` / ``resume()`` -> ``RunResult``.

``nnlab train``, a resume, a search trial, a study unit and the analysis's
rebuild all go through this package; nothing above it builds or trains a network.
``DataSource`` says where a run's rows come from and is recorded with the run.

Every run gets its own directory ``<output_dir>/runs/<run_id>/`` (never reused)
and one row in ``<output_dir>/configuration_log.csv``::

    training_config.json   resolved configuration, seed, data source (with SHA-256 digests of the
                           data) and library versions; ``settings_sha256`` guards them for resume
    run_status.json        status (running/interrupted/completed/...), owner pid and host, updated
    .lock                  flock-ed by the one process training the run (names the owner)
    training_results.csv   one row per epoch (PerformanceTracker), flushed each epoch
    loss_history.csv       adaptive-loss weights per epoch, flushed each epoch
    weights/               epoch_NNNN / best / final ``.weights.h5``
    checkpoints/           full training state (ckpt_NNNN.npz + .json) for resume
    scalers.json           feature/target scalers (when the data carries them)
    test_metrics.json      test-set metrics, per target, in scaled and physical units
    training_log.txt       human-readable summary
"""

from __future__ import annotations

from nnlab._lazy import lazy_attributes

# name -> module that defines it; resolved on first use, so `from nnlab.runs import RunStatus`
# (the analysis, the command line's refusals) loads no TensorFlow.
_EXPORTS = {
    "CONFIG_LOG_COLUMNS": "nnlab.runs._runs",
    "CONFIG_LOG_NAME": "nnlab.runs._runs",
    "CallbackAttributes": "nnlab.runs._state",
    "CheckpointError": "nnlab.runs._runs",
    "DEFAULT_OUTPUT_DIR": "nnlab.runs._runs",
    "DEFAULT_RANDOM_STATE": "nnlab.runs._source",
    "DataSource": "nnlab.runs._source",
    "InterruptRequest": "nnlab.runs._state",
    "ModelState": "nnlab.runs._state",
    "RESUMABLE_STATUSES": "nnlab.runs._runs",
    "RUN_STATUS_NAME": "nnlab.runs._runs",
    "RunLock": "nnlab.runs._lock",
    "RunLockedError": "nnlab.runs._lock",
    "RunResult": "nnlab.runs._execute",
    "RunSpec": "nnlab.runs._execute",
    "RunStatus": "nnlab.runs._status",
    "TrainingCheckpoint": "nnlab.runs._state",
    "TrainingState": "nnlab.runs._state",
    "WeightCheckpoint": "nnlab.runs._weights",
    "build_network": "nnlab.runs._execute",
    "check_config_log": "nnlab.runs._runs",
    "check_table_keys": "nnlab.runs._source",
    "check_output_dir": "nnlab.runs._runs",
    "check_path_names": "nnlab.runs._runs",
    "divergence_message": "nnlab.runs._runs",
    "config_log_row": "nnlab.runs._runs",
    "create_run_dir": "nnlab.runs._runs",
    "execute": "nnlab.runs._execute",
    "file_digest": "nnlab.runs._runs",
    "find_resumable_run": "nnlab.runs._runs",
    "find_run_dir": "nnlab.runs._runs",
    "format_summary": "nnlab.runs._summary",
    "library_versions": "nnlab.runs._runs",
    "list_checkpoints": "nnlab.runs._runs",
    "list_run_dirs": "nnlab.runs._runs",
    "load_latest_checkpoint": "nnlab.runs._state",
    "load_network": "nnlab.runs._execute",
    "locked_by": "nnlab.runs._lock",
    "read_run_status": "nnlab.runs._runs",
    "resume": "nnlab.runs._execute",
    "resume_refusal": "nnlab.runs._runs",
    "resume_training": "nnlab.runs._resume",
    "save_checkpoint": "nnlab.runs._state",
    "train_with_tracking": "nnlab.runs._pipeline",
    "write_run_status": "nnlab.runs._runs",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals(), __all__)
