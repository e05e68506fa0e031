"""Rebuild what a run was trained on: its data split and its network.

Both raise :class:`~nnlab.analysis.base.SectionSkipped` with the reason when the
run's artifacts do not allow it, so the sections that need them are skipped and
the rest of the analysis goes on. The analysis never writes to the run or to
its data file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnlab.analysis.artifacts import RunArtifacts
from nnlab.analysis.base import SectionSkipped
from nnlab.errors import NnlabError

__all__ = ["RunData", "rebuild_run_data", "load_network", "run_config", "infer_num_particles"]


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


def _split_sizes(n: int, test_size: float, val_size: float) -> tuple[int, int, int]:
    # The same arithmetic as sklearn's train_test_split in preprocess_for_training.
    n_test = math.ceil(test_size * n)
    n_val = math.ceil(val_size * (n - n_test))
    return n - n_test - n_val, n_val, n_test


def infer_num_particles(n_train: int, n_test: int | None, test_size: float, val_size: float) -> int | None:
    """The row count whose split gives ``n_train`` training rows (and ``n_test`` test rows); None if none does."""
    for n in range(max(n_train, 1), 10 * max(n_train, 1) + 10):
        train, _, test = _split_sizes(n, test_size, val_size)
        if train == n_train and (n_test is None or test == n_test):
            return n
        if train > n_train:
            return None
    return None


def _saved_scalers(run: RunArtifacts):
    from nnlab.data import load_scalers
    from nnlab.errors import DataValidationError

    if not (run.run_dir / "scalers.json").is_file():
        return None, "scalers.json is missing"
    try:
        return load_scalers(run.run_dir), None
    except DataValidationError as exc:
        return None, str(exc)


def rebuild_run_data(run: RunArtifacts) -> RunData:
    """The run's train/val/test split, rebuilt from its recorded data source.

    Uses the ``data`` record of training_config.json (``csv_path`` or
    ``num_particles``/``seed``, ``random_state``, split sizes); for runs that
    predate it, the generation config and a row count inferred from
    scalers.json. A CSV is read, never rewritten. When scalers.json exists the
    rebuilt training split must reproduce its means exactly, which proves it
    is the same data and split.

    Raises:
        SectionSkipped: the source is gone, unseeded, or does not reproduce the run.
    """
    from nnlab.data import complete_data_pipeline, load_particle_data, preprocess_for_training, validate_particle_data
    from nnlab.errors import DataValidationError

    cfg = run_config(run)
    record = run.record.get("data") if isinstance(run.record.get("data"), dict) else {}
    scalers, scaler_problem = _saved_scalers(run)
    test_size = float(record.get("test_size", cfg.training.test_size))
    val_size = float(record.get("val_size", cfg.training.val_size))
    seed = record.get("seed", cfg.generation.random_seed)
    default_state = cfg.generation.random_seed if cfg.generation.random_seed is not None else 42
    random_state = record.get("random_state", default_state)
    targets = list(scalers.target_names) if scalers is not None else None
    notes: list[str] = []
    source: dict[str, Any] = {"test_size": test_size, "val_size": val_size, "random_state": random_state}
    try:
        if record.get("csv_path"):
            path = Path(record["csv_path"])
            if not path.is_file():
                raise SectionSkipped(f"the run's data file {path} no longer exists")
            report = validate_particle_data(load_particle_data(path), source=path)
            prepared = preprocess_for_training(report.data, test_size, val_size, random_state, targets=targets)
            source.update(kind="csv", csv_path=str(path), rows=len(report.data))
        else:
            if seed is None:
                raise SectionSkipped("the run's particles were generated without a seed (random_seed null), "
                                     "so they cannot be regenerated")
            n = record.get("num_particles") or record.get("n_rows")
            if n is None and scalers is not None:
                n = infer_num_particles(int(scalers.x_scaler.n_samples_seen_),
                                        run.test_metrics.get("n_samples"), test_size, val_size)
                notes.append(f"num_particles not recorded; inferred {n} from scalers.json and test_metrics.json")
            if n is None:
                raise SectionSkipped("the run records no data source (training_config.json has no 'data') and "
                                     f"the particle count cannot be inferred ({scaler_problem or 'no match'})")
            prepared = complete_data_pipeline(None, num_particles=int(n), config=cfg.generation, seed=seed,
                                              test_size=test_size, val_size=val_size, random_state=random_state,
                                              targets=targets)
            source.update(kind="regenerated", num_particles=int(n), seed=seed)
    except DataValidationError as exc:
        raise SectionSkipped(f"the run's data could not be rebuilt: {exc}") from None
    if scalers is None:
        notes.append(f"not verified against the run's scalers ({scaler_problem}); "
                     "physical units use scalers refitted on the rebuilt training split")
        scalers = prepared
    else:
        same = (list(prepared.feature_names) == list(scalers.feature_names)
                and np.allclose(prepared.x_scaler.mean_, scalers.x_scaler.mean_, rtol=1e-9, atol=1e-12)
                and np.allclose(prepared.y_scaler.mean_, scalers.y_scaler.mean_, rtol=1e-9, atol=1e-12)
                and len(prepared.X_train) == int(scalers.x_scaler.n_samples_seen_))
        if not same:
            raise SectionSkipped("the rebuilt data does not reproduce the run's scalers.json (different data or "
                                 f"split: {source}); the run's own test set is not available")
        source["verified_against_scalers"] = True
    source.update(n_train=len(prepared.X_train), n_val=len(prepared.X_val), n_test=len(prepared.X_test))
    return RunData(prepared=prepared, scalers=scalers, source=source, notes=notes)


def load_network(run: RunArtifacts, n_features: int, n_targets: int):
    """The run's network with its saved weights (final, else best).

    Returns:
        ``(AdvancedNeuralNetwork, weights_path)``.

    Raises:
        SectionSkipped: no weights file, an unreadable one, or weights that do
            not fit the architecture recorded in training_config.json.
    """
    from nnlab.model import AdvancedNeuralNetwork

    path = run.weights_path()
    if path is None:
        raise SectionSkipped(f"no weights in {run.run_dir / 'weights'} (final.weights.h5 or best.weights.h5)")
    cfg = run_config(run)
    # Only predictions are made here: the physics loss term (which needs the scalers) is not built.
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"physics_loss_weight": 0.0})})
    network = AdvancedNeuralNetwork((n_features,), n_targets, cfg)
    try:
        network.model.load_weights(path)
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
