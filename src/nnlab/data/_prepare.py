"""Train/val/test split and scaling, the scaler files, and the end-to-end data pipeline."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from nnlab._files import atomic_write
from nnlab.config import GenerationConfig
from nnlab.data._io import (
    DATA_FORMAT_VERSION,
    GENERATOR_NAME,
    sidecar_path,
    stale_reason,
    check_output_file,
    load_particle_data,
    save_particle_data,
)
from nnlab.data._simulate import (
    DEFAULT_TARGETS,
    DERIVED_FEATURES,
    FEATURE_COLUMNS,
    FINAL_COLUMNS,
    REQUIRED_COLUMNS,
    _check_positive_int,
    _coerce_config,
    add_derived_features,
    generate_particle_data,
)
from nnlab.data._validate import validate_particle_data
from nnlab.errors import ConfigError, DataValidationError

logger = logging.getLogger("nnlab.data")

# The task a run's data poses: the particle simulation's (physics applies) or a user's table.
PARTICLE_TASK = "particles"
TABLE_TASK = "table"


class _TargetScaling:
    """Methods shared by ``Scalers`` and ``PreparedData`` (both hold the fitted scalers)."""

    x_scaler: StandardScaler
    y_scaler: StandardScaler
    feature_names: list[str]
    target_names: list[str]
    task: str
    columns: list[str] | None
    encodings: dict[str, list[str]]

    @property
    def is_particle_task(self) -> bool:
        """True for the particle task (the physics relations apply), False for a user's table."""
        return self.task == PARTICLE_TASK

    def inverse_transform_targets(self, y_scaled: np.ndarray) -> np.ndarray:
        """Map scaled targets, shape (n, n_targets) or (n_targets,), to physical units."""
        y = np.asarray(y_scaled, dtype=np.float64)
        if y.ndim == 1:  # one sample
            return self.y_scaler.inverse_transform(y.reshape(1, -1))[0]
        return self.y_scaler.inverse_transform(y)

    def save_scalers(self, directory: str | os.PathLike) -> Path:
        """Write ``scalers.json`` (names, mean_, scale_, var_) atomically; JSON, not pickle."""
        def state(s: StandardScaler) -> dict[str, Any]:
            return {"mean_": s.mean_.tolist(), "scale_": s.scale_.tolist(),
                    "var_": s.var_.tolist(), "n_samples_seen_": int(np.max(s.n_samples_seen_))}
        doc = {"format_version": DATA_FORMAT_VERSION, "feature_names": list(self.feature_names),
               "target_names": list(self.target_names),
               "x_scaler": state(self.x_scaler), "y_scaler": state(self.y_scaler)}
        if not self.is_particle_task:  # a table's raw columns and text categories, to encode raw rows again
            doc.update(task=self.task, columns=list(self.columns or []),
                       encodings={k: list(v) for k, v in self.encodings.items()})
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "scalers.json", lambda fh: json.dump(doc, fh, indent=2, allow_nan=False))
        return out / "scalers.json"


@dataclass
class Scalers(_TargetScaling):
    """Fitted feature and target scalers plus the column names they belong to.

    For a user's table (``task == "table"``) also the raw feature ``columns`` and
    the ``encodings`` (categories) of its text columns.
    """

    x_scaler: StandardScaler
    y_scaler: StandardScaler
    feature_names: list[str]
    target_names: list[str]
    task: str = PARTICLE_TASK
    columns: list[str] | None = None
    encodings: dict[str, list[str]] = field(default_factory=dict)


def load_scalers(directory: str | os.PathLike) -> Scalers:
    """Rebuild the fitted scalers written by ``save_scalers``.

    Args:
        directory: the folder holding ``scalers.json``.

    Returns:
        ``Scalers`` with fitted ``StandardScaler`` objects.

    Raises:
        DataValidationError: the file is missing, not JSON or incomplete.

    Example:
        >>> scalers = load_scalers("training_output/runs/r1")  # doctest: +SKIP
    """
    path = Path(directory) / "scalers.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        names = {"x_scaler": list(doc["feature_names"]), "y_scaler": list(doc["target_names"])}
        fitted = {}
        for key, cols in names.items():
            scaler = StandardScaler()
            for attr in ("mean_", "scale_", "var_"):
                values = np.asarray(doc[key][attr], dtype=np.float64)
                if values.shape != (len(cols),):
                    raise ValueError(f"{key}.{attr} has {values.size} values for {len(cols)} columns")
                setattr(scaler, attr, values)
            scaler.n_features_in_ = len(cols)
            scaler.n_samples_seen_ = int(doc[key]["n_samples_seen_"])
            fitted[key] = scaler
        task = _task_record(doc)
    except FileNotFoundError:
        raise DataValidationError(f"scalers file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise DataValidationError(f"scalers file {path} is unreadable or corrupt: {exc!r}") from exc
    return Scalers(fitted["x_scaler"], fitted["y_scaler"], names["x_scaler"], names["y_scaler"], **task)


def _task_record(doc: dict[str, Any]) -> dict[str, Any]:
    """The task part of scalers.json (absent: the particle task)."""
    task = doc.get("task", PARTICLE_TASK)
    if task == PARTICLE_TASK:
        return {}
    columns, encodings = doc["columns"], doc["encodings"]
    if task != TABLE_TASK or not isinstance(columns, list) or not isinstance(encodings, dict) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in encodings.values()):
        raise ValueError(f"task {task!r}: expected task 'table' with a list of columns and lists of categories")
    return {"task": task, "columns": [str(c) for c in columns], "encodings": encodings}


@dataclass(eq=False)  # field-wise == on arrays is ambiguous
class PreparedData(_TargetScaling):
    """Scaled float32 train/val/test arrays and their scalers; unpacks like a 6-tuple.

    Example:
        >>> X_train, X_val, X_test, y_train, y_val, y_test = prepared  # doctest: +SKIP
        >>> y_physical = prepared.inverse_transform_targets(y_test)  # doctest: +SKIP
    """

    X_train: np.ndarray
    X_val: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray
    x_scaler: StandardScaler
    y_scaler: StandardScaler
    feature_names: list[str]
    target_names: list[str]
    task: str = PARTICLE_TASK
    columns: list[str] | None = None
    encodings: dict[str, list[str]] = field(default_factory=dict)

    load_scalers = staticmethod(load_scalers)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.X_train, self.X_val, self.X_test, self.y_train, self.y_val, self.y_test)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self._arrays())

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> np.ndarray:
        return self._arrays()[index]


def resolve_columns(features: Sequence[str] | None = None, targets: Sequence[str] | None = None
                    ) -> tuple[list[str], list[str]]:
    """The feature and target column names (defaults when None), checked once.

    Raises:
        DataValidationError: an unknown, repeated or empty list of names.
    """
    target_names = list(DEFAULT_TARGETS if targets is None else targets)
    feature_names = list(FEATURE_COLUMNS if features is None else features)
    for kind, names, allowed in (("target", target_names, FINAL_COLUMNS),
                                 ("feature", feature_names, FEATURE_COLUMNS)):
        unknown = [n for n in names if n not in allowed]
        if unknown or not names or len(set(names)) != len(names):
            raise DataValidationError(f"invalid {kind} names {names} (unknown: {unknown}); "
                                      f"choose distinct names from {allowed}")
    return feature_names, target_names


def split_indices(n: int, test_size: float, val_size: float, random_state: int | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test row indices: the test rows first, then ``val_size`` of the rest.

    Raises:
        ConfigError: a size outside (0, 1).
        DataValidationError: too few rows for at least 2 training rows and 1 validation row.
    """
    for name, value in (("test_size", test_size), ("val_size", val_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}")
    n_test = int(np.ceil(test_size * n))
    n_val = int(np.ceil(val_size * (n - n_test)))
    if n - n_test - n_val < 2 or n_val < 1:
        raise DataValidationError(
            f"too few rows ({n}) to split with test_size={test_size}, val_size={val_size}: "
            f"would give {n - n_test - n_val} train / {n_val} val / {n_test} test rows; "
            "need at least 2 training rows and 1 validation row")
    rest, test = train_test_split(np.arange(n), test_size=test_size, random_state=random_state)
    train, val = train_test_split(rest, test_size=val_size, random_state=random_state)
    return train, val, test


def preprocess_for_training(df: pd.DataFrame, test_size: float = 0.2, val_size: float = 0.2,
                            random_state: int | None = 42, *, targets: Sequence[str] | None = None,
                            features: Sequence[str] | None = None,
                            source: str | os.PathLike | None = None) -> PreparedData:
    """Split into train/val/test and standardise X and y with scalers fit on train only.

    The test set is split off first (``test_size`` of all rows); the validation set is
    then ``val_size`` of the *remaining* rows, so the defaults give 64/16/20 %.

    Derived features (``DERIVED_FEATURES``) are always recomputed from the initial
    columns with ``add_derived_features``. Columns of those names already in ``df``
    (e.g. from a CSV written by another tool) are never trusted: they are ignored, with
    a ``UserWarning`` naming them, so a stale or edited feature column cannot reach
    the model.

    Args:
        df: particle data (validated).
        test_size: fraction of rows for the test set, in (0, 1).
        val_size: fraction of the non-test rows for validation, in (0, 1).
        random_state: seed of both splits.
        targets: target columns (default ``DEFAULT_TARGETS``).
        features: feature columns (default ``FEATURE_COLUMNS``).
        source: file name to mention in warnings and errors.

    Returns:
        A ``PreparedData`` of float32 arrays and the fitted scalers.

    Raises:
        ConfigError: sizes outside (0, 1).
        DataValidationError: unknown/overlapping columns, non-finite values, values too
            large to standardise into float32, too few rows.

    Warns:
        UserWarning: ``df`` holds derived-feature columns (they are recomputed).

    Example:
        >>> prepared = preprocess_for_training(generate_particle_data(100, seed=0))
        >>> prepared.X_train.shape
        (64, 23)
    """
    feature_names, target_names = resolve_columns(features, targets)
    train, val, test = split_indices(len(df), test_size, val_size, random_state)
    where = f" in {source}" if source else ""
    given = [c for c in DERIVED_FEATURES if c in df.columns]
    if given:
        warnings.warn(f"particle data{where} holds derived-feature column(s) {', '.join(given)}; they are "
                      "ignored and recomputed from the initial columns", UserWarning, stacklevel=2)
    df = add_derived_features(df)  # replaces any such columns
    missing = [c for c in [*feature_names, *target_names] if c not in df.columns]
    if missing:
        raise DataValidationError(f"particle data{where} lacks column(s) {missing}")
    X = df[feature_names].to_numpy(dtype=np.float64)
    y = df[target_names].to_numpy(dtype=np.float64)
    finite = np.concatenate([np.isfinite(X).all(axis=0), np.isfinite(y).all(axis=0)])
    bad = [c for c, ok in zip([*feature_names, *target_names], finite) if not ok]
    if bad:
        raise DataValidationError(f"non-finite values in column(s) {bad}{where}; validate the data first")
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, by column
        x_scaler = StandardScaler().fit(X[train])
        y_scaler = StandardScaler().fit(y[train])
        xs = x_scaler.transform(X).astype(np.float32)
        ys = y_scaler.transform(y).astype(np.float32)
    # A variance that overflows float64 leaves scale 1, and the huge values become inf in
    # float32: refuse rather than train on them.
    scaled_ok = np.concatenate([np.isfinite(xs).all(axis=0), np.isfinite(ys).all(axis=0)])
    bad = [c for c, ok in zip([*feature_names, *target_names], scaled_ok) if not ok]
    if bad:
        raise DataValidationError(f"column(s) {bad}{where} hold values too large to standardise "
                                  "into float32 (overflow); validate the data first")
    return PreparedData(xs[train], xs[val], xs[test], ys[train], ys[val], ys[test],
                        x_scaler, y_scaler, feature_names, target_names)


def complete_data_pipeline(csv_path: str | os.PathLike | None = None,
                           num_particles: int | None = 2000, *,
                           config: GenerationConfig | dict | None = None, seed: int | None = None,
                           test_size: float = 0.2, val_size: float = 0.2,
                           random_state: int | None = 42, targets: Sequence[str] | None = None,
                           drop_invalid: bool = False) -> PreparedData:
    """Get particle data (generate, reuse or load), validate it and prepare it for training.

    With ``csv_path``: a CSV whose sidecar records the same generation config,
    num_particles and seed is reused; one whose sidecar differs is regenerated and
    overwritten with a warning; a CSV without an nnlab sidecar is user data: it is
    loaded and validated (``num_particles`` ignored) and never overwritten; a missing
    CSV is generated and saved.

    Args:
        csv_path: cache/data file, or None to generate in memory.
        num_particles: particles to generate (None: ``config.num_particles_default``).
        config: generation config (``GenerationConfig``, dict or None).
        seed: generation seed (None: ``config.random_seed``).
        test_size, val_size, random_state, targets: see ``preprocess_for_training``.
        drop_invalid: see ``validate_particle_data``.

    Returns:
        The ``PreparedData``.

    Example:
        >>> X_train, X_val, X_test, y_train, y_val, y_test = complete_data_pipeline(
        ...     num_particles=200, seed=0)
    """
    cfg = _coerce_config(config)
    n = cfg.num_particles_default if num_particles is None else num_particles
    n = _check_positive_int("num_particles", n)
    expected = {"source": GENERATOR_NAME, "generation_config": cfg.model_dump(mode="json"),
                "num_particles": n, "seed": cfg.random_seed if seed is None else seed}

    def generate() -> pd.DataFrame:
        logger.info("generating %d particles (seed=%s)", n, expected["seed"])
        return generate_particle_data(n, cfg, expected["seed"])

    path = None if csv_path is None else Path(csv_path)
    meta_path = None if path is None else sidecar_path(path)
    if path is None:
        df = generate()
    elif not path.exists():
        # Before generating, so nothing is simulated for nothing; a leftover sidecar of
        # this cache is the pipeline's own, hence force.
        check_output_file(path, force=True)
        df = generate()
        save_particle_data(df, path, metadata=expected)
        logger.info("saved %d particles to %s", n, path)
    else:
        meta = None
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataValidationError(f"metadata file {meta_path} is unreadable ({exc}); "
                                          f"delete it to treat {path} as user data") from exc
        if not isinstance(meta, dict) or meta.get("source") != GENERATOR_NAME:
            df = load_particle_data(path)
            logger.info("using user-provided data %s (%d rows); num_particles=%d ignored",
                        path, len(df), n)
        elif (reason := stale_reason(meta, expected, path)) is None:
            df = load_particle_data(path)
            logger.info("reusing cached particle data %s (%d rows)", path, len(df))
        else:
            warnings.warn(f"{path} is stale ({reason}); regenerating it", UserWarning, stacklevel=2)
            df = generate()
            save_particle_data(df, path, metadata=expected)
            logger.info("saved %d particles to %s", n, path)
    report = validate_particle_data(df, drop_invalid=drop_invalid, source=path)
    return preprocess_for_training(report.data, test_size, val_size, random_state, targets=targets,
                                   source=path)


def prepare_csv(csv_path: str | os.PathLike, test_size: float = 0.2, val_size: float = 0.2,
                random_state: int = 42, *, targets: Sequence[str] | None = None,
                drop_invalid: bool = False) -> PreparedData:
    """Load, validate and split a particle CSV as it is -- never regenerated or rewritten.

    This is ``--data FILE``: unlike :func:`complete_data_pipeline` it ignores any
    cache sidecar, so a file is trained on exactly as found -- except derived-feature
    columns, which are recomputed (see :func:`preprocess_for_training`).

    Args:
        csv_path: the particle CSV (a regular file).
        test_size, val_size, random_state, targets: see ``preprocess_for_training``.
        drop_invalid: see ``validate_particle_data``.

    Returns:
        The ``PreparedData``.

    Raises:
        DataValidationError: naming the file, for a missing/unreadable/invalid CSV.

    Warns:
        UserWarning: the CSV holds derived-feature columns (ignored, recomputed).
    """
    path = Path(csv_path)
    df = load_particle_data(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if len(missing) == len(REQUIRED_COLUMNS):  # not a particle CSV at all: say how to use it as a table
        raise DataValidationError(
            f"{path} is not a particle CSV (it has none of the particle columns {', '.join(REQUIRED_COLUMNS[:4])}, "
            f"...); to train on your own table, name the column(s) to predict with --targets COL[,COL...] "
            f"(config key data_targets); its columns are {', '.join(map(str, df.columns[:12]))}"
            + (" ..." if len(df.columns) > 12 else ""))
    report = validate_particle_data(df, drop_invalid=drop_invalid, source=path)
    return preprocess_for_training(report.data, test_size, val_size, random_state, targets=targets,
                                   source=path)


def collocation_inputs(scalers: Any, generation: Any, n: int, *, seed: int | None) -> np.ndarray:
    """``n`` scaled input rows of freshly simulated initial states, for the physics term only.

    The initial quantities are drawn like the data's (``generation``: a
    :class:`~nnlab.config.GenerationConfig`, its ranges and charges), the derived
    features computed from them, and the rows scaled with the data's feature
    scaler. Their final quantities are never used: the term needs no targets.

    Args:
        scalers: the data's scalers and column names (``x_scaler``, ``feature_names``).
        generation: the generation configuration.
        n: number of rows (0: an empty array).
        seed: the draw's seed.
    """
    if n == 0:
        return np.zeros((0, len(scalers.feature_names)), np.float32)
    particles = add_derived_features(generate_particle_data(n, generation, seed=seed))
    return scalers.x_scaler.transform(particles[list(scalers.feature_names)].to_numpy()).astype(np.float32)
