"""Configuration: defaults, files, presets, overrides and every error case."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from nnlab.config import (
    ALL_KEYS,
    Config,
    GenerationConfig,
    ModelConfig,
    TrainingConfig,
    list_presets,
    load_config,
    load_preset,
    parse_override,
    parse_overrides,
    resolve_config,
)
from nnlab.errors import ConfigError

REPO_CONFIG = Path(__file__).resolve().parents[1] / "ml_config"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A writable copy of the repository's ml_config/."""
    target = tmp_path / "ml_config"
    shutil.copytree(REPO_CONFIG, target)
    return target


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# --- defaults and shipped files -------------------------------------------


def test_documented_model_defaults():
    cfg = load_config(REPO_CONFIG)
    m = cfg.model
    assert m.hidden_layers == [512, 384, 256, 128, 64]
    assert (m.activation, m.optimizer, m.learning_rate) == ("prelu", "adam", 0.0005)
    assert (m.dropout_rate, m.use_batch_norm, m.l2_regularization) == (0.0, False, 0.0)
    assert m.constraint_interval == 10
    assert m.enable_weight_oscillation_dampener and m.use_adaptive_oscillation_dampener
    assert m.enable_binary_change_max and m.max_additional_binary_digits == 16
    assert m.enable_binary_precision_max and m.max_binary_digits == 24
    assert m.loss_weighting_strategy == "physics_aware"
    assert m.seed == 42
    assert (cfg.training.epochs, cfg.training.batch_size) == (150, 128)


def test_generation_defaults():
    g = load_config(REPO_CONFIG).generation
    assert g.num_particles_default == 12000
    assert g.mass_range == (0.1, 10.0)
    assert g.velocity_x_range == g.velocity_y_range == (-5.0, 5.0)
    assert g.position_x_range == g.position_y_range == (-10.0, 10.0)
    assert g.charge_values == [-1.0, 0.0, 1.0]
    assert g.magnetic_field_range == (0.1, 2.0)
    assert g.simulation_time_range == (1.0, 10.0)
    assert g.random_seed == 42


def test_code_defaults_equal_shipped_files():
    # The built-in defaults and ml_config/*.json document the same values.
    assert Config().to_flat() == load_config(REPO_CONFIG).to_flat()


def test_constraint_key_defaults_and_ranges():
    m = ModelConfig()
    assert m.max_binary_digits == 24 and m.max_additional_binary_digits == 16
    for bad in (0, 25):
        with pytest.raises(ConfigError, match="max_binary_digits"):
            Config.from_flat({"max_binary_digits": bad})
    for bad in (-1, 25):
        with pytest.raises(ConfigError, match="max_additional_binary_digits"):
            Config.from_flat({"max_additional_binary_digits": bad})
    assert Config.from_flat({"max_binary_digits": 1, "max_additional_binary_digits": 0}).model.max_binary_digits == 1


@pytest.mark.parametrize(
    "name, expected",
    [
        ("baseline", dict(hidden_layers=[128, 64, 32], activation="relu", optimizer="adam", learning_rate=0.001,
                          dropout_rate=0.1, use_batch_norm=False, l2_regularization=0.0, constraint_interval=2,
                          enable_weight_oscillation_dampener=True, use_adaptive_oscillation_dampener=False,
                          loss_weighting_strategy="r2_based")),
        ("fast_debug", dict(hidden_layers=[64, 32], activation="relu", optimizer="adam", learning_rate=0.001,
                            dropout_rate=0.0, constraint_interval=5, enable_weight_oscillation_dampener=False,
                            use_adaptive_oscillation_dampener=False, loss_weighting_strategy="combined")),
        ("deep_regularized", dict(hidden_layers=[512, 384, 256, 128, 64], activation="prelu", optimizer="adam",
                                  learning_rate=0.001, dropout_rate=0.04, use_batch_norm=True,
                                  batch_norm_momentum=0.95, l2_regularization=1e-5, constraint_interval=3,
                                  enable_weight_oscillation_dampener=True, use_adaptive_oscillation_dampener=True,
                                  loss_weighting_strategy="physics_aware")),
    ],
)
def test_presets(name, expected):
    flat = load_config(REPO_CONFIG, preset=name).to_flat()
    for key, value in expected.items():
        assert flat[key] == value, key


def test_list_presets():
    assert list_presets(REPO_CONFIG) == ["baseline", "deep_regularized", "fast_debug"]


# --- layering ---------------------------------------------------------------


def test_layer_order_defaults_file_preset_override(config_dir):
    write(config_dir / "model_config.json", {"learning_rate": 0.002, "dropout_rate": 0.3, "activation": "elu"})
    write(config_dir / "model_presets" / "mine.json", {"learning_rate": 0.003, "dropout_rate": 0.2})
    cfg = load_config(config_dir, preset="mine", overrides={"learning_rate": 0.004})
    assert cfg.model.learning_rate == 0.004  # override beats preset
    assert cfg.model.dropout_rate == 0.2  # preset beats file
    assert cfg.model.activation == "elu"  # file beats defaults
    assert cfg.model.optimizer == "adam"  # default


def test_missing_files_fall_back_to_defaults(tmp_path):
    empty = tmp_path / "cfg"
    empty.mkdir()
    assert load_config(empty).to_flat() == Config().to_flat()


def test_presets_may_set_training_and_generation_keys(config_dir):
    write(config_dir / "model_presets" / "tiny.json", {"epochs": 3, "num_particles_default": 50})
    cfg = load_config(config_dir, preset="tiny")
    assert cfg.training.epochs == 3 and cfg.generation.num_particles_default == 50


def test_env_config_dir(config_dir, monkeypatch):
    write(config_dir / "training_config.json", {"epochs": 7, "batch_size": 16})
    monkeypatch.setenv("NNLAB_CONFIG_DIR", str(config_dir))
    assert load_config().training.epochs == 7


def test_resolve_config_and_flat_round_trip():
    cfg = resolve_config({"epochs": 50, "batch_size": 32, "learning_rate": 0.001, "dropout_rate": 0.02})
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.model.dropout_rate) == (50, 32, 0.02)
    assert Config.from_flat(cfg.to_flat()) == cfg
    assert resolve_config(cfg) is cfg
    assert resolve_config(None) == Config()
    assert cfg.get("learning_rate") == 0.001
    assert cfg.updated({"epochs": 9}).training.epochs == 9
    assert set(cfg.to_flat()) == set(ALL_KEYS)
    with pytest.raises(ConfigError, match="must be a Config or a dict"):
        resolve_config([("epochs", 3)])


# --- errors -----------------------------------------------------------------


def test_unknown_key_names_file_and_suggests(config_dir):
    write(config_dir / "model_config.json", {"learing_rate": 0.01})
    with pytest.raises(ConfigError) as info:
        load_config(config_dir)
    message = str(info.value)
    assert "model_config.json" in message and "'learing_rate'" in message
    assert "did you mean 'learning_rate'" in message


def test_unknown_key_in_preset_names_preset(config_dir):
    write(config_dir / "model_presets" / "typo.json", {"hiden_layers": [8]})
    with pytest.raises(ConfigError, match=r"preset 'typo'.*'hiden_layers'.*did you mean 'hidden_layers'"):
        load_config(config_dir, preset="typo")


def test_unknown_override_key():
    with pytest.raises(ConfigError, match=r"--set: unknown key 'epoch'; did you mean 'epochs'"):
        load_config(REPO_CONFIG, overrides={"epoch": 3})


def test_unknown_key_without_close_match():
    with pytest.raises(ConfigError, match="unknown key 'zzzz'.*Configuration reference"):
        Config.from_flat({"zzzz": 1})


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("learning_rate", 0, "greater than 0"),
        ("learning_rate", "fast", "valid number"),
        ("dropout_rate", 1.5, "less than 1"),
        ("dropout_rate", -0.1, "greater than or equal to 0"),
        ("batch_norm_momentum", 1.0, "less than 1"),
        ("l2_regularization", -1e-5, "greater than or equal to 0"),
        ("constraint_interval", 0, "greater than or equal to 1"),
        ("hidden_layers", [], "at least 1 item"),
        ("hidden_layers", [64, 0], "every layer width must be >= 1"),
        ("activation", "sigmoidal", "'relu', 'tanh', 'elu', 'gelu', 'swish' or 'prelu'"),
        ("optimizer", "adagrad", "'adam', 'adamw', 'sgd' or 'rmsprop'"),
        ("loss_weighting_strategy", "magic", "'r2_based'"),
        ("use_batch_norm", "yes", "valid boolean"),
        ("max_binary_digits", True, "expected a number, not true/false"),
        ("epochs", 2.5, "fractional part"),
        ("epochs", 0, "greater than or equal to 1"),
        ("batch_size", -4, "greater than or equal to 1"),
        ("test_size", 1.0, "less than 1"),
        ("num_particles_default", 0, "greater than or equal to 1"),
        ("mass_range", [5.0, 1.0], "low must be <= high"),
        ("mass_range", [0.0, 1.0], "masses must be > 0"),
        ("mass_range", [1.0], r"two numbers \[low, high\]"),
        ("velocity_x_range", [-1, "x"], r"two numbers \[low, high\]"),
        ("simulation_time_range", [-1.0, 2.0], "times must be >= 0"),
        ("charge_values", [], "at least 1 item"),
    ],
)
def test_bad_values_name_key_value_and_allowed(key, value, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(REPO_CONFIG, overrides={key: value})
    message = str(info.value)
    assert f"--set: {key}" in message
    assert json.dumps(value) in message
    assert re.search(fragment, message), message


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as info:
        Config.from_flat({"dropout_rate": 2, "epochs": 0, "mass_range": [3, 1]})
    message = str(info.value)
    assert "dropout_rate" in message and "epochs" in message and "mass_range" in message


def test_bad_value_in_file_names_file(config_dir):
    write(config_dir / "training_config.json", {"epochs": -1, "batch_size": 128})
    with pytest.raises(ConfigError, match=r"training_config.json: epochs = -1 is invalid"):
        load_config(config_dir)


def test_malformed_json_names_file_and_position(config_dir):
    write(config_dir / "particle_generation_config.json", '{"mass_range": [0.1, 10.0],\n  "oops" }')
    with pytest.raises(ConfigError, match=r"particle_generation_config.json: not valid JSON at line 2"):
        load_config(config_dir)


def test_json_that_is_not_an_object(config_dir):
    write(config_dir / "model_config.json", [1, 2])
    with pytest.raises(ConfigError, match="must contain a JSON object.*list"):
        load_config(config_dir)


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError) as info:
        load_preset("turbo", REPO_CONFIG)
    assert "unknown preset 'turbo'" in str(info.value)
    assert "baseline, deep_regularized, fast_debug" in str(info.value)


def test_missing_explicit_config_dir(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nowhere")


# --- overrides --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("learning_rate=0.001", ("learning_rate", 0.001)),
        ("hidden_layers=[64, 32]", ("hidden_layers", [64, 32])),
        ("use_batch_norm=true", ("use_batch_norm", True)),
        ("use_batch_norm=False", ("use_batch_norm", False)),
        ("activation=relu", ("activation", "relu")),
        ("seed=null", ("seed", None)),
        ("epochs = 5", ("epochs", 5)),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["epochs", "=5", ""])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override(text)


def test_none_is_the_allowed_string_where_a_key_allows_it_and_null_elsewhere():
    assert load_config(overrides=parse_overrides(["loss_weighting_strategy=none"])).model.loss_weighting_strategy \
        == "none"
    assert parse_override("distribution=None") == ("distribution", "none")
    assert parse_override("seed=none") == ("seed", None)
    # Another key's message is unchanged: none is still null there.
    with pytest.raises(ConfigError, match=r"--set: learning_rate = null is invalid"):
        load_config(overrides=parse_overrides(["learning_rate=none"]))


def test_parse_overrides_later_wins():
    assert parse_overrides(["epochs=2", "epochs=3"]) == {"epochs": 3}


def test_sections_are_separately_usable():
    assert TrainingConfig(epochs=3).epochs == 3
    assert GenerationConfig(charge_values=[-2, 2]).charge_values == [-2.0, 2.0]


def test_fixed_loss_weights_cannot_both_be_zero():
    with pytest.raises(ConfigError, match=r"mse_weight \+ mae_weight must be > 0"):
        Config.from_flat({"mse_weight": 0.0, "mae_weight": 0.0})


def test_constraint_and_loss_keys():
    cfg = Config.from_flat({"binary_rounding": "nearest", "james_stein_noise_variance": 0.25,
                            "constraint_targets": "kernel"})
    assert cfg.model.binary_rounding == "nearest"
    assert cfg.model.james_stein_noise_variance == 0.25
    assert Config().model.james_stein_noise_variance == "update"
    with pytest.raises(ConfigError, match="james_stein_noise_variance"):
        Config.from_flat({"james_stein_noise_variance": -1.0})
    with pytest.raises(ConfigError, match="binary_rounding"):
        Config.from_flat({"binary_rounding": "up"})


# --- TOML configuration files ---------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("epochs = 3\nhidden_layers = [16,\n", "c.toml: not valid TOML at the end of the file: Invalid value"),
    ("epochs = 3\nhidden_layers = [16\nseed = 1\n", "c.toml: not valid TOML at line 3, column 1: Unclosed array"),
    ("epochs = 3\nepochs = 4\n", "c.toml: not valid TOML at line 2, column 11: Cannot overwrite a value"),
    ("dropout_rate = nan\n", "c.toml: dropout_rate = nan is invalid: TOML inf/nan is not allowed"),
    ("mass_range = [0.1, -inf]\n", "c.toml: mass_range[1] = -inf is invalid: TOML inf/nan is not allowed"),
    ("[training]\nepochs = 3\n", "c.toml: [training] is a TOML table, but configuration keys are flat"),
    ("seed = 07:32:00\n", "c.toml: seed = 07:32:00 is invalid: a TOML date or time is not a configuration value"),
])
def test_toml_errors_name_the_file_and_what_is_wrong(tmp_path, text, message):
    from nnlab.config import read_config_file

    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        read_config_file(tmp_path / "c.toml", "c.toml")
    assert str(info.value).startswith(message), str(info.value)


def test_toml_config_file_is_validated_like_json(tmp_path):
    (tmp_path / "c.toml").write_text("hidden_layers = [16, 8]\nlearing_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"c.toml: unknown key 'learing_rate'; did you mean 'learning_rate'\?"):
        load_config(config_file=tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text("dropout_rate = 1.5\n")
    with pytest.raises(ConfigError, match=r"c.toml: dropout_rate = 1.5 is invalid"):
        load_config(config_file=tmp_path / "c.toml")


def test_dump_toml_reads_back_to_the_same_configuration(tmp_path):
    from nnlab.config import dump_toml

    flat = load_config(preset="deep_regularized", overrides={"mlflow_tracking_uri": None}).to_flat()
    text = dump_toml(flat)
    assert "# mlflow_tracking_uri: not set (TOML has no null)\n" in text
    (tmp_path / "all.toml").write_text(text)
    assert load_config(config_file=tmp_path / "all.toml").to_flat() == flat


def test_dump_toml_escapes_strings():
    import tomllib

    from nnlab.config import dump_toml

    values = {"a": 'say "hi" \\ \n é', "b": [1.5, 2e-05, True], "c": 10**20, "weird key": 1}
    assert tomllib.loads(dump_toml(values)) == values
