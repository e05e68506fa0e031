"""``DataSource``: where a run's rows come from, recorded as ``data`` in training_config.json.

Every entry point (train, resume, a search trial, a study unit, the analysis
rebuild) describes its data with one of these; ``prepare()`` makes the split,
``to_record()``/``from_record()`` write and read it, so a run's data is rebuilt
exactly from what was recorded -- nothing is inferred.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from nnlab.errors import ConfigError, NnlabError

__all__ = ["DataSource", "DEFAULT_RANDOM_STATE", "check_table_keys"]

# The split's random_state when the configuration has no random_seed.
DEFAULT_RANDOM_STATE = 42
# Recorded keys and their types (training_config.json "data"), checked when a record is read back.
_RECORD_TYPES: dict[str, type] = {"num_particles": int, "seed": int, "random_state": int, "test_size": float,
                                  "val_size": float, "csv_path": str, "csv_sha256": str, "drop_missing": bool}
# The last prepared split, by source: a search prepares its data once for all its trials, a study once per seed.
_PREPARED: dict[str, Any] = {}


@dataclass(frozen=True)
class DataSource:
    """Where a run's rows come from and how they are split.

    ``kind`` is ``"simulated"`` (``num_particles`` particles simulated with
    ``seed`` and the ``generation`` settings) or ``"csv"`` (the file at
    ``csv_path`` as found, with its SHA-256 ``csv_sha256``). A CSV with
    ``targets`` is a user's table (:attr:`task` ``"table"``): ``targets`` are
    predicted from ``features`` (None: every other column), rows with a missing
    value are left out when ``drop_missing``. Without ``targets`` the data is the
    particle task's. The split is ``test_size``/``val_size`` with ``random_state``.

    Args:
        kind: ``"simulated"`` or ``"csv"``.
        num_particles: particles to simulate (simulated).
        seed: the simulation seed (simulated; recorded for a CSV as the config's seed).
        csv_path: the CSV's absolute path (csv).
        csv_sha256: the CSV's SHA-256 when the run started (csv).
        random_state, test_size, val_size: the train/validation/test split.
        targets, features: a table's columns to predict and to use (None: the particle task).
        drop_missing: a table's rows with missing values are left out (else refused).
        generation: the :class:`~nnlab.config.GenerationConfig` to simulate with (not
            recorded here: it is part of the run's configuration).

    Example:
        >>> source = DataSource.simulated(300, seed=1)
        >>> DataSource.from_record(source.to_record()) == source
        True
    """

    kind: Literal["simulated", "csv"]
    num_particles: int | None = None
    seed: int | None = None
    csv_path: str | None = None
    csv_sha256: str | None = None
    random_state: int | None = DEFAULT_RANDOM_STATE
    test_size: float = 0.2
    val_size: float = 0.2
    targets: tuple[str, ...] | None = None
    features: tuple[str, ...] | None = None
    drop_missing: bool = False
    generation: Any = field(default=None, compare=False, repr=False)
    # The CSV path as the user gave it: messages name the file as typed (the record holds the absolute path).
    given_path: str | None = field(default=None, compare=False, repr=False)

    # --- construction ----------------------------------------------------------------

    @classmethod
    def simulated(cls, num_particles: int, *, seed: int | None, generation: Any = None,
                  random_state: int | None = DEFAULT_RANDOM_STATE, test_size: float = 0.2,
                  val_size: float = 0.2) -> DataSource:
        """``num_particles`` particles simulated with ``seed`` (and ``generation``), then split."""
        return cls("simulated", num_particles=int(num_particles), seed=seed, random_state=random_state,
                   test_size=test_size, val_size=val_size, generation=generation)

    @classmethod
    def from_csv(cls, path: str | Path, *, sha256: str | None = None, seed: int | None = None,
                 random_state: int | None = DEFAULT_RANDOM_STATE, test_size: float = 0.2,
                 val_size: float = 0.2, targets: Any = None, features: Any = None,
                 drop_missing: bool = False) -> DataSource:
        """The CSV at ``path`` as found (``targets``: a user's table); its SHA-256 is computed now unless given."""
        from nnlab.runs._runs import file_digest

        resolved = str(Path(path).resolve())
        if sha256 is None and Path(resolved).is_file():  # a missing file is refused by prepare(), naming it
            sha256 = file_digest(resolved)
        return cls("csv", seed=seed, csv_path=resolved, csv_sha256=sha256, given_path=str(path),
                   random_state=random_state, test_size=test_size, val_size=val_size,
                   targets=_names(targets), features=_names(features), drop_missing=bool(drop_missing))

    @classmethod
    def for_config(cls, config: Any, *, csv_path: str | Path | None = None, num_particles: int | None = None,
                   random_state: int | None = None) -> DataSource:
        """The source the command line builds from a configuration: a CSV, or the configured simulation.

        ``random_state`` defaults to the configuration's ``random_seed`` (42 when it is null).
        The table keys (``data_targets``, ``data_features``, ``data_drop_missing``) apply to a CSV.

        Raises:
            ConfigError: a table key is set without a CSV.
        """
        gen, training = config.generation, config.training
        if random_state is None:
            random_state = gen.random_seed if gen.random_seed is not None else DEFAULT_RANDOM_STATE
        split = dict(random_state=random_state, test_size=training.test_size, val_size=training.val_size)
        if csv_path is not None:
            return cls.from_csv(csv_path, seed=gen.random_seed, targets=training.data_targets,
                                features=training.data_features, drop_missing=training.data_drop_missing, **split)
        check_table_keys(config)
        return cls.simulated(num_particles or gen.num_particles_default, seed=gen.random_seed, generation=gen,
                             **split)

    def with_generation(self, generation: Any) -> DataSource:
        """This source, simulating with ``generation`` (a run's recorded generation settings)."""
        return replace(self, generation=generation)

    # --- the record ------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The ``data`` object of training_config.json (the digests of the prepared arrays are added by the run)."""
        record: dict[str, Any] = {
            "kind": self.kind, "num_particles": self.num_particles, "seed": self.seed, "csv_path": self.csv_path,
            "random_state": self.random_state, "test_size": self.test_size, "val_size": self.val_size,
        }
        if self.csv_sha256 is not None:
            record["csv_sha256"] = self.csv_sha256
        if self.targets is not None:
            record["targets"] = list(self.targets)
        if self.features is not None:
            record["features"] = list(self.features)
        if self.drop_missing:
            record["drop_missing"] = True
        if self.task == "table":
            record["task"] = "table"
        return record

    @classmethod
    def from_record(cls, record: Any, config: Any = None, *, where: str = "training_config.json: data"
                    ) -> DataSource:
        """The source a ``data`` record describes; ``config`` (the run's) supplies generation settings.

        Raises:
            ConfigError: the record is not an object, a key has the wrong type, or it
                names neither a CSV nor a particle count.
        """
        if not isinstance(record, Mapping):
            raise ConfigError(f"{where} must be an object, got {type(record).__name__}")
        for key, kind in _RECORD_TYPES.items():
            value = record.get(key)
            expected = (int, float) if kind is float else kind
            if value is not None and ((isinstance(value, bool) and kind is not bool) or not isinstance(value, expected)):
                raise ConfigError(f"{where}.{key} = {json.dumps(value)} is invalid: expected {kind.__name__}")
        columns = {name: _columns(record.get(name), f"{where}.{name}") for name in ("targets", "features")}
        training = getattr(config, "training", None)
        split = {k: record[k] if record.get(k) is not None else getattr(training, k, 0.2)
                 for k in ("test_size", "val_size")}
        random_state = record.get("random_state", DEFAULT_RANDOM_STATE)
        generation = getattr(config, "generation", None)
        if record.get("csv_path"):
            return cls("csv", seed=record.get("seed"), csv_path=record["csv_path"],
                       csv_sha256=record.get("csv_sha256"), random_state=random_state, generation=generation,
                       drop_missing=bool(record.get("drop_missing", False)), **split, **columns)
        if not record.get("num_particles"):
            raise ConfigError(f"{where} records neither a csv_path nor num_particles, so the run's data "
                              "cannot be rebuilt")
        return cls("simulated", num_particles=record["num_particles"], seed=record.get("seed"),
                   random_state=random_state, generation=generation, **split, **columns)

    # --- the data --------------------------------------------------------------------

    @property
    def task(self) -> str:
        """``"table"`` (a user's table: targets chosen) or ``"particles"`` (the particle task)."""
        return "table" if self.kind == "csv" and self.targets is not None else "particles"

    def check_config(self, config: Any) -> None:
        """Refuse, before any work, configuration that does not fit this source's task.

        Raises:
            ConfigError: ``physics_loss_weight`` > 0 on a user's table (the physics
                relations are the particle task's).
        """
        weight = config.model.physics_loss_weight
        if self.task == "table" and weight > 0:
            raise ConfigError(f"physics_loss_weight = {weight:g}: the physics-informed loss applies to the particle "
                              f"task only, and this run predicts {', '.join(self.targets)} from a table; set "
                              "physics_loss_weight to 0")

    def describe(self) -> str:
        """One line: ``csv PATH (sha256 ...)``, with a table's targets, or ``simulated: N particles, seed S``."""
        if self.kind == "csv":
            digest = (self.csv_sha256 or "")[:12]
            task = f", predicting {', '.join(self.targets)}" if self.task == "table" else ""
            return f"csv {self.csv_path}" + (f" (sha256 {digest}...)" if digest else "") + task
        return f"simulated: {self.num_particles} particles, seed {self.seed}"

    def check_unchanged(self, run_name: str) -> None:
        """Raise :class:`NnlabError` unless a CSV source is still there with its recorded SHA-256."""
        if self.kind != "csv":
            return
        from nnlab.runs._runs import file_digest

        if not Path(self.csv_path).is_file():
            raise NnlabError(f"run '{run_name}' was trained on '{self.csv_path}', which no longer exists")
        if self.csv_sha256 is not None:
            now = file_digest(self.csv_path)
            if now != self.csv_sha256:
                raise NnlabError(
                    f"run {run_name} was trained on '{self.csv_path}' (SHA-256 {self.csv_sha256[:12]}...), which "
                    f"has changed since (now {now[:12]}...); resuming would continue on different data: restore "
                    "the file, or start a new run on the changed one")

    def prepare(self) -> Any:
        """The validated, split and scaled :class:`~nnlab.data.PreparedData` (the last one is reused).

        A CSV is read as found, never rewritten; particles are simulated in memory.
        """
        stat = Path(self.csv_path).stat() if self.kind == "csv" else None  # a file edited in between is read again
        key = json.dumps([self.to_record(), _generation_record(self.generation),
                          stat and (stat.st_size, stat.st_mtime_ns)], sort_keys=True, default=str)
        if key not in _PREPARED:
            _PREPARED.clear()  # one split in memory at a time
            _PREPARED[key] = self._prepare()
        return _PREPARED[key]

    def _prepare(self) -> Any:
        from nnlab.data import complete_data_pipeline, prepare_csv, prepare_table

        split = dict(test_size=self.test_size, val_size=self.val_size, random_state=self.random_state)
        path = self.given_path or self.csv_path
        if self.task == "table":
            features = list(self.features) if self.features is not None else None
            return prepare_table(path, targets=list(self.targets), features=features,
                                 drop_missing=self.drop_missing, **split)
        if self.kind == "csv":
            return prepare_csv(path, **split)
        targets = list(self.targets) if self.targets is not None else None  # a subset of the particle targets
        return complete_data_pipeline(None, num_particles=self.num_particles, config=self.generation,
                                      seed=self.seed, targets=targets, **split)


def check_table_keys(config: Any) -> None:
    """Refuse the table keys without a table: the simulated particles have the particle task's columns.

    Raises:
        ConfigError: naming the key that is set.
    """
    training = config.training
    for key in ("data_targets", "data_features", "data_drop_missing"):
        if getattr(training, key):
            raise ConfigError(f"{key} = {json.dumps(getattr(training, key))} chooses columns of a --data table, "
                              "but no --data FILE is given (the simulated particles are the particle task); give "
                              f"--data FILE or unset {key}")


def _names(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _generation_record(generation: Any) -> Any:
    return generation.model_dump(mode="json") if hasattr(generation, "model_dump") else generation


def _columns(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} = {json.dumps(value)[:200]} is invalid: expected a list of column names")
    return tuple(value)
