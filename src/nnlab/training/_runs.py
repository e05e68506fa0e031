"""Run directories, the configuration log and library versions."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from nnlab._files import probe_writable, read_csv_rows
from nnlab.errors import ConfigError, NnlabError

DEFAULT_OUTPUT_DIR = "training_output"
CONFIG_LOG_NAME = "configuration_log.csv"
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
    try:
        if create:
            (root / "runs").mkdir(parents=True, exist_ok=True)
        probe_writable(root)
    except OSError as exc:
        raise ConfigError(f"output directory '{root}' cannot be written: {exc.strerror or exc}") from None
    return root


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


def find_run_dir(output_dir: str | os.PathLike, run_id: str = "latest") -> Path:
    """The directory of run ``run_id`` (or the newest run for ``"latest"``).

    Raises:
        NnlabError: if there are no runs, or no run with that id (the message
            lists the available ones).
    """
    runs = Path(output_dir) / "runs"
    available = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    if not available:
        raise NnlabError(f"no runs in '{runs}': run `python main.py` first")
    if run_id == "latest":
        return runs / available[-1]
    if run_id not in available:
        shown = ", ".join(available[-10:])
        more = f" (and {len(available) - 10} older)" if len(available) > 10 else ""
        raise NnlabError(f"unknown run id '{run_id}' in '{runs}'; available: {shown}{more}")
    return runs / run_id


def config_log_row(output_dir: str | os.PathLike, run_id: str) -> dict[str, str] | None:
    """The configuration_log.csv row of a run, if there is one."""
    for row in read_csv_rows(Path(output_dir) / CONFIG_LOG_NAME):
        if row.get("run_id") == run_id:
            return row
    return None


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's results depend on."""
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


