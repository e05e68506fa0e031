"""The search space: which configuration keys a trial samples, and from what.

A space is a JSON object of configuration keys. Each value is one of:

* a list -- the choices of a categorical parameter (``["relu", "prelu"]``;
  ``[[64, 32], [128, 64, 32]]`` for list-valued keys; a one-element list fixes
  the value);
* an object ``{"low": L, "high": H}`` with optional ``"log": true`` and
  ``"step": S`` -- a numeric range (integers for integer keys);
* any other JSON value -- a fixed value applied to every trial.

Every key, choice and bound is validated like any configuration value when
the space is built, so a bad space fails before any training.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnlab.config import (
    ALL_KEYS,
    Config,
    GenerationConfig,
    ModelConfig,
    TrainingConfig,
    read_json_object,
    show_value,
)
from nnlab.errors import ConfigError

__all__ = ["DEFAULT_SEARCH_SPACE", "DATA_KEYS", "SearchSpace", "load_search_space"]

DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "activation": ["relu", "prelu"],
    "optimizer": ["adam", "rmsprop", "sgd"],
    "learning_rate": {"low": 3e-4, "high": 1e-3, "log": True},
    "dropout_rate": {"low": 0.0, "high": 0.25},
    "use_batch_norm": [True, False],
    "batch_norm_momentum": {"low": 0.85, "high": 0.99},
    "l2_regularization": {"low": 1e-5, "high": 3e-4, "log": True},
    "constraint_interval": [1, 2, 3, 5],
    "enable_weight_oscillation_dampener": [True, False],
    "use_adaptive_oscillation_dampener": [True, False],
    "loss_weighting_strategy": ["r2_based", "loss_based", "combined", "physics_aware"],
    "hidden_layers": [[64, 32], [128, 64, 32], [256, 128, 64], [256, 256, 128, 64]],
}

# The data is prepared once per search, so the space may not change it.
DATA_KEYS = frozenset(GenerationConfig.model_fields) | {"test_size", "val_size", "data_targets", "data_features",
                                                        "data_drop_missing"}

_RANGE_FIELDS = frozenset({"low", "high", "log", "step"})


def _annotation(key: str) -> Any:
    for section in (ModelConfig, TrainingConfig, GenerationConfig):
        if key in section.model_fields:
            return section.model_fields[key].annotation
    return None  # pragma: no cover - keys are checked before


def _numeric_kind(key: str) -> str | None:
    """'int' or 'float' for keys that hold one number (possibly optional), else None."""
    annotation = _annotation(key)
    kinds = {annotation} if annotation in (int, float) else set(typing.get_args(annotation)) - {type(None)}
    if kinds == {int}:
        return "int"
    if kinds == {float}:
        return "float"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class _Choice:
    choices: tuple[Any, ...]

    @property
    def _encoded(self) -> bool:
        # Optuna's categorical choices must be scalars; lists travel as JSON text.
        return any(isinstance(c, (list, dict)) for c in self.choices)

    def suggest(self, trial: Any, key: str) -> Any:
        if self._encoded:
            return json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in self.choices]))
        return trial.suggest_categorical(key, list(self.choices))

    def to_json(self) -> Any:
        return list(self.choices)


@dataclass(frozen=True)
class _Range:
    low: float
    high: float
    log: bool
    step: float | None
    integer: bool

    def suggest(self, trial: Any, key: str) -> Any:
        if self.integer:
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)

    def to_json(self) -> Any:
        spec: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass(frozen=True)
class _Fixed:
    value: Any

    def suggest(self, trial: Any, key: str) -> Any:
        return self.value

    def to_json(self) -> Any:
        return self.value


class SearchSpace:
    """Configuration keys sampled per trial (see the module docstring for the format).

    Args:
        spec: ``{key: choices | {"low", "high", "log", "step"} | fixed value}``.
        source: how the space is named in error messages (e.g. ``--space space.json``).

    Raises:
        ConfigError: listing every problem: unknown keys (with the closest valid
            key), keys that change the data, malformed ranges, and choices or
            bounds that are not valid configuration values.

    Example:
        >>> space = SearchSpace({"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        ...                      "hidden_layers": [[64, 32], [128, 64]]})
        >>> sorted(space.keys)
        ['hidden_layers', 'learning_rate']
    """

    def __init__(self, spec: Mapping[str, Any], *, source: str = "search space") -> None:
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{source}: must be a JSON object of configuration keys, got {type(spec).__name__}")
        self.source = source
        unknown = [key for key in spec if key not in ALL_KEYS]
        if unknown:
            # Config names each unknown key and the closest valid one.
            Config.from_flat({key: None for key in unknown}, source=source)
        problems: list[str] = []
        self._dims: dict[str, _Choice | _Range | _Fixed] = {}
        for key, value in spec.items():
            try:
                self._dims[key] = self._parse(key, value)
            except ConfigError as exc:
                problems.append(str(exc).removeprefix("invalid configuration:\n  "))
        if problems:
            raise ConfigError(f"{source}: invalid search space:\n  " + "\n  ".join(problems))

    # -- parsing --------------------------------------------------------------
    def _check_value(self, key: str, value: Any, what: str) -> None:
        try:
            Config.from_flat({key: value}, sources={key: f"{key} {what}"})
        except ConfigError as exc:
            raise ConfigError(str(exc).removeprefix("invalid configuration:\n  ")) from None

    def _parse(self, key: str, value: Any) -> _Choice | _Range | _Fixed:
        if key in DATA_KEYS:
            how = "--targets, --features or --drop-missing" if key.startswith("data_") else "--set or --num-particles"
            raise ConfigError(f"{key}: changes the data, which is prepared once per search; set it with {how} "
                              "instead")
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"{key}: the list of choices is empty")
            texts = [json.dumps(c, sort_keys=True) for c in value]
            if len(set(texts)) != len(texts):
                raise ConfigError(f"{key}: choices must be distinct, got {show_value(value)}")
            for choice in value:
                self._check_value(key, choice, "choice")
            return _Choice(tuple(value))
        if isinstance(value, dict):
            return self._parse_range(key, value)
        self._check_value(key, value, "value")
        return _Fixed(value)

    def _parse_range(self, key: str, spec: dict[str, Any]) -> _Range:
        extra = sorted(set(spec) - _RANGE_FIELDS)
        if extra or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{key}: a range is {{\"low\": L, \"high\": H}} with optional \"log\" and "
                              f"\"step\", got {show_value(spec)}")
        kind = _numeric_kind(key)
        if kind is None:
            raise ConfigError(f"{key}: is not a numeric key, so it takes a list of choices, not a range")
        low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
        if not (_is_number(low) and _is_number(high)):
            raise ConfigError(f"{key}: low and high must be finite numbers, got {show_value(spec)}")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{key}: an integer key needs integer bounds, got {show_value(spec)}")
        if low > high:
            raise ConfigError(f"{key}: low must be <= high, got low={low}, high={high}")
        if not isinstance(log, bool):
            raise ConfigError(f"{key}: log must be true or false, got {show_value(log)}")
        if log and low <= 0:
            raise ConfigError(f"{key}: a log range needs low > 0, got low={low}")
        if step is not None:
            if not _is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
                raise ConfigError(f"{key}: step must be a positive {'integer' if kind == 'int' else 'number'}, "
                                  f"got {show_value(step)}")
            if log:
                raise ConfigError(f"{key}: step cannot be combined with log")
        self._check_value(key, low, "low")
        self._check_value(key, high, "high")
        return _Range(low, high, log, step, kind == "int")

    # -- use ------------------------------------------------------------------
    @property
    def keys(self) -> tuple[str, ...]:
        """The configuration keys this space sets."""
        return tuple(self._dims)

    def upper_bound(self, key: str) -> Any:
        """The largest value this space can give a numeric ``key`` (None: the space does not set it)."""
        dim = self._dims.get(key)
        if dim is None:
            return None
        if isinstance(dim, _Range):
            return dim.high
        values = dim.choices if isinstance(dim, _Choice) else (dim.value,)
        numbers = [v for v in values if _is_number(v)]
        return max(numbers) if numbers else None

    def sample(self, trial: Any) -> dict[str, Any]:
        """Suggest one value per key from an Optuna trial; returns the overrides."""
        return {key: dim.suggest(trial, key) for key, dim in self._dims.items()}

    def to_dict(self) -> dict[str, Any]:
        """The space in its JSON form (what ``--space`` reads)."""
        return {key: dim.to_json() for key, dim in self._dims.items()}

    def __repr__(self) -> str:
        return f"SearchSpace({self.to_dict()!r})"


def load_search_space(path: str | Path | None = None) -> SearchSpace:
    """The space in a JSON file, or :data:`DEFAULT_SEARCH_SPACE` for ``None``.

    Raises:
        ConfigError: the file is missing or not a JSON object, or the space is invalid.
    """
    if path is None:
        return SearchSpace(DEFAULT_SEARCH_SPACE, source="default search space")
    label = f"--space {path}"
    return SearchSpace(read_json_object(Path(path), label), source=label)
