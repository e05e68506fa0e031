"""A trained run, loaded for use outside training: its columns, scalers, network and NumPy prediction path."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nnlab.errors import ConfigError, DataValidationError, NnlabError

if TYPE_CHECKING:  # pandas loads when rows are used: `nnlab predict --help` and its refusals stay light
    import pandas as pd

__all__ = ["TrainedRun", "WEIGHTS"]

# --weights: the run's weights files.
WEIGHTS = ("final", "best")


@dataclass
class TrainedRun:
    """A finished run's network with everything needed to use it on raw rows.

    ``inputs`` are the raw input columns (the particle task: the simulator's 8
    initial quantities; a user's table: its feature columns, text ones included),
    ``targets`` the predicted columns. :meth:`predict` is nnlab's own path
    (NumPy features and scalers, then the network): the reference every export
    is checked against.

    Example:
        >>> run = TrainedRun.load("training_output", "latest")  # doctest: +SKIP
        >>> run.predict(pd.read_csv("new.csv"))  # doctest: +SKIP
    """

    run_id: str
    run_dir: Path
    config: Any
    scalers: Any
    weights_path: Path
    record: dict[str, Any] = field(default_factory=dict)
    _network: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, output_dir: str | os.PathLike = "training_output", run: str = "latest", *,
             weights: str = "final") -> TrainedRun:
        """Load run ``run`` (an id or ``"latest"``) of ``output_dir``.

        Raises:
            NnlabError: no such run; its configuration, scalers or weights file is
                missing or unreadable (the message names the file).
        """
        from nnlab.config import Config
        from nnlab.data import load_scalers
        from nnlab.runs import find_run_dir

        if weights not in WEIGHTS:
            raise ConfigError(f"--weights: '{weights}' is not a weights file of a run; choose {' or '.join(WEIGHTS)}")
        run_dir = find_run_dir(output_dir, run)
        record = _read_json(run_dir / "training_config.json")
        try:
            with warnings.catch_warnings():  # advice about how the run trained (e.g. a schedule) was given then
                warnings.simplefilter("ignore", UserWarning)
                config = Config.from_flat(record.get("config") or {}, source=str(run_dir / "training_config.json"))
        except NnlabError as exc:
            raise NnlabError(f"run {run_dir.name}: its recorded configuration is not valid: {exc}") from None
        path = run_dir / "weights" / f"{weights}.weights.h5"
        if not path.is_file():
            other = [w for w in WEIGHTS if w != weights and (run_dir / "weights" / f"{w}.weights.h5").is_file()]
            hint = f"; it has --weights {other[0]}" if other else " (the run did not finish: resume it first)"
            raise NnlabError(f"run {run_dir.name} has no {weights} weights ({path}){hint}")
        return cls(run_dir.name, run_dir, config, load_scalers(run_dir), path, record)

    # --- the task ---------------------------------------------------------------------

    @property
    def task(self) -> str:
        return getattr(self.scalers, "task", "particles")

    @property
    def inputs(self) -> list[str]:
        """The raw input columns, in order."""
        if self.task == "table":
            return list(self.scalers.columns or [])
        from nnlab.data import INITIAL_COLUMNS

        return list(INITIAL_COLUMNS)

    @property
    def targets(self) -> list[str]:
        return list(self.scalers.target_names)

    @property
    def text_inputs(self) -> dict[str, list[str]]:
        """A table's text columns and their categories (empty for the particle task)."""
        return {k: list(v) for k, v in (getattr(self.scalers, "encodings", None) or {}).items()}

    # --- the network ------------------------------------------------------------------

    @property
    def network(self) -> Any:
        """The run's Keras model (built from its configuration at float32 compute, its weights loaded)."""
        if self._network is None:
            from nnlab.runs import load_network

            n_features, n_targets = len(self.scalers.feature_names), len(self.targets)
            # Deployed at float32 compute: a mixed-precision run's weights are float32 variables, and
            # LiteRT and ONNX have no bfloat16/float16 kernels for its layers.
            config = self.config.model_copy(update={"model": self.config.model.model_copy(
                update={"precision_policy": "float32"})})
            try:
                self._network = load_network(config, n_features, n_targets, self.weights_path).model
            except (ValueError, OSError) as exc:
                raise NnlabError(f"run {self.run_id}: {self.weights_path.name} cannot be loaded into the recorded "
                                 f"architecture: {str(exc).splitlines()[0][:300]}") from None
        return self._network

    def features(self, rows: pd.DataFrame, *, source: str = "the input rows") -> np.ndarray:
        """Scaled float32 network inputs of raw ``rows`` (checked: missing columns, non-numbers, categories).

        Raises:
            DataValidationError: naming the columns at fault.
        """
        if self.task == "table":
            from nnlab.data import TableEncoding, encode_table

            encoding = TableEncoding(tuple(self.inputs), {k: tuple(v) for k, v in self.text_inputs.items()})
            return encode_table(rows, encoding, self.scalers.x_scaler, source=source)
        import pandas as pd

        from nnlab.data import add_derived_features

        values = _numeric_columns(rows, self.inputs, source)
        frame = add_derived_features(pd.DataFrame(values, columns=self.inputs))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            X = self.scalers.x_scaler.transform(frame[list(self.scalers.feature_names)].to_numpy(np.float64))
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            raise DataValidationError(f"{source}: {int(bad.sum())} row(s) give non-finite features (e.g. row "
                                      f"{int(np.flatnonzero(bad)[0]) + 1}: a mass of 0, or values too large)")
        return X.astype(np.float32)

    def predict(self, rows: pd.DataFrame, *, source: str = "the input rows") -> np.ndarray:
        """The targets predicted for raw ``rows``, in physical units, shape (n, n_targets)."""
        X = self.features(rows, source=source)
        scaled = self.network.predict(X, verbose=0, batch_size=4096) if len(X) else np.zeros((0, len(self.targets)))
        return self.scalers.inverse_transform_targets(np.asarray(scaled, dtype=np.float64).reshape(len(X), -1))


def _numeric_columns(rows: pd.DataFrame, columns: list[str], source: str) -> np.ndarray:
    import pandas as pd

    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise DataValidationError(f"{source} lack the input column(s) {missing}; the network takes {columns}")
    problems = []
    out = np.empty((len(rows), len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        values = pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            example = rows[name].iloc[int(np.flatnonzero(bad)[0])]
            problems.append(f"column '{name}': {int(bad.sum())} value(s) missing, infinite or not a number "
                            f"(e.g. {example!r} in row {int(np.flatnonzero(bad)[0]) + 1})")
        out[:, j] = values
    if problems:
        raise DataValidationError(f"{source}: " + "; ".join(problems), problems)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NnlabError(f"{path} is missing: not a run directory") from None
    except (OSError, ValueError) as exc:
        raise NnlabError(f"{path} is unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise NnlabError(f"{path} is not a JSON object")
    return doc
