"""Validated configuration: defaults, JSON files, presets and overrides.

A configuration is one flat namespace of keys (``learning_rate``, ``epochs``,
``mass_range``, ...), stored in three validated sections:

* :class:`ModelConfig` -- network, optimizer, constraints and loss weighting
  (``ml_config/model_config.json`` and the presets in ``ml_config/model_presets/``);
* :class:`TrainingConfig` -- epochs, batch size, data split
  (``ml_config/training_config.json``);
* :class:`GenerationConfig` -- how particles are simulated
  (``ml_config/particle_generation_config.json``).

Layers are applied in this order, later ones winning::

    built-in defaults <- model_config.json <- training_config.json
        <- particle_generation_config.json <- preset <- --config FILE <- --set KEY=VALUE

Every problem raises :class:`~nnlab.errors.ConfigError` naming the source
(file, preset or ``--set``), the key, the bad value and what is allowed.
Configuration files must be regular files of at most :data:`MAX_CONFIG_BYTES`
holding strict JSON: no NaN/Infinity, no duplicate keys, at most
:data:`MAX_JSON_DEPTH` levels of nesting. Values echoed in messages are
shortened (see :func:`shorten`).

Example:
    >>> from nnlab.config import load_config
    >>> cfg = load_config(preset="fast_debug", overrides={"epochs": 3})
    >>> cfg.model.hidden_layers, cfg.training.epochs
    ([64, 32], 3)
"""

from __future__ import annotations

import difflib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    PositiveFloat,
    field_validator,
    model_validator,
)

from nnlab.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "OPTIMIZERS",
    "LOSS_WEIGHTING_STRATEGIES",
    "ModelConfig",
    "TrainingConfig",
    "GenerationConfig",
    "Config",
    "find_config_dir",
    "list_presets",
    "load_preset",
    "load_config",
    "parse_override",
    "parse_overrides",
    "read_json_object",
    "shorten",
    "show_value",
    "special_file_kind",
    "parse_json",
    "read_config_text",
    "MAX_CONFIG_BYTES",
    "MAX_JSON_DEPTH",
    "SEED_MAX",
]

ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "swish", "prelu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LOSS_WEIGHTING_STRATEGIES = (
    "r2_based",
    "loss_based",
    "combined",
    "physics_aware",
    "softadapt",
    "relobralo",
    "fixed",
    "none",
)

MODEL_CONFIG_FILE = "model_config.json"
TRAINING_CONFIG_FILE = "training_config.json"
GENERATION_CONFIG_FILE = "particle_generation_config.json"
PRESETS_DIR = "model_presets"

# Limits on what a configuration source may hold. Real configurations are a few
# kilobytes and two or three levels deep; anything far beyond is a mistake (or a
# hostile file) that would otherwise exhaust memory or the recursion limit.
MAX_CONFIG_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
# NumPy's legacy seeding and scikit-learn's random_state take 0 <= seed < 2**32.
SEED_MAX = 2**32 - 1
# Error messages show at most this many characters of a value, and this many problems.
MAX_SHOWN_CHARS = 80
MAX_LISTED_PROBLEMS = 20

Range = tuple[float, float]


class _Section(BaseModel):
    # extra="forbid" is a safety net: unknown keys are normally caught earlier
    # by Config.from_flat, which can also name the file and suggest a key.
    # allow_inf_nan=False: a NaN/inf that slipped past the JSON reader (1e999, the
    # string "inf" from --set) is rejected like any invalid number.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1; in a config that is always a typo.
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError("expected a number, not true/false")
        return value


def _seed_in_range(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= SEED_MAX:
        raise ValueError(f"a seed must be an integer from 0 to 2**32 - 1 = {SEED_MAX} "
                         "(what NumPy and scikit-learn accept), or null")
    return value


class ModelConfig(_Section):
    """Network architecture, optimizer, weight constraints and loss weighting."""

    hidden_layers: list[int] = Field(
        default_factory=lambda: [512, 384, 256, 128, 64], min_length=1
    )
    activation: Literal[ACTIVATIONS] = "prelu"
    optimizer: Literal[OPTIMIZERS] = "adam"
    learning_rate: float = Field(0.0005, gt=0.0, le=10.0)
    dropout_rate: float = Field(0.0, ge=0.0, lt=1.0)
    use_batch_norm: StrictBool = False
    batch_norm_momentum: float = Field(0.99, gt=0.0, lt=1.0)
    l2_regularization: float = Field(0.0, ge=0.0, le=1.0)
    constraint_interval: int = Field(10, ge=1)
    enable_weight_oscillation_dampener: StrictBool = True
    use_adaptive_oscillation_dampener: StrictBool = True
    enable_binary_change_max: StrictBool = True
    max_additional_binary_digits: int = Field(16, ge=0, le=24)
    enable_binary_precision_max: StrictBool = True
    max_binary_digits: int = Field(24, ge=1, le=24)
    loss_weighting_strategy: Literal[LOSS_WEIGHTING_STRATEGIES] = "physics_aware"
    binary_rounding: Literal["truncate", "nearest", "stochastic"] = "truncate"
    enable_james_stein: StrictBool = False
    james_stein_target: Literal["zero", "mean"] = "zero"
    james_stein_noise_variance: Literal["update"] | PositiveFloat = "update"
    constraint_targets: Literal["all", "kernel", "bias"] = "all"
    mse_weight: float = Field(0.5, ge=0.0)
    mae_weight: float = Field(0.5, ge=0.0)
    softadapt_beta: float = Field(0.1, ge=0.0)
    relobralo_alpha: float = Field(0.999, ge=0.0, le=1.0)
    relobralo_temperature: float = Field(0.1, gt=0.0)
    relobralo_expected_lookback: float = Field(0.999, ge=0.0, le=1.0)
    seed: int | None = 42

    @model_validator(mode="after")
    def _fixed_weights_not_both_zero(self) -> "ModelConfig":
        if self.mse_weight + self.mae_weight <= 0:
            raise ValueError("mse_weight + mae_weight must be > 0 (they are normalised to sum 1)")
        return self

    @field_validator("hidden_layers")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        bad = [w for w in value if w < 1]
        if bad:
            raise ValueError(f"every layer width must be >= 1, got {shorten(str(bad))}")
        return value

    _seed_range = field_validator("seed")(_seed_in_range)


class TrainingConfig(_Section):
    """How long and in which batches to train, and how the data is split."""

    epochs: int = Field(150, ge=1)
    batch_size: int = Field(128, ge=1)
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    val_size: float = Field(0.2, gt=0.0, lt=1.0)
    early_stopping_patience: int | None = Field(None, ge=1)
    reduce_lr_on_plateau: StrictBool = True
    reduce_lr_patience: int = Field(10, ge=1)
    reduce_lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    min_learning_rate: float = Field(1e-6, ge=0.0)
    checkpoint_every: int = Field(10, ge=1)
    steps_per_execution: int = Field(10, ge=1)
    jit_compile: StrictBool = True


class GenerationConfig(_Section):
    """How particles are drawn for the simulation (``particle_generation_config.json``).

    Every ``*_range`` is ``[low, high]`` with ``low <= high``; values are drawn
    uniformly in it. ``charge_values`` are drawn with equal probability.
    """

    num_particles_default: int = Field(2000, ge=1)
    mass_range: Range = (0.1, 10.0)
    velocity_x_range: Range = (-5.0, 5.0)
    velocity_y_range: Range = (-5.0, 5.0)
    position_x_range: Range = (-10.0, 10.0)
    position_y_range: Range = (-10.0, 10.0)
    charge_values: list[float] = Field(
        default_factory=lambda: [-1.0, 0.0, 1.0], min_length=1
    )
    magnetic_field_range: Range = (0.1, 2.0)
    simulation_time_range: Range = (1.0, 10.0)
    random_seed: int | None = 42

    @field_validator(
        "mass_range",
        "velocity_x_range",
        "velocity_y_range",
        "position_x_range",
        "position_y_range",
        "magnetic_field_range",
        "simulation_time_range",
    )
    @classmethod
    def _ordered_finite(cls, value: Range) -> Range:
        low, high = value
        if not all(map(_is_finite, value)):
            raise ValueError(f"bounds must be finite numbers, got [{low}, {high}]")
        if low > high:
            raise ValueError(f"low must be <= high, got [{low}, {high}]")
        return value

    @field_validator("mass_range")
    @classmethod
    def _positive_mass(cls, value: Range) -> Range:
        if value[0] <= 0:
            raise ValueError(f"masses must be > 0, got [{value[0]}, {value[1]}]")
        return value

    @field_validator("simulation_time_range")
    @classmethod
    def _non_negative_time(cls, value: Range) -> Range:
        if value[0] < 0:
            raise ValueError(f"times must be >= 0, got [{value[0]}, {value[1]}]")
        return value

    @field_validator("charge_values")
    @classmethod
    def _finite_charges(cls, value: list[float]) -> list[float]:
        if not all(map(_is_finite, value)):
            raise ValueError(f"charges must be finite numbers, got {shorten(str(value))}")
        return value

    _seed_range = field_validator("random_seed")(_seed_in_range)


def _is_finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


_SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "training": TrainingConfig,
    "generation": GenerationConfig,
}
_KEY_SECTION: dict[str, str] = {
    key: section for section, cls in _SECTIONS.items() for key in cls.model_fields
}
ALL_KEYS: tuple[str, ...] = tuple(_KEY_SECTION)


class Config(BaseModel):
    """The whole validated configuration of one run.

    Args:
        model: architecture, optimizer, constraints, loss weighting.
        training: epochs, batch size, data split.
        generation: particle simulation parameters.

    Example:
        >>> cfg = Config.from_flat({"learning_rate": 1e-3, "epochs": 5})
        >>> cfg.get("learning_rate"), cfg.to_flat()["epochs"]
        (0.001, 5)
    """

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    @classmethod
    def from_flat(
        cls,
        values: Mapping[str, Any],
        *,
        sources: Mapping[str, str] | None = None,
        source: str = "configuration",
    ) -> Config:
        """Validate a flat ``{key: value}`` mapping on top of the defaults.

        Args:
            values: configuration keys and values (any subset of :data:`ALL_KEYS`).
            sources: where each key came from, used in error messages.
            source: the label for keys absent from ``sources``.

        Raises:
            ConfigError: for an unknown key, a wrong type or an out-of-range value.
        """
        sources = dict(sources or {})
        _check_known_keys(values, lambda key: sources.get(key, source))
        grouped: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, value in values.items():
            grouped[_KEY_SECTION[key]][key] = value
        sections: dict[str, _Section] = {}
        errors: list[tuple[dict[str, Any], Mapping[str, Any]]] = []
        for name, section_cls in _SECTIONS.items():
            try:
                sections[name] = section_cls.model_validate(grouped[name])
            except ValidationError as exc:
                errors.extend((err, grouped[name]) for err in exc.errors(include_url=False))
        if errors:
            # A list of a million bad items gives a million errors: list the first few.
            shown: dict[str, str] = {}  # each value is serialised once, however many errors name it
            problems = [_describe(err, given, sources, source, shown) for err, given in errors[:MAX_LISTED_PROBLEMS]]
            if len(errors) > MAX_LISTED_PROBLEMS:
                problems.append(f"... and {len(errors) - MAX_LISTED_PROBLEMS} more problems")
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return cls(**sections)

    def to_flat(self) -> dict[str, Any]:
        """All keys and values as one JSON-compatible flat dict."""
        flat: dict[str, Any] = {}
        for name in _SECTIONS:
            flat.update(getattr(self, name).model_dump(mode="json"))
        return flat

    def get(self, key: str) -> Any:
        """The value of one flat key, e.g. ``cfg.get("epochs")``."""
        if key not in _KEY_SECTION:
            _check_known_keys({key: None}, lambda _: "lookup")
        return getattr(getattr(self, _KEY_SECTION[key]), key)

    def updated(self, overrides: Mapping[str, Any], *, source: str = "overrides") -> Config:
        """A new validated Config with ``overrides`` applied on top of this one."""
        flat = self.to_flat()
        flat.update(overrides)
        return Config.from_flat(flat, sources={k: source for k in overrides}, source="configuration")


def _check_known_keys(values: Iterable[str], source_of) -> None:
    unknown = [key for key in values if key not in _KEY_SECTION]
    if not unknown:
        return
    lines = []
    for key in unknown[:MAX_LISTED_PROBLEMS]:
        close = difflib.get_close_matches(str(key)[:MAX_SHOWN_CHARS], ALL_KEYS, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "see README 'Configuration reference' for the keys"
        lines.append(f"{source_of(key)}: unknown key '{shorten(str(key))}'; {hint}")
    if len(unknown) > MAX_LISTED_PROBLEMS:
        lines.append(f"... and {len(unknown) - MAX_LISTED_PROBLEMS} more unknown keys")
    raise ConfigError("\n".join(lines))


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text``, or its first ``limit`` characters and its length, for error messages.

    Example:
        >>> shorten("[" + "64, " * 1000 + "64]", 12)
        '[64, 64, 64,… (4004 characters)'
    """
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def show_value(value: Any) -> str:
    """A value as JSON for an error message, shortened (see :func:`shorten`)."""
    return shorten(json.dumps(value, default=str))


def _describe(error: Mapping[str, Any], given: Mapping[str, Any], sources, source: str,
              shown: dict[str, str] | None = None) -> str:
    shown = {} if shown is None else shown
    loc = error.get("loc", ())
    if not loc:  # a rule across several keys: the message names them
        return str(error.get("msg", "invalid combination of values")).removeprefix("Value error, ")
    key = str(loc[0])
    where = sources.get(key, source)
    path = key + "".join(f"[{part}]" for part in loc[1:])
    if key not in shown:
        shown[key] = show_value(given.get(key, error.get("input")))
    message = error.get("msg", "invalid value")
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if key.endswith("_range") and error.get("type") != "finite_number" and (
            len(loc) > 1 or error.get("type") in ("tuple_type", "too_long")):
        path, message = key, "must be a list of two numbers [low, high]"
    return f"{where}: {path} = {shown[key]} is invalid: {message}"


# ---------------------------------------------------------------------------
# Files, presets and overrides


def find_config_dir(config_dir: str | os.PathLike | None = None) -> Path | None:
    """Where ``ml_config/`` is: the argument, ``$NNLAB_CONFIG_DIR``, ``./ml_config``,
    or the one in the source checkout; ``None`` if there is none (defaults only).

    Raises:
        ConfigError: if an explicitly given directory does not exist.
    """
    explicit = config_dir if config_dir is not None else os.environ.get("NNLAB_CONFIG_DIR")
    if explicit:
        path = Path(explicit)
        if not path.is_dir():
            raise ConfigError(f"configuration directory '{path}' does not exist or is not a directory")
        return path
    for candidate in (Path.cwd() / "ml_config", Path(__file__).resolve().parents[2] / "ml_config"):
        if candidate.is_dir():
            return candidate
    return None


def special_file_kind(mode: int) -> str | None:
    """What a ``st_mode`` describes when it is not a regular file (``"a named pipe"``), else None."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def read_config_text(path: str | os.PathLike, label: str | None = None, *,
                     max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a configuration file, refusing anything but a small regular file.

    A named pipe would block the read forever and ``/dev/zero`` never ends, so
    the file type and size are checked before reading, and the read is bounded.

    Raises:
        ConfigError: missing, not a regular file, larger than ``max_bytes`` or not UTF-8.
    """
    label = label or str(path)
    try:
        kind = special_file_kind(os.stat(path).st_mode)
        if kind is None:
            # O_NONBLOCK: should a pipe be swapped in after the stat, opening it does not wait.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                kind = special_file_kind(os.fstat(fh.fileno()).st_mode)
                data = fh.read(max_bytes + 1) if kind is None else b""
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read file ({exc.strerror or exc})") from None
    if kind is not None:
        raise ConfigError(f"{label}: is {kind}, not a regular file")
    if len(data) > max_bytes:
        raise ConfigError(f"{label}: is larger than {max_bytes} bytes ({max_bytes >> 20} MiB), the limit for "
                          "a configuration file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: cannot read file ({exc})") from None


class _NonFinite:
    """Stands for a NaN/Infinity literal until its position can be reported."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _DuplicateKey(Exception):
    # Not a ValueError, so that it is not mistaken for a JSON syntax error.
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys silently; in a configuration one of them is a mistake.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def parse_json(text: str, label: str, *, key: str | None = None) -> Any:
    """``json.loads`` for configuration: strict JSON, nesting at most :data:`MAX_JSON_DEPTH` deep.

    Args:
        text: the JSON text.
        label: the source in messages (a file name, ``--set``).
        key: the configuration key ``text`` is the value of, if it is one value.

    Raises:
        json.JSONDecodeError: ``text`` is not JSON (the caller decides what that means).
        ConfigError: NaN/Infinity literals, a duplicate key, or too deep nesting.
    """
    where = f"{label} {key}" if key is not None else label
    too_deep = f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep (the limit for a configuration)"
    try:
        data = json.loads(text, parse_constant=_NonFinite, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ConfigError(too_deep) from None
    except _DuplicateKey as exc:
        raise ConfigError(f"{where}: key '{shorten(exc.key)}' appears more than once in one JSON object; "
                          "keep one") from None
    # Iterative walk: the structure may be as deep as the recursion limit allowed.
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(data, (key,) if key is not None else (), 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, _NonFinite):
            name = str(path[0]) + "".join(f"[{part}]" for part in path[1:]) if path else ""
            where = f"{label}: {name} = {value.literal} is invalid" if name else f"{label}: {value.literal}"
            raise ConfigError(f"{where}: JSON NaN/Infinity is not allowed; configuration values must be "
                              "finite numbers")
        if isinstance(value, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise ConfigError(too_deep)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            # reversed: the first problem in the text is the one reported
            stack.extend((child, path + (part,), depth + 1) for part, child in reversed(list(items)))
    return data


def read_json_object(path: str | os.PathLike, label: str | None = None, *,
                     max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """Read a JSON file that must hold one object; errors name the file and position.

    The file must be a regular file of at most ``max_bytes`` holding strict
    JSON (see :func:`parse_json`).
    """
    label = label or str(path)
    text = read_config_text(path, label, max_bytes=max_bytes)
    try:
        data = parse_json(text, label)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{label}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: must contain a JSON object of key/value pairs, got {type(data).__name__}")
    return data


def list_presets(config_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the presets in ``<config_dir>/model_presets/``."""
    base = find_config_dir(config_dir)
    if base is None or not (base / PRESETS_DIR).is_dir():
        return []
    return sorted(p.stem for p in (base / PRESETS_DIR).glob("*.json"))


def load_preset(name: str, config_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The raw key/values of one preset (validated later, with the other layers).

    Raises:
        ConfigError: if there is no preset of that name; the message lists them.
    """
    available = list_presets(config_dir)
    if name not in available:
        listing = ", ".join(available) if available else "none found"
        raise ConfigError(f"unknown preset '{name}'; available presets: {listing}")
    base = find_config_dir(config_dir)
    path = base / PRESETS_DIR / f"{name}.json"
    return read_json_object(path, f"preset '{name}' ({path})")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``KEY=VALUE`` override; VALUE is JSON (``[64,32]``, ``true``,
    ``1e-3``) or else a plain string (``relu``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. learning_rate=0.001), got '{shorten(text)}'")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--set: {shorten(key)}: the value is {len(raw)} characters long; at most "
                          f"{MAX_CONFIG_BYTES} are accepted")
    raw = raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("null", "none"):
        return key, None
    try:
        return key, parse_json(raw, "--set", key=shorten(key))
    except json.JSONDecodeError:
        return key, raw


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse several ``KEY=VALUE`` strings (later ones win)."""
    return dict(parse_override(item) for item in items)


def load_config(
    config_dir: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_source: str = "--set",
    config_file: str | os.PathLike | None = None,
) -> Config:
    """Load and validate the configuration of a run.

    Args:
        config_dir: the ``ml_config`` directory (see :func:`find_config_dir`).
        preset: a preset name from ``ml_config/model_presets/``.
        overrides: explicit values that win over everything else.
        config_file: a JSON file of keys (e.g. an HPO ``best_config.json``),
            applied after the preset and before ``overrides``.
        override_source: how overrides are named in error messages.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: naming the file/preset/override, the key, the value and
            what is allowed.

    Example:
        >>> load_config(overrides={"max_binary_digits": 16}).model.max_binary_digits
        16
    """
    base = find_config_dir(config_dir)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def apply(layer: Mapping[str, Any], label: str) -> None:
        _check_known_keys(layer, lambda _key: label)
        values.update(layer)
        sources.update({key: label for key in layer})

    if base is not None:
        for filename in (MODEL_CONFIG_FILE, TRAINING_CONFIG_FILE, GENERATION_CONFIG_FILE):
            path = base / filename
            if path.exists():
                apply(read_json_object(path, filename), filename)
    if preset is not None:
        apply(load_preset(preset, base), f"preset '{preset}'")
    if config_file is not None:
        path = Path(config_file)
        apply(read_json_object(path, str(path)), str(path))
    if overrides:
        apply(dict(overrides), override_source)
    return Config.from_flat(values, sources=sources, source="defaults")


def resolve_config(config: Config | Mapping[str, Any] | None) -> Config:
    """Accept a :class:`Config`, a flat dict of keys (on top of the defaults) or None."""
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return Config.from_flat(config)
    raise ConfigError(
        f"configuration must be a Config or a dict of keys, got {type(config).__name__}"
    )
