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

from nnlab.runs._execute import RunResult, RunSpec, build_network, execute, load_network, resume
from nnlab.runs._lock import RunLock, RunLockedError, locked_by
from nnlab.runs._pipeline import train_with_tracking
from nnlab.runs._resume import resume_training
from nnlab.runs._runs import (
    RESUMABLE_STATUSES,
    CONFIG_LOG_COLUMNS,
    CONFIG_LOG_NAME,
    DEFAULT_OUTPUT_DIR,
    RUN_STATUS_NAME,
    check_output_dir,
    config_log_row,
    create_run_dir,
    find_resumable_run,
    file_digest,
    find_run_dir,
    library_versions,
    list_run_dirs,
    read_run_status,
    resume_refusal,
    write_run_status,
)
from nnlab.runs._source import DEFAULT_RANDOM_STATE, DataSource
from nnlab.runs._state import (
    CallbackAttributes,
    CheckpointError,
    InterruptRequest,
    ModelState,
    TrainingCheckpoint,
    TrainingState,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from nnlab.runs._status import RunStatus
from nnlab.runs._summary import format_summary
from nnlab.runs._weights import WeightCheckpoint

__all__ = [
    "DEFAULT_RANDOM_STATE",
    "RESUMABLE_STATUSES",
    "CONFIG_LOG_COLUMNS",
    "CONFIG_LOG_NAME",
    "DEFAULT_OUTPUT_DIR",
    "RUN_STATUS_NAME",
    "CallbackAttributes",
    "DataSource",
    "RunResult",
    "RunSpec",
    "RunStatus",
    "build_network",
    "execute",
    "file_digest",
    "load_network",
    "resume",
    "CheckpointError",
    "InterruptRequest",
    "ModelState",
    "RunLock",
    "RunLockedError",
    "TrainingCheckpoint",
    "TrainingState",
    "WeightCheckpoint",
    "check_output_dir",
    "config_log_row",
    "create_run_dir",
    "find_resumable_run",
    "find_run_dir",
    "format_summary",
    "library_versions",
    "list_checkpoints",
    "list_run_dirs",
    "load_latest_checkpoint",
    "locked_by",
    "read_run_status",
    "resume_refusal",
    "resume_training",
    "save_checkpoint",
    "train_with_tracking",
    "write_run_status",
]
