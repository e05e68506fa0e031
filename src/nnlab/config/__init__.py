"""Validated configuration: defaults, JSON or TOML files, presets and overrides.

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
holding strict JSON, or TOML when the name ends in ``.toml`` (a preset, a
``--config`` file, or an ``ml_config`` file in place of its ``.json``): no
NaN/Infinity (nor TOML's inf/nan), no duplicate keys, at most
:data:`MAX_JSON_DEPTH` levels of nesting. Values echoed in messages are
shortened (see :func:`shorten`).

Example:
    >>> from nnlab.config import load_config
    >>> cfg = load_config(preset="fast_debug", overrides={"epochs": 3})
    >>> cfg.model.hidden_layers, cfg.training.epochs
    ([64, 32], 3)
"""

from nnlab.config._models import (
    ACTIVATIONS,
    ALL_KEYS,
    LEGACY_KEYS,
    LOSS_WEIGHTING_STRATEGIES,
    PHYSICS_LOSS_TERMS,
    MAX_LISTED_PROBLEMS,
    MAX_SHOWN_CHARS,
    OPTIMIZERS,
    SEED_MAX,
    Config,
    GenerationConfig,
    ModelConfig,
    TrainingConfig,
    check_known_keys,
    check_tracking_uri,
    shorten,
    show_value,
)
from nnlab.config._sources import (
    GENERATION_CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_JSON_DEPTH,
    MODEL_CONFIG_FILE,
    PRESETS_DIR,
    TRAINING_CONFIG_FILE,
    dump_toml,
    find_config_dir,
    list_presets,
    load_config,
    load_preset,
    parse_json,
    parse_override,
    parse_overrides,
    read_config_file,
    read_config_text,
    read_json_object,
    read_toml_object,
    resolve_config,
)

__all__ = [
    "ACTIVATIONS",
    "ALL_KEYS",
    "LEGACY_KEYS",
    "OPTIMIZERS",
    "LOSS_WEIGHTING_STRATEGIES",
    "PHYSICS_LOSS_TERMS",
    "ModelConfig",
    "TrainingConfig",
    "GenerationConfig",
    "Config",
    "check_known_keys",
    "check_tracking_uri",
    "find_config_dir",
    "list_presets",
    "load_preset",
    "load_config",
    "resolve_config",
    "parse_override",
    "parse_overrides",
    "read_json_object",
    "read_toml_object",
    "read_config_file",
    "dump_toml",
    "read_config_text",
    "parse_json",
    "shorten",
    "show_value",
    "MAX_CONFIG_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_SHOWN_CHARS",
    "MAX_LISTED_PROBLEMS",
    "SEED_MAX",
    "MODEL_CONFIG_FILE",
    "TRAINING_CONFIG_FILE",
    "GENERATION_CONFIG_FILE",
    "PRESETS_DIR",
]
