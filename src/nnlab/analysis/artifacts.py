"""Find runs and read their artifacts: one run, the run history, HPO results.

Everything here is read-only and needs only pandas/NumPy.

Example:
    >>> run = load_run("training_output")              # doctest: +SKIP
    >>> validate_artifacts(run)                        # doctest: +SKIP
    >>> history = load_run_history("training_output")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab.analysis.base import ArtifactError

__all__ = [
    "RunArtifacts",
    "list_runs",
    "resolve_run_dir",
    "load_run",
    "validate_artifacts",
    "load_run_history",
    "load_hpo_results",
    "hidden_layers_of",
]

# (relative path, required, what it is for). Required: the analysis of the run
# itself cannot start without it.
ARTIFACTS: tuple[tuple[str, bool, str], ...] = (
    ("training_config.json", True, "resolved configuration, seed, data source"),
    ("training_results.csv", True, "per-epoch metrics (dynamics, recommendations)"),
    ("loss_history.csv", False, "adaptive-loss weights per epoch"),
    ("weights/final.weights.h5", False, "network for residuals, predictions, baselines"),
    ("weights/best.weights.h5", False, "best-validation-R² weights"),
    ("scalers.json", False, "physical units for residuals and predictions"),
    ("test_metrics.json", False, "test metrics recorded at training time"),
    ("training_log.txt", False, "human-readable run summary"),
)


@dataclass
class RunArtifacts:
    """The artifacts of one run directory, read once.

    Attributes:
        run_id: the run's id (its directory name).
        run_dir: ``<output_dir>/runs/<run_id>``.
        output_dir: the training output root.
        record: the whole ``training_config.json`` document ({} if unreadable).
        config: its flat ``config`` mapping.
        results: ``training_results.csv`` (empty DataFrame if missing).
        loss_history: ``loss_history.csv`` (empty DataFrame if missing).
        test_metrics: ``test_metrics.json`` ({} if missing).
        problems: why artifacts could not be read, by file name.
    """

    run_id: str
    run_dir: Path
    output_dir: Path
    record: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    loss_history: pd.DataFrame = field(default_factory=pd.DataFrame)
    test_metrics: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def weights_path(self) -> Path | None:
        """``final.weights.h5`` (what test_metrics.json was computed with), else ``best``."""
        for name in ("final.weights.h5", "best.weights.h5"):
            path = self.run_dir / "weights" / name
            if path.is_file():
                return path
        return None


def list_runs(output_dir: str | os.PathLike) -> list[str]:
    """Run ids under ``<output_dir>/runs`` that have a training_config.json, oldest first.

    Run ids start with their UTC start time, so name order is start order.
    """
    runs = Path(output_dir) / "runs"
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if (p / "training_config.json").is_file())


def resolve_run_dir(output_dir: str | os.PathLike, run: str | None = "latest") -> Path:
    """The directory of run ``run`` (``"latest"`` or None: the newest run).

    Raises:
        ArtifactError: no runs at all (run ``python main.py`` first), or an unknown
            run id (the message lists the available ones).
    """
    root = Path(output_dir)
    available = list_runs(root)
    if not available:
        raise ArtifactError(f"no training runs found in '{root / 'runs'}': run `python main.py` first "
                            f"(or pass --output-dir to the directory you trained into)")
    if run in (None, "", "latest"):
        return root / "runs" / available[-1]
    if run not in available:
        shown = available[-20:]
        more = f" (the last {len(shown)} of {len(available)})" if len(available) > len(shown) else ""
        raise ArtifactError(f"unknown run id '{run}' in '{root / 'runs'}'; available runs{more}:\n  "
                            + "\n  ".join(shown))
    return root / "runs" / run


def read_json_artifact(path: Path, problems: dict[str, str]) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` with the reason in ``problems[path.name]`` (missing, unreadable, not an object)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems[path.name] = "missing"
        return {}
    except (OSError, ValueError) as exc:
        problems[path.name] = f"unreadable: {exc}"
        return {}
    if not isinstance(value, dict):
        problems[path.name] = "not a JSON object"
        return {}
    return value


def _read_csv(path: Path, problems: dict[str, str]) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        problems[path.name] = "missing"
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        problems[path.name] = f"unreadable: {exc}"
    return pd.DataFrame()


def load_run(output_dir: str | os.PathLike, run: str | None = "latest") -> RunArtifacts:
    """Read the artifacts of one run (missing optional files are recorded, not raised).

    Raises:
        ArtifactError: see :func:`resolve_run_dir`.
    """
    run_dir = resolve_run_dir(output_dir, run)
    problems: dict[str, str] = {}
    record = read_json_artifact(run_dir / "training_config.json", problems)
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    if record and not config:
        problems["training_config.json"] = "has no 'config' object"
    results = _read_csv(run_dir / "training_results.csv", problems)
    if not results.empty and not {"epoch", "val_loss", "train_loss"} <= set(results.columns):
        problems["training_results.csv"] = "lacks the epoch/train_loss/val_loss columns"
        results = pd.DataFrame()
    return RunArtifacts(
        run_id=run_dir.name, run_dir=run_dir, output_dir=Path(output_dir), record=record, config=config,
        results=results, loss_history=_read_csv(run_dir / "loss_history.csv", problems),
        test_metrics=read_json_artifact(run_dir / "test_metrics.json", problems), problems=problems,
    )


def _note(run: RunArtifacts, rel: str, path: Path) -> str:
    name = path.name
    if name in run.problems and run.problems[name] != "missing":
        return run.problems[name]
    if rel == "training_results.csv" and not run.results.empty:
        return f"{len(run.results)} epochs, {len(run.results.columns)} columns"
    if rel == "loss_history.csv" and not run.loss_history.empty:
        return f"{len(run.loss_history)} epochs"
    if rel == "training_config.json" and run.config:
        return f"{len(run.config)} keys; data source {'recorded' if 'data' in run.record else 'not recorded'}"
    if rel == "test_metrics.json" and run.test_metrics:
        return f"{run.test_metrics.get('n_samples', '?')} test samples"
    return ""


def validate_artifacts(run: RunArtifacts) -> pd.DataFrame:
    """The artifact table: artifact, required, exists, size_bytes, modified, note.

    Covers the run's files, its periodic checkpoints, the configuration log and
    the HPO results.
    """
    rows = []
    entries = [(rel, req, use, run.run_dir / rel) for rel, req, use in ARTIFACTS]
    entries += [
        ("configuration_log.csv", False, "run history", run.output_dir / "configuration_log.csv"),
        ("analysis/hpo_results.csv", False, "HPO trials", run.output_dir / "analysis" / "hpo_results.csv"),
    ]
    for rel, required, use, path in entries:
        exists = path.is_file()
        stat = path.stat() if exists else None
        note = _note(run, rel, path) if exists else ("MISSING (required)" if required else "missing")
        rows.append({
            "artifact": rel, "required": required, "exists": exists,
            "size_bytes": stat.st_size if stat else None,
            "modified": (datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
                         if stat else None),
            "used_for": use, "note": note,
        })
    checkpoints = sorted((run.run_dir / "weights").glob("epoch_*.weights.h5"))
    rows.append({
        "artifact": "weights/epoch_*.weights.h5", "required": False, "exists": bool(checkpoints),
        "size_bytes": sum(p.stat().st_size for p in checkpoints) if checkpoints else None,
        "modified": None, "used_for": "periodic checkpoints", "note": f"{len(checkpoints)} files",
    })
    table = pd.DataFrame(rows)
    table["size_bytes"] = table["size_bytes"].astype("Int64")  # integers with gaps, not floats
    return table


def hidden_layers_of(value: Any) -> list[int] | None:
    """``hidden_layers`` from a config value or its CSV text (``"[64, 32]"``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return [int(v) for v in value]
    return None


def _run_curve_summary(run_dir: Path) -> dict[str, float]:
    path = run_dir / "training_results.csv"
    try:
        df = pd.read_csv(path, usecols=lambda c: c in {"val_loss", "r2_score", "epoch_time"})
    except (FileNotFoundError, OSError, ValueError, pd.errors.ParserError):
        return {}
    out: dict[str, float] = {}
    if "val_loss" in df and df["val_loss"].notna().any():
        out["best_val_loss"] = float(df["val_loss"].min())
        out["final_val_loss"] = float(df["val_loss"].dropna().iloc[-1])
    if "epoch_time" in df and df["epoch_time"].notna().any():
        out["avg_epoch_time"] = float(df["epoch_time"].mean())
    if "r2_score" in df and df["r2_score"].notna().any():
        out["results_best_r2"] = float(df["r2_score"].max())
        out["results_final_r2"] = float(df["r2_score"].dropna().iloc[-1])
    return out


_HISTORY_KEYS = ("learning_rate", "dropout_rate", "batch_size", "epochs", "l2_regularization", "activation",
                 "optimizer", "loss_weighting_strategy", "use_batch_norm", "seed")
_NUMERIC = ("learning_rate", "dropout_rate", "batch_size", "epochs", "l2_regularization", "final_val_r2",
            "best_val_r2", "test_r2", "test_mse", "test_mae", "total_time_s", "peak_memory_mb", "epochs_run",
            "best_epoch")


def load_run_history(output_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per run: configuration_log.csv merged with every run's own files.

    Runs found on disk but not in the log (or vice versa) are included. Each
    row gets ``best_val_loss``/``final_val_loss``/``avg_epoch_time`` from the
    run's training_results.csv when present, and ``n_layers``/``total_units``
    from ``hidden_layers``. Numeric columns are floats (NaN when unknown).
    """
    root = Path(output_dir)
    log_path = root / "configuration_log.csv"
    rows: dict[str, dict[str, Any]] = {}
    if log_path.is_file():
        try:
            log = pd.read_csv(log_path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ArtifactError(f"configuration log {log_path} is unreadable: {exc}") from exc
        for record in log.to_dict("records"):
            if record.get("run_id"):
                rows[record["run_id"]] = {k: (v if v != "" else None) for k, v in record.items()}
    for run_id in list_runs(root):
        row = rows.setdefault(run_id, {"run_id": run_id, "status": "unknown (not in configuration_log.csv)"})
        problems: dict[str, str] = {}
        record = read_json_artifact(root / "runs" / run_id / "training_config.json", problems)
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        for key in (*_HISTORY_KEYS, "hidden_layers"):
            if row.get(key) is None and key in config:
                row[key] = config[key]
        row.setdefault("preset", record.get("preset"))
        curve = _run_curve_summary(root / "runs" / run_id)
        # Runs missing from the log (or logged before they finished) get their R² from their own CSV.
        for key, alt in (("best_val_r2", "results_best_r2"), ("final_val_r2", "results_final_r2")):
            if row.get(key) is None and alt in curve:
                row[key] = curve[alt]
        row.update({k: v for k, v in curve.items() if not k.startswith("results_")})
        row["run_dir"] = str(root / "runs" / run_id)
    history = pd.DataFrame(list(rows.values()))
    if history.empty:
        return history
    for col in _NUMERIC:
        if col in history:
            history[col] = pd.to_numeric(history[col], errors="coerce")
    layers = history["hidden_layers"].map(hidden_layers_of) if "hidden_layers" in history else None
    if layers is not None:
        history["n_layers"] = layers.map(lambda v: float(len(v)) if v else math.nan)
        history["total_units"] = layers.map(lambda v: float(sum(v)) if v else math.nan)
    return history.sort_values("run_id", kind="stable").reset_index(drop=True)


def load_hpo_results(path: str | os.PathLike) -> pd.DataFrame | None:
    """``hpo_results.csv`` as a DataFrame with the ``overrides`` JSON expanded into columns.

    Returns None when the file does not exist. Trials whose ``state`` is not
    ``COMPLETE`` are kept (filter on ``state``); numeric metrics are floats.

    Raises:
        ArtifactError: the file exists but cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ArtifactError(f"HPO results {path} are unreadable: {exc}") from exc
    expanded = []
    for text in df.get("overrides", pd.Series([None] * len(df))):
        try:
            value = json.loads(text) if isinstance(text, str) and text else {}
        except ValueError:
            value = {}
        expanded.append(value if isinstance(value, dict) else {})
    for key in sorted({k for e in expanded for k in e}):
        if key in df.columns:
            continue
        df[key] = [e.get(key, np.nan) if not isinstance(e.get(key), list) else json.dumps(e[key]) for e in expanded]
    for col in ("test_mse", "test_mae", "test_rmse", "test_r2", "best_r2", "final_r2", "avg_epoch_time",
                "total_epochs", "duration_s", "learning_rate", "dropout_rate", "batch_size", "epochs",
                "l2_regularization"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df
