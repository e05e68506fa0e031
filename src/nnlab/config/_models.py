"""The validated configuration models: sections, :class:`Config`, error messages."""

from __future__ import annotations

import difflib
import json
import os
import typing
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nnlab.errors import ConfigError


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

# Relations the physics-informed loss term can enforce (nnlab.losses.PhysicsLoss).
PHYSICS_LOSS_TERMS = ("speed", "energy", "displacement")

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
    constraint_schedule: Literal["epoch", "step"] = "epoch"
    precision_policy: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    mse_weight: float = Field(0.5, ge=0.0)
    mae_weight: float = Field(0.5, ge=0.0)
    softadapt_beta: float = Field(0.1, ge=0.0)
    relobralo_alpha: float = Field(0.999, ge=0.0, le=1.0)
    relobralo_temperature: float = Field(0.1, gt=0.0)
    relobralo_expected_lookback: float = Field(0.999, ge=0.0, le=1.0)
    physics_loss_weight: float = Field(0.0, ge=0.0, le=1e6)
    physics_loss_terms: list[Literal[PHYSICS_LOSS_TERMS]] = Field(
        default_factory=lambda: list(PHYSICS_LOSS_TERMS), min_length=1
    )
    physics_collocation_points: int = Field(262144, ge=0, le=10_000_000)
    physics_loss_warmup_epochs: int = Field(30, ge=0)
    physics_collocation_batch_size: int = Field(96, ge=1, le=1_000_000)
    seed: int | None = 42

    @model_validator(mode="after")
    def _fixed_weights_not_both_zero(self) -> "ModelConfig":
        if self.mse_weight + self.mae_weight <= 0:
            raise ValueError("mse_weight + mae_weight must be > 0 (they are normalised to sum 1)")
        return self

    @model_validator(mode="after")
    def _epoch_level_under_step_schedule(self) -> "ModelConfig":
        if self.constraint_schedule == "step":
            stateful = [key for key in ("enable_weight_oscillation_dampener", "use_adaptive_oscillation_dampener",
                                        "enable_james_stein") if getattr(self, key)]
            if stateful:
                warnings.warn(
                    f"constraint_schedule = 'step' runs only the binary limits (enable_binary_precision_max, "
                    f"enable_binary_change_max) after every step; {', '.join(stateful)} stay epoch-level "
                    f"(every constraint_interval = {self.constraint_interval} epochs): they are stateful "
                    "and their statistics are per epoch. Set them to false for a pure per-step run.",
                    UserWarning, stacklevel=2,
                )
        return self

    @field_validator("physics_loss_terms")
    @classmethod
    def _distinct_terms(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each term at most once")
        return value

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
    distribution: Literal["none", "mirrored"] = "none"
    distribution_devices: int | None = Field(None, ge=1, le=64)
    tensorboard: StrictBool = True
    # Weight and significant-bit histograms every this many constraint applications (0: none); Keras' histogram_freq.
    tensorboard_histogram_freq: int = Field(1, ge=0)
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = Field("nnlab", min_length=1, max_length=500)
    data_targets: list[str] | None = None
    data_features: list[str] | None = None
    data_drop_missing: StrictBool = False

    @field_validator("data_targets", "data_features", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # --set data_targets=a,b and the --targets option give the names as one string.
        return [part.strip() for part in value.split(",")] if isinstance(value, str) else value

    @field_validator("data_targets", "data_features")
    @classmethod
    def _column_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("give at least one column name, or null")
        blank = [v for v in value if not v.strip()]
        if blank:
            raise ValueError("a column name cannot be empty")
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"column(s) {repeated} named more than once")
        return value

    @model_validator(mode="after")
    def _features_need_targets(self) -> "TrainingConfig":
        if self.data_features is not None and self.data_targets is None:
            raise ValueError("data_features chooses the input columns of a --data table and needs data_targets "
                             "(--targets), the column(s) to predict")
        return self

    @model_validator(mode="after")
    def _mirrored_runs_one_step_per_call(self) -> "TrainingConfig":
        if self.distribution == "mirrored" and (self.steps_per_execution != 1 or self.jit_compile):
            warnings.warn(
                "distribution = 'mirrored' trains with steps_per_execution = 1 and jit_compile = false: both "
                "fail under tf.distribute.MirroredStrategy in this Keras/TensorFlow (several steps per call, "
                "and XLA on the replicas' variables). Set them so to silence this warning.",
                UserWarning, stacklevel=2,
            )
        return self

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_uri_form(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return check_tracking_uri(value)


class GenerationConfig(_Section):
    """How particles are drawn for the simulation (``particle_generation_config.json``).

    Every ``*_range`` is ``[low, high]`` with ``low <= high``; values are drawn
    uniformly in it. ``charge_values`` are drawn with equal probability.
    """

    num_particles_default: int = Field(12000, ge=1)
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
# Keys for which "none" is an allowed string (loss_weighting_strategy, distribution): on the
# command line `--set KEY=none` means that string there, not null.
NONE_STRING_KEYS: frozenset[str] = frozenset(
    key for section, cls in _SECTIONS.items() for key, field in cls.model_fields.items()
    if "none" in typing.get_args(field.annotation))

# Keys of the original project's ml_config/*.json that nnlab has no use for, each with
# why. In a configuration file they are dropped with one warning, so that the original
# files load as they are; anywhere else (--set, a dict) they are an error, since
# asking for one explicitly means expecting an effect it does not have.
LEGACY_KEYS: dict[str, str] = {
    "save_to_file": "nnlab always writes every run's artifacts to its run directory",
    "output_dir": "the output root is the --output-dir option (default training_output)",
    "results_dir": "the output root is the --output-dir option (default training_output)",
    "verbose": "output is set on the command line (-v, --quiet)",
    "log_level": "output is set on the command line (-v, --quiet)",
    "plot_results": "figures are made by `nnlab analyze RUN`",
}


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
        check_known_keys(values, lambda key: sources.get(key, source))
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
            check_known_keys({key: None}, lambda _: "lookup")
        return getattr(getattr(self, _KEY_SECTION[key]), key)

    def updated(self, overrides: Mapping[str, Any], *, source: str = "overrides") -> Config:
        """A new validated Config with ``overrides`` applied on top of this one."""
        flat = self.to_flat()
        flat.update(overrides)
        return Config.from_flat(flat, sources={k: source for k in overrides}, source="configuration")


def check_known_keys(values: Iterable[str], source_of) -> None:
    unknown = [key for key in values if key not in _KEY_SECTION]
    if not unknown:
        return
    lines = []
    for key in unknown[:MAX_LISTED_PROBLEMS]:
        if key in LEGACY_KEYS:
            lines.append(f"{source_of(key)}: '{key}' is a key of the original project that nnlab does not use "
                         f"({LEGACY_KEYS[key]}); remove it")
            continue
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


# MLflow tracking URIs: the configuration checks their form itself (no MLflow import, so a bad
# URI is refused before training whether or not MLflow is installed); nnlab.integrations re-exports it.
_DATABASES = ("postgresql", "mysql", "mssql")
_ALLOWED = ("http(s)://HOST[:PORT][/PATH], sqlite:///FILE, postgresql://USER@HOST/DB, "
            "mysql://..., mssql://... or databricks[://PROFILE]")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_tracking_uri(uri: str) -> str:
    """``uri`` if it has the form of an MLflow tracking URI; ValueError saying what is allowed otherwise.

    Example:
        >>> check_tracking_uri("http://127.0.0.1:5000")
        'http://127.0.0.1:5000'
    """
    text = uri.strip()
    if not text:
        raise ValueError(f"an MLflow tracking URI is required: {_ALLOWED}; null turns MLflow off")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    base = scheme.split("+", 1)[0]
    bad = f"'{_short(text)}' is not an MLflow tracking URI: "
    if base in ("http", "https"):
        try:
            port = parts.port  # raises on a port that is not a number in 0..65535
        except ValueError:
            raise ValueError(bad + f"its port is not a number from 1 to 65535; use {_ALLOWED}") from None
        if not parts.hostname or port == 0:
            raise ValueError(bad + f"it names no host (or port 0); use {_ALLOWED}")
    elif base == "sqlite":
        if not text.startswith(f"{parts.scheme}:///") or len(text) <= len(parts.scheme) + 4:
            raise ValueError(bad + "give the database file as sqlite:///relative/path.db or "
                                   "sqlite:////absolute/path.db")
    elif base == "file":
        # MLflow 3's file store refuses to open unless MLFLOW_ALLOW_FILE_STORE opts in: say so before training.
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
            raise ValueError(bad + "MLflow's file store is in maintenance mode and does not track without "
                                   f"MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///DIR/mlflow.db, or {_ALLOWED}")
        if not parts.path:
            raise ValueError(bad + "give a directory as file:///absolute/dir")
    elif base in _DATABASES:
        if not parts.hostname:
            raise ValueError(bad + f"it names no database host; use {base}://USER@HOST[:PORT]/DB")
    elif base != "databricks" and text != "databricks":
        hint = " (a file path needs sqlite:/// in front)" if not scheme or len(scheme) == 1 else ""
        raise ValueError(bad + f"unknown scheme '{scheme or '(none)'}'{hint}; use {_ALLOWED}")
    return text
