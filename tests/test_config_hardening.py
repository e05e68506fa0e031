"""Configuration sources a user can get badly wrong: huge, deep, non-finite, duplicated,
not a file at all; seeds out of range; abbreviated options. Each is a ConfigError
naming the source (or an argparse error), never a hang or a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nnlab.config import (
    MAX_CONFIG_BYTES,
    MAX_JSON_DEPTH,
    SEED_MAX,
    Config,
    load_config,
    parse_json,
    parse_override,
    parse_overrides,
    read_json_object,
    shorten,
)
from nnlab.errors import ConfigError
from nnlab.hpo import SearchSpace, load_search_space
import _forked

REPO = Path(__file__).resolve().parents[1]
NON_FINITE = "JSON NaN/Infinity is not allowed; configuration values must be finite numbers"


def nested(levels: int) -> str:
    """A JSON object holding ``levels`` containers in all (the object included)."""
    return '{"hidden_layers": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def finishes(call, timeout: float = 20.0):
    """Run ``call`` in a thread and fail (instead of hanging the suite) if it blocks."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "blocked: the file was opened or read as if it were a regular file"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- size and depth ------------------------------------------------------------------


def test_deep_nesting_is_a_config_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    with pytest.raises(ConfigError, match=rf"deep.json: JSON nested more than {MAX_JSON_DEPTH} levels deep"):
        read_json_object(path)
    with pytest.raises(ConfigError, match=r"^--set hidden_layers: JSON nested more than 32 levels deep"):
        parse_override("hidden_layers=" + "[" * 100_000)


def test_depth_limit_is_exact(tmp_path):
    assert parse_json(nested(MAX_JSON_DEPTH), "x")["hidden_layers"] is not None
    with pytest.raises(ConfigError, match="nested more than 32 levels"):
        parse_json(nested(MAX_JSON_DEPTH + 1), "x")
    path = tmp_path / "model_config.json"
    path.write_text(nested(MAX_JSON_DEPTH + 1))
    with pytest.raises(ConfigError, match=r"^model_config.json: JSON nested"):
        load_config(tmp_path)


def test_file_size_is_capped(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"epochs": 5' + " " * MAX_CONFIG_BYTES + "}")
    with pytest.raises(ConfigError, match=r"big.json: is larger than 1048576 bytes \(1 MiB\)"):
        read_json_object(path)
    path.write_text('{"epochs": 5' + " " * (MAX_CONFIG_BYTES - 13) + "}")  # exactly the limit
    assert read_json_object(path) == {"epochs": 5}


def test_huge_set_value_is_refused_by_length():
    with pytest.raises(ConfigError, match=r"--set: hidden_layers: the value is 3000002 characters long; "
                                          r"at most 1048576 are accepted"):
        parse_override("hidden_layers=[" + "1," * 1_500_000 + "]")


# --- long values are shortened in every message --------------------------------------------


def test_shorten():
    assert shorten("abc") == "abc"
    assert shorten("x" * 81) == "x" * 80 + "… (81 characters)"


def test_long_value_is_shortened_in_validation_errors():
    value = [64] * 2_000_000 + ["wide"]
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"hidden_layers": value})
    message = str(info.value)
    shown = json.dumps(value)[:80]
    assert f"--set: hidden_layers[2000000] = {shown}… ({len(json.dumps(value))} characters) is invalid" in message
    assert len(message) < 500


def test_number_of_problems_listed_is_capped():
    with pytest.raises(ConfigError) as info:
        Config.from_flat({"hidden_layers": ["x"] * 1000})
    lines = str(info.value).splitlines()
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 980 more problems"


def test_validator_messages_shorten_their_lists():
    with pytest.raises(ConfigError) as info:
        Config.from_flat({"hidden_layers": [0] * 100_000})
    assert "every layer width must be >= 1, got [0, 0" in str(info.value)
    assert "… (300000 characters)" in str(info.value) and len(str(info.value)) < 500


def test_long_unknown_key_and_malformed_set_are_shortened():
    with pytest.raises(ConfigError) as info:
        Config.from_flat({"k" * 100_000: 1})
    assert "unknown key '" + "k" * 80 + "… (100000 characters)'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_override("e" * 100_000)
    assert str(info.value).endswith("got '" + "e" * 80 + "… (100000 characters)'")


def test_long_space_values_are_shortened():
    with pytest.raises(ConfigError) as info:
        SearchSpace({"learning_rate": {"low": 0.1, "high": 0.2, "lo": [1] * 50_000}})
    assert "… (" in str(info.value) and len(str(info.value)) < 400


# --- NaN / Infinity and duplicate keys ------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    ("epochs=NaN", "--set: epochs = NaN is invalid"),
    ("learning_rate=Infinity", "--set: learning_rate = Infinity is invalid"),
    ("learning_rate=-Infinity", "--set: learning_rate = -Infinity is invalid"),
    ("mass_range=[0.1, Infinity]", "--set: mass_range[1] = Infinity is invalid"),
])
def test_non_finite_literals_in_set_are_refused(text, shown):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert str(info.value) == f"{shown}: {NON_FINITE}"


def test_non_finite_literals_in_files_name_file_and_key(tmp_path):
    (tmp_path / "particle_generation_config.json").write_text('{"charge_values": [-1, NaN, 1]}')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"particle_generation_config.json: charge_values[1] = NaN is invalid: {NON_FINITE}"
    assert "less than or equal" not in str(info.value)


@pytest.mark.parametrize("overrides", [{"learning_rate": float("inf")}, {"mse_weight": float("inf")},
                                       {"epochs": float("nan")}])
def test_non_finite_numbers_from_python_or_1e999_are_refused(overrides, tmp_path):
    with pytest.raises(ConfigError, match="Input should be a finite number"):
        Config.from_flat(overrides)
    (tmp_path / "model_config.json").write_text('{"relobralo_temperature": 1e999}')
    with pytest.raises(ConfigError, match=r"relobralo_temperature = Infinity is invalid: Input should be a finite"):
        load_config(tmp_path)


def test_inf_as_plain_string_in_set_is_refused():
    with pytest.raises(ConfigError, match=r"--set: mse_weight = \"inf\" is invalid: Input should be a finite number"):
        load_config(overrides=parse_overrides(["mse_weight=inf"]))


def test_duplicate_keys_name_key_and_file(tmp_path):
    (tmp_path / "training_config.json").write_text('{"epochs": 5, "batch_size": 8, "epochs": 10}')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == ("training_config.json: key 'epochs' appears more than once in one JSON object; "
                               "keep one")
    space = tmp_path / "space.json"
    space.write_text('{"activation": ["relu"], "activation": ["tanh"]}')
    with pytest.raises(ConfigError, match=r"--space .*space.json: key 'activation' appears more than once"):
        load_search_space(space)
    with pytest.raises(ConfigError, match=r"--set james_stein_noise_variance: key 'a' appears more than once"):
        parse_override('james_stein_noise_variance={"a": 1, "a": 2}')


# --- seeds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["seed", "random_seed"])
@pytest.mark.parametrize("value", [-1, SEED_MAX + 1, 2**64])
def test_seed_out_of_numpy_range_is_refused(key, value):
    with pytest.raises(ConfigError) as info:
        load_config(overrides={key: value})
    assert (f"--set: {key} = {value} is invalid: a seed must be an integer from 0 to 2**32 - 1 = 4294967295 "
            "(what NumPy and scikit-learn accept), or null") in str(info.value)


@pytest.mark.parametrize("value", [0, SEED_MAX, None])
def test_seed_range_bounds_are_accepted(value):
    cfg = Config.from_flat({"seed": value, "random_seed": value})
    assert cfg.model.seed == value and cfg.generation.random_seed == value


# --- not a regular file ------------------------------------------------------------------------


@pytest.fixture(params=["named pipe", "directory"])
def special(request, tmp_path):
    """A path that is a named pipe or a directory, and the words the error must use."""
    path = tmp_path / "special.json"
    if request.param == "named pipe":
        os.mkfifo(path)
        return path, "is a named pipe, not a regular file"
    path.mkdir()
    return path, "is a directory, not a regular file"


def test_special_file_as_config_file(special):
    path, words = special
    with pytest.raises(ConfigError, match=f"{path}: {words}"):
        finishes(lambda: load_config(config_file=path))


def test_special_file_as_space_file(special):
    path, words = special
    with pytest.raises(ConfigError, match=f"--space {path}: {words}"):
        finishes(lambda: load_search_space(path))


def test_special_file_in_config_dir_and_as_preset(tmp_path):
    cfg = tmp_path / "cfg"
    (cfg / "model_presets").mkdir(parents=True)
    os.mkfifo(cfg / "model_presets" / "mine.json")
    with pytest.raises(ConfigError, match=r"preset 'mine' \(.*mine.json\): is a named pipe, not a regular file"):
        finishes(lambda: load_config(cfg, preset="mine"))
    (cfg / "training_config.json").mkdir()
    with pytest.raises(ConfigError, match=r"^training_config.json: is a directory, not a regular file"):
        finishes(lambda: load_config(cfg))


def test_device_as_config_file():
    with pytest.raises(ConfigError, match=r"^/dev/zero: is a character device, not a regular file"):
        finishes(lambda: read_json_object(Path("/dev/zero")))


# --- command line --------------------------------------------------------------------------------


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NNLAB_CONFIG_DIR", None)
    return _forked.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)


def listing(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, expected", [
    ([str(REPO / "main.py"), "--conf", "x.json"], "nnlab: error: unrecognized arguments: --conf x.json"),
    ([str(REPO / "hpo_agent.py"), "--max-tr", "3"], "nnlab: error: unrecognized arguments: --max-tr 3"),
    (["-m", "nnlab.cli", "analyze", "--sample", "3"], "error: unrecognized arguments: --sample 3"),
    (["-m", "nnlab.cli", "config", "show", "--pre", "baseline"], "error: unrecognized arguments: --pre baseline"),
])
def test_abbreviated_options_are_errors(argv, expected, tmp_path):
    (tmp_path / "x.json").write_text('{"epochs": 1}')
    before = listing(tmp_path)
    proc = run(*argv, cwd=tmp_path)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert listing(tmp_path) == before


@pytest.mark.parametrize("argv, expected", [
    (["--set", "epochs=NaN"], f"error: --set: epochs = NaN is invalid: {NON_FINITE}"),
    (["--seed", "4294967296"], "argument --seed: expected a seed from 0 to 4294967295 (2**32 - 1), got 4294967296"),
    (["--seed", "-3"], "argument --seed: expected a seed from 0 to 4294967295 (2**32 - 1), got -3"),
    (["--seed", "x"], "argument --seed: expected an integer seed, got 'x'"),
    (["--config", "/dev/zero"], "error: /dev/zero: is a character device, not a regular file"),
])
def test_main_refuses_before_any_work(argv, expected, tmp_path):
    proc = run(str(REPO / "main.py"), *argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert listing(tmp_path) == {}  # no training_output/ either
