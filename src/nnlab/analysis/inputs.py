"""Rebuild what a run was trained on: its data split and its network.

Both raise :class:`~nnlab.analysis.base.SectionSkipped` with the reason when the
run's artifacts do not allow it, so the sections that need them are skipped and
the rest of the analysis goes on. The analysis never writes to the run or to
its data file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnlab.analysis.artifacts import RunArtifacts
from nnlab.analysis.base import SectionSkipped
from nnlab.errors import NnlabError

__all__ = ["RunData", "rebuild_run_data", "load_network", "run_config"]


@dataclass
class RunData:
    """The run's data split (``prepared``), the scalers used for physical units, and how it was rebuilt."""

    prepared: Any
    scalers: Any
    source: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_config(run: RunArtifacts):
    """The run's validated :class:`~nnlab.config.Config` (SectionSkipped if it has none or it is invalid)."""
    from nnlab.config import Config

    if not run.config:
        raise SectionSkipped(f"training_config.json of run {run.run_id} is missing or has no configuration "
                             f"({run.problems.get('training_config.json', 'no config object')})")
    try:
        return Config.from_flat(run.config, source="training_config.json")
    except NnlabError as exc:
        raise SectionSkipped(f"the run's recorded configuration is not valid for this nnlab version: {exc}") from None


def _saved_scalers(run: RunArtifacts):
    from nnlab.data import load_scalers
    from nnlab.errors import DataValidationError

    if not (run.run_dir / "scalers.json").is_file():
        return None, "scalers.json is missing"
    try:
        return load_scalers(run.run_dir), None
    except DataValidationError as exc:
        return None, str(exc)


def _data_source(run: RunArtifacts, cfg: Any, scalers: Any) -> Any:
    """The run's recorded :class:`~nnlab.runs.DataSource`, with the targets of its scalers."""
    import dataclasses

    from nnlab.runs import DataSource

    record = run.record.get("data")
    if not isinstance(record, dict) or not (record.get("csv_path") or record.get("num_particles")):
        raise SectionSkipped("the run records no data source (training_config.json has no 'data' naming a "
                             "csv_path or num_particles), so its data cannot be rebuilt")
    try:
        source = DataSource.from_record(record, cfg)
    except NnlabError as exc:
        raise SectionSkipped(f"the run's data source cannot be read: {exc}") from None
    if source.kind == "simulated" and source.targets is None and scalers is not None:
        # a subset of the particle targets; on a CSV, targets would make it a user's table
        source = dataclasses.replace(source, targets=tuple(scalers.target_names))
    if source.kind == "csv" and not Path(source.csv_path).is_file():
        raise SectionSkipped(f"the run's data file {source.csv_path} no longer exists")
    if source.kind == "simulated" and source.seed is None:
        raise SectionSkipped("the run's particles were generated without a seed (random_seed null), "
                             "so they cannot be regenerated")
    return source


def _same_split(prepared: Any, scalers: Any) -> bool:
    return (list(prepared.feature_names) == list(scalers.feature_names)
            and np.allclose(prepared.x_scaler.mean_, scalers.x_scaler.mean_, rtol=1e-9, atol=1e-12)
            and np.allclose(prepared.y_scaler.mean_, scalers.y_scaler.mean_, rtol=1e-9, atol=1e-12)
            and len(prepared.X_train) == int(scalers.x_scaler.n_samples_seen_))


def rebuild_run_data(run: RunArtifacts) -> RunData:
    """The run's train/val/test split, rebuilt from its recorded data source.

    Uses the ``data`` record of training_config.json (a :class:`~nnlab.runs.DataSource`:
    ``csv_path``, or ``num_particles``/``seed``; ``random_state``, split sizes; a user's
    table's ``targets``/``features``/``drop_missing``).
    A CSV is read, never rewritten. When scalers.json exists the rebuilt training
    split must reproduce its means exactly, which proves it is the same data and split.

    Raises:
        SectionSkipped: no data source recorded, the source is gone or unseeded, or it
            does not reproduce the run.
    """
    from nnlab.errors import DataValidationError

    cfg = run_config(run)
    scalers, scaler_problem = _saved_scalers(run)
    source = _data_source(run, cfg, scalers)
    described: dict[str, Any] = {"test_size": source.test_size, "val_size": source.val_size,
                                 "random_state": source.random_state}
    if source.kind == "csv":
        described.update(kind="csv", csv_path=source.csv_path)
        if source.task == "table":
            described.update(task="table", targets=list(source.targets),
                             features=list(source.features) if source.features is not None else None,
                             drop_missing=source.drop_missing)
    else:
        described.update(kind="regenerated", num_particles=source.num_particles, seed=source.seed)
    try:
        prepared = source.prepare()
    except DataValidationError as exc:
        raise SectionSkipped(f"the run's data could not be rebuilt: {exc}") from None
    if source.kind == "csv":
        described["rows"] = len(prepared.X_train) + len(prepared.X_val) + len(prepared.X_test)
    notes: list[str] = []
    if scalers is None:
        notes.append(f"not verified against the run's scalers ({scaler_problem}); "
                     "physical units use scalers refitted on the rebuilt training split")
        scalers = prepared
    elif not _same_split(prepared, scalers):
        raise SectionSkipped("the rebuilt data does not reproduce the run's scalers.json (different data or "
                             f"split: {described}); the run's own test set is not available")
    else:
        described["verified_against_scalers"] = True
    described.update(n_train=len(prepared.X_train), n_val=len(prepared.X_val), n_test=len(prepared.X_test))
    return RunData(prepared=prepared, scalers=scalers, source=described, notes=notes)


def load_network(run: RunArtifacts, n_features: int, n_targets: int):
    """The run's network with its saved weights (final, else best).

    Returns:
        ``(AdvancedNeuralNetwork, weights_path)``.

    Raises:
        SectionSkipped: no weights file, an unreadable one, or weights that do
            not fit the architecture recorded in training_config.json.
    """
    from nnlab.runs import load_network as load_trained

    path = run.weights_path()
    if path is None:
        raise SectionSkipped(f"no weights in {run.run_dir / 'weights'} (final.weights.h5 or best.weights.h5)")
    cfg = run_config(run)
    try:
        network = load_trained(cfg, n_features, n_targets, path)
    except NnlabError as exc:
        raise SectionSkipped(f"the run's network cannot be built: {exc}") from None
    except ValueError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # Keras puts the useful part ("variable.shape=(23, 8), Received: value.shape=(23, 16)") deeper down.
        first = next((line for line in lines if "shape" in line), lines[0] if lines else type(exc).__name__)
        first = first.split(" Target variable:")[0]
        raise SectionSkipped(f"the weights in {path.name} do not fit the recorded architecture "
                             f"(hidden_layers={cfg.model.hidden_layers}, {n_features} features -> "
                             f"{n_targets} targets): {first}") from None
    except OSError as exc:
        raise SectionSkipped(f"the weights file {path} is unreadable: {exc}") from None
    return network, path
