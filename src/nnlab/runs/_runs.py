"""Run directories, run statuses, the configuration log and library versions."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nnlab._files import atomic_write_json, probe_writable, read_csv_rows
from nnlab.errors import ConfigError, NnlabError
from nnlab.runs._lock import RunLockedError, locked_by
from nnlab.runs._status import RunStatus

DEFAULT_OUTPUT_DIR = "training_output"
CONFIG_LOG_NAME = "configuration_log.csv"
RUN_STATUS_NAME = "run_status.json"
# Statuses of a run that stopped before its end and can go on from its last checkpoint
# (RunStatus.DISK_FULL: stopped by a full disk).
RESUMABLE_STATUSES = tuple(s for s in RunStatus if s.resumable)
CONFIG_LOG_COLUMNS = (
    "run_id", "timestamp", "status", "preset", "loss_weighting_strategy", "constraints",
    "hidden_layers", "activation", "optimizer", "learning_rate", "dropout_rate", "use_batch_norm",
    "l2_regularization", "constraint_interval", "epochs", "batch_size", "seed", "epochs_run",
    "final_val_r2", "best_val_r2", "best_epoch", "test_r2", "test_mse", "test_mae",
    "total_time_s", "peak_memory_mb", "error_count", "run_dir",
)


def check_output_dir(output_dir: str | os.PathLike, *, create: bool = True) -> Path:
    """Prove ``output_dir`` is writable before any work; with ``create``, make it (and ``runs/``).

    Without ``create`` nothing is written (see :func:`nnlab._files.probe_writable`).

    Raises:
        ConfigError: naming the directory and why it cannot be used.
    """
    root = Path(output_dir)
    check_path_names(root)
    try:
        if create:
            (root / "runs").mkdir(parents=True, exist_ok=True)
        probe_writable(root)
    except OSError as exc:
        raise ConfigError(f"output directory '{root}' cannot be written: {exc.strerror or exc}") from None
    check_config_log(root)
    return root


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, say: not there
        return False


# What a run adds below the output directory at most (runs/<run id>/<a temporary file's name>).
_RUN_PATH_RESERVE = 160


def check_path_names(output_dir: str | os.PathLike, *, option: str = "--output-dir") -> None:
    """Refuse, before any work, an output directory whose path the run's files could not hold.

    Its full path must be UTF-8 (the configuration log, training_config.json and the training log
    record it), each name in it at most the file system's name limit (usually 255 bytes), and the
    whole path short enough for the run's own files below it.

    Raises:
        ConfigError: naming ``option``, the path and what is allowed.
    """
    root = Path(output_dir)
    absolute = root.absolute()
    raw = os.fsencode(absolute)
    shown = os.fsencode(root).decode("utf-8", "backslashreplace")
    try:
        os.fsdecode(raw).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{option}: '{shown}' is not a UTF-8 path (a run's files record it); choose a directory "
                          "whose full path is UTF-8") from None
    existing = absolute
    while existing != existing.parent and not _exists(existing):
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    from nnlab.config import shorten

    for part in absolute.parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(f"{option}: '{shorten(shown, 80)}' has a name of {len(os.fsencode(part))} bytes "
                              f"('{shorten(part, 40)}'); this file system allows at most {name_max}: choose a "
                              f"shorter {option}")
    if len(raw) + _RUN_PATH_RESERVE > path_max:
        raise ConfigError(f"{option}: '{shorten(shown, 80)}' is {len(raw)} bytes long as a full path; a run's files "
                          f"need it under {path_max - _RUN_PATH_RESERVE}: choose a shorter {option}")


def _is_log_header(header: list[str]) -> bool:
    """nnlab's log: run_id first, then log columns (columns are only ever appended to its header)."""
    return bool(header) and header[0] == "run_id" and any(c in CONFIG_LOG_COLUMNS for c in header[1:])


def check_config_log(output_dir: str | os.PathLike, *, shown: str | None = None) -> None:
    """Refuse an ``<output_dir>/configuration_log.csv`` that is not nnlab's configuration log.

    Reads only its first line. The log is recognised by its header: ``run_id`` first, then
    columns of the log (:data:`CONFIG_LOG_COLUMNS`); an empty file counts as a new log. A symlink is followed
    (a log shared between output directories is a link), and its target is checked the same way.

    Raises:
        ConfigError: naming the file (under ``shown``, the directory as the user named it, if given),
            what its header is, and what to do.
    """
    path = Path(output_dir) / CONFIG_LOG_NAME
    named = Path(shown) / CONFIG_LOG_NAME if shown is not None else path
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"--output-dir: '{named}' cannot be checked: {exc.strerror or exc}") from None
    from nnlab._files import special_file_kind
    from nnlab.config import shorten

    kind = special_file_kind(mode)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader([fh.readline(1 << 16)]), []) if kind is None else None
    except (OSError, UnicodeDecodeError, csv.Error):
        header, kind = None, kind or "not a text file"
    if header == [] or (header is not None and _is_log_header(header)):
        return
    what = kind or f"a CSV whose header is '{shorten(','.join(header or []), 80)}'"
    raise ConfigError(f"--output-dir: '{named}' is not nnlab's configuration log ({what}; the log's header "
                      "is run_id,timestamp,status,...); a run would add its row to it. Move the "
                      "file or choose another --output-dir")


def divergence_message(precision_policy: str | None) -> str:
    """Why a run diverged and what to change: under ``mixed_float16`` the usual cause is float16
    overflow (past 65504, e.g. a large physics loss term), not the learning rate."""
    if precision_policy == "mixed_float16":
        return ("training diverged (the loss became NaN/inf): float16 overflows past 65504 under precision_policy "
                "mixed_float16; train with --set precision_policy=float32 (or mixed_bfloat16, float32's range)")
    return "training diverged (the loss became NaN/inf); try a smaller learning_rate"


def create_run_dir(output_dir: str | os.PathLike) -> tuple[str, Path]:
    """A new, unique run directory under ``<output_dir>/runs``.

    The run id is the UTC time to the microsecond plus the process id
    (``20261126-113512-123456-p4242``), so ids sort by start time; creating the
    directory with ``exist_ok=False`` makes a clash impossible even between
    processes (a suffix is added and the creation retried).
    """
    runs = check_output_dir(output_dir) / "runs"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    base = f"{stamp}-p{os.getpid()}"
    for attempt in range(1000):
        run_id = base if attempt == 0 else f"{base}-{attempt}"
        try:
            (runs / run_id).mkdir()
        except FileExistsError:
            continue
        return run_id, runs / run_id
    raise ConfigError(f"could not create a unique run directory under '{runs}'")  # pragma: no cover


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for a run directory: one holding ``training_config.json`` (stray folders are not runs)."""
    return (Path(path) / "training_config.json").is_file()


def list_run_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The run directories under ``<output_dir>/runs``, oldest first (ids sort by start time)."""
    runs = Path(output_dir) / "runs"
    if not runs.is_dir():
        return []
    return sorted((p for p in runs.iterdir() if p.is_dir() and is_run_dir(p)), key=lambda p: p.name)


def find_run_dir(output_dir: str | os.PathLike, run_id: str = "latest") -> Path:
    """The directory of run ``run_id`` (or the newest run for ``"latest"``).

    Folders and files in ``runs/`` that are not run directories are ignored.

    Raises:
        NnlabError: if there are no runs, or no run with that id (the message
            lists the available ones).
    """
    runs = Path(output_dir) / "runs"
    available = [p.name for p in list_run_dirs(output_dir)]
    if not available:
        raise NnlabError(f"no runs in '{runs}': run `python main.py` first")
    if run_id == "latest":
        return runs / available[-1]
    if run_id not in available:
        if (runs / run_id).is_dir():
            raise NnlabError(f"'{runs / run_id}' is not a run directory (it has no training_config.json)")
        shown = ", ".join(available[-10:])
        more = f" (and {len(available) - 10} older)" if len(available) > 10 else ""
        raise NnlabError(f"unknown run id '{run_id}' in '{runs}'; available: {shown}{more}")
    return runs / run_id


# --- run status -------------------------------------------------------------------

def write_run_status(run_dir: str | os.PathLike, status: str, **fields: Any) -> Path:
    """Record a run's status in ``<run_dir>/run_status.json`` (atomically), with this process as its owner.

    Written when training starts, on every status change and at the end; it is
    what resuming trusts (configuration_log.csv is shared and may be edited or missing).
    """
    return atomic_write_json(Path(run_dir) / RUN_STATUS_NAME, {
        "status": status, "pid": os.getpid(), "hostname": socket.gethostname(),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields,
    })


def read_run_status(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """A run's recorded status: ``run_status.json``, else its configuration_log.csv row, else ``{}``.

    The result has ``status`` and ``source`` (the file it came from) and, when
    known, ``epochs_run``, ``epochs``, ``pid``, ``hostname``, ``error``.

    Raises:
        NnlabError: ``run_status.json`` exists but is not a JSON object with a ``status``.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_STATUS_NAME
    if path.exists():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NnlabError(f"{path}: unreadable run status ({exc}); the run's state is unknown") from None
        if not isinstance(record, dict) or not isinstance(record.get("status"), str):
            raise NnlabError(f"{path}: no 'status' recorded; the run's state is unknown")
        return {**record, "source": RUN_STATUS_NAME}
    try:
        row = config_log_row(output_dir if output_dir is not None else run_dir.parent.parent, run_dir.name)
    except (OSError, UnicodeDecodeError, csv.Error):
        row = None  # the shared log is secondary: unreadable, it just tells nothing
    if row and row.get("status"):
        return {k: v for k, v in row.items() if k in ("status", "epochs_run", "epochs")} | {"source": CONFIG_LOG_NAME}
    if (run_dir / "test_metrics.json").is_file():  # written only when a run completes
        return {"status": RunStatus.COMPLETED.value, "source": "test_metrics.json"}
    return {}


def _epochs_text(record: Mapping[str, Any]) -> str:
    try:
        done, total = int(record["epochs_run"]), int(record["epochs"])
    except (KeyError, TypeError, ValueError):
        return ""
    return f" after {done} of {total} epochs"


def resume_refusal(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> str | None:
    """Why a run with status ``record`` (:func:`read_run_status`) cannot be resumed now; None if it can.

    Resumable: ``interrupted`` (or stopped by a full disk), or ``running`` with
    nobody holding the run's lock (its process is gone), or no recorded status at
    all (runs from before statuses were recorded: the checkpoint decides).
    """
    name = Path(run_dir).name
    text = record.get("status")
    status = RunStatus.parse(text)
    source = record.get("source", RUN_STATUS_NAME)
    if text is None or (status is not None and status.resumable):
        return None
    if status == RunStatus.RUNNING:
        return locked_by(run_dir)
    if status == RunStatus.COMPLETED:
        try:
            done, total = int(record["epochs_run"]), int(record["epochs"])
        except (KeyError, TypeError, ValueError):
            return f"run {name} completed (status completed in {source}); nothing to resume"
        if done >= total:
            return f"run {name} completed all {total} epochs (status completed); nothing to resume"
        return (f"run {name} completed after {done} of {total} epochs: early stopping ended it "
                "(status completed); nothing to resume")
    if status == RunStatus.DIVERGED:
        return (f"run {name} diverged (the loss became NaN/inf){_epochs_text(record)} (status diverged); "
                "start a new run with a smaller learning_rate")
    if status == RunStatus.PRUNED:
        return (f"run {name} was pruned by the hyperparameter search{_epochs_text(record)} (status pruned); "
                "nothing to resume")
    if str(text).startswith(RunStatus.FAILED.value):  # also a "failed: <reason>" of another version
        error = record.get("error")
        because = f": {error}" if error else ""
        return f"run {name} failed (status {text}){because}; fix the cause and start a new run"
    return (f"run {name} has status '{text}' (in {source}); only an interrupted run, or a running one whose "
            "process is gone, can be resumed")


def find_resumable_run(output_dir: str | os.PathLike, run_id: str = "latest") -> Path:
    """The run to resume: ``run_id``, or for ``"latest"`` the newest run that can be resumed
    (and has a checkpoint).

    Nothing is written. See :func:`resume_refusal` for what can be resumed.

    Raises:
        NnlabError: no such run, the run cannot be resumed (the message says why;
            :class:`RunLockedError` when another process trains it), or, for
            ``"latest"``, no run can.
    """
    if run_id != "latest":
        run_dir = find_run_dir(output_dir, run_id)
        record = read_run_status(run_dir, output_dir)
        refusal = resume_refusal(run_dir, record)
        if refusal:
            raise (RunLockedError if record.get("status") == RunStatus.RUNNING else NnlabError)(refusal)
        return run_dir
    candidates = list_run_dirs(output_dir)
    if not candidates:
        find_run_dir(output_dir)  # raises "no runs"
    statuses: dict[str, int] = {}
    for run_dir in reversed(candidates):
        try:
            record = read_run_status(run_dir, output_dir)
        except NnlabError:
            statuses["unreadable"] = statuses.get("unreadable", 0) + 1
            continue
        refusal = resume_refusal(run_dir, record)
        if refusal is None and _has_checkpoint(run_dir):
            return run_dir
        status = record.get("status", "unknown")
        if refusal is None:
            status += " without a checkpoint"
        elif status == RunStatus.RUNNING:
            status += " (being trained)"
        statuses[status] = statuses.get(status, 0) + 1
    runs = Path(output_dir) / "runs"
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    raise NnlabError(f"no resumable run in '{runs}': {len(candidates)} run{'s' * (len(candidates) != 1)}, "
                     f"all {'/'.join(sorted(statuses))} ({counts}); start a new run with `python main.py`, "
                     "or pass a run id to --resume to see why that run cannot be resumed")


# --- digests: what a resume checks to prove it continues the same run ---------------------


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def settings_digest(saved: Mapping[str, Any]) -> str:
    """SHA-256 of what defines a run in training_config.json: configuration, seed and data source.

    Canonical JSON after a round trip, so the digest of the dict written at the
    start equals the digest of the same dict read back at resume.
    """
    settings = {"config": saved.get("config"), "seed": saved.get("seed"),
                "data": {k: v for k, v in (saved.get("data") or {}).items()}}
    canonical = json.dumps(json.loads(json.dumps(settings, default=_plain)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (e.g. the CSV a run was trained on)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def arrays_digest(arrays: Sequence[Any]) -> str:
    """SHA-256 of the prepared splits (X/y of train, validation, test): dtype, shape and bytes of each."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def config_log_row(output_dir: str | os.PathLike, run_id: str) -> dict[str, str] | None:
    """The configuration_log.csv row of a run, if there is one."""
    for row in read_csv_rows(Path(output_dir) / CONFIG_LOG_NAME):
        if row.get("run_id") == run_id:
            return row
    return None


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's results depend on."""
    import keras
    import pandas
    import sklearn
    import tensorflow as tf

    import nnlab

    return {
        "python": platform.python_version(),
        "nnlab": nnlab.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn.__version__,
    }



# Checkpoints are listed here, beside the run lookup, so a refused resume (an unknown, completed,
# locked or checkpoint-less run) answers without loading Keras (nnlab.runs._state does).
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(NnlabError):
    """No usable checkpoint (none written, or every one is corrupt)."""


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Manifest files of a run, oldest first."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    return sorted(directory.glob("ckpt_*.json")) if directory.is_dir() else []


def _has_checkpoint(run_dir: Path) -> bool:
    return bool(list_checkpoints(run_dir))
