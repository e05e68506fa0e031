"""Configuration sources: the ``ml_config`` directory, strict JSON or TOML files, presets, ``--set``."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import tomllib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nnlab._files import special_file_kind
from nnlab.config._models import LEGACY_KEYS, NONE_STRING_KEYS, Config, check_known_keys, shorten
from nnlab.errors import ConfigError

MODEL_CONFIG_FILE = "model_config.json"
TRAINING_CONFIG_FILE = "training_config.json"
GENERATION_CONFIG_FILE = "particle_generation_config.json"
PRESETS_DIR = "model_presets"

# Limits on what a configuration source may hold. Real configurations are a few
# kilobytes and two or three levels deep; anything far beyond is a mistake (or a
# hostile file) that would otherwise exhaust memory or the recursion limit.
MAX_CONFIG_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
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
    for candidate in (Path.cwd() / "ml_config", Path(__file__).resolve().parents[3] / "ml_config"):
        if candidate.is_dir():
            return candidate
    return None


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


def read_config_file(path: str | os.PathLike, label: str | None = None, *,
                     max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """A configuration file's keys: TOML when its name ends in ``.toml``, else strict JSON.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "best.toml"
        >>> _ = path.write_text('epochs = 3\\nhidden_layers = [16, 8]\\n')
        >>> read_config_file(path)
        {'epochs': 3, 'hidden_layers': [16, 8]}
    """
    if Path(path).suffix.lower() == ".toml":
        return read_toml_object(path, label, max_bytes=max_bytes)
    return read_json_object(path, label, max_bytes=max_bytes)


# tomllib's message before Python 3.14 (no lineno/colno attributes): "what (at line L, column C)".
_TOML_POSITION = re.compile(r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$",
                            re.S)


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    """"at line L, column C: what" from tomllib's message (Python 3.11-3.13 put the position in the text)."""
    line, col, msg = getattr(exc, "lineno", None), getattr(exc, "colno", None), getattr(exc, "msg", None)
    if line is None:
        match = _TOML_POSITION.match(str(exc))
        if match is None:
            return f": {exc}"
        msg, line, col = match["msg"], match["line"], match["col"]
    if line is None:
        return f" at the end of the file: {msg}"
    return f" at line {line}, column {col}: {msg}"


def read_toml_object(path: str | os.PathLike, label: str | None = None, *,
                     max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """Read a TOML configuration file (``tomllib``); errors name the file and, for syntax, the position.

    The keys are nnlab's flat configuration keys at the top level (no
    ``[tables]``); inf/nan and dates are refused like JSON's NaN/Infinity.
    """
    label = label or str(path)
    text = read_config_text(path, label, max_bytes=max_bytes)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML{_toml_error(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{label}: TOML nested more than {MAX_JSON_DEPTH} levels deep (the limit for a "
                          "configuration)") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(f"{label}: [{shorten(key)}] is a TOML table, but configuration keys are flat: write "
                              "them at the top level (key = value), without [table] headers")
    _check_toml_values(data, label)
    return data


def _check_toml_values(data: dict[str, Any], label: str) -> None:
    """Refuse what JSON cannot say either: inf/nan, dates and times, too deep nesting."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, (key,)) for key, value in reversed(list(data.items()))]
    while stack:
        value, path = stack.pop()
        name = str(path[0]) + "".join(f"[{part}]" for part in path[1:])
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{label}: {name} = {value} is invalid: TOML inf/nan is not allowed; configuration "
                              "values must be finite numbers")
        if isinstance(value, (datetime.date, datetime.time)):
            raise ConfigError(f"{label}: {name} = {value.isoformat()} is invalid: a TOML date or time is not a "
                              "configuration value")
        if isinstance(value, (dict, list)):
            if len(path) > MAX_JSON_DEPTH:
                raise ConfigError(f"{label}: TOML nested more than {MAX_JSON_DEPTH} levels deep (the limit for a "
                                  "configuration)")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, path + (part,)) for part, child in reversed(list(items)))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("-inf" if value < 0 else "inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(values: Mapping[str, Any]) -> str:
    """Flat configuration keys as TOML text that :func:`read_toml_object` reads back.

    TOML has no null: a key whose value is None is written as a comment (leaving
    it out of a file keeps its default, which is None for these keys).

    Example:
        >>> print(dump_toml({"epochs": 3, "activation": "relu", "data_targets": None}), end="")
        epochs = 3
        activation = "relu"
        # data_targets: not set (TOML has no null)
    """
    lines = []
    for key, value in values.items():
        bare = re.fullmatch(r"[A-Za-z0-9_-]+", key) is not None
        name = key if bare else json.dumps(key)
        lines.append(f"# {key}: not set (TOML has no null)" if value is None else f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def list_presets(config_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the presets in ``<config_dir>/model_presets/``."""
    base = find_config_dir(config_dir)
    if base is None or not (base / PRESETS_DIR).is_dir():
        return []
    return sorted({p.stem for pattern in ("*.json", "*.toml") for p in (base / PRESETS_DIR).glob(pattern)})


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
    if not path.exists():  # a preset of its own in TOML
        path = path.with_suffix(".toml")
    return read_config_file(path, f"preset '{name}' ({path})")


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
    if lowered == "none" and key in NONE_STRING_KEYS:
        return key, "none"  # an allowed value of this key, not null
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
        config_file: a JSON or TOML (``.toml``) file of keys (e.g. an HPO ``best_config.json``),
            applied after the preset and before ``overrides``.
        override_source: how overrides are named in error messages.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: naming the file/preset/override, the key, the value and
            what is allowed.

    Warns:
        UserWarning: once, naming the keys of the original project that nnlab does
            not use (:data:`LEGACY_KEYS`) and the files that hold them; they are
            ignored in files, presets and ``config_file``, an error in ``overrides``.

    Example:
        >>> load_config(overrides={"max_binary_digits": 16}).model.max_binary_digits
        16
    """
    base = find_config_dir(config_dir)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    legacy: dict[str, list[str]] = {}  # label -> the original project's keys it held

    def apply(layer: Mapping[str, Any], label: str, *, from_file: bool = True) -> None:
        if from_file:  # the original project's files load as they are
            dropped = [key for key in layer if key in LEGACY_KEYS]
            if dropped:
                legacy[label] = dropped
                layer = {key: value for key, value in layer.items() if key not in LEGACY_KEYS}
        check_known_keys(layer, lambda _key: label)
        values.update(layer)
        sources.update({key: label for key in layer})

    if base is not None:
        for filename in (MODEL_CONFIG_FILE, TRAINING_CONFIG_FILE, GENERATION_CONFIG_FILE):
            path = base / filename
            if not path.exists() and path.with_suffix(".toml").exists():
                path = path.with_suffix(".toml")
                filename = path.name
            if path.exists():
                apply(read_config_file(path, filename), filename)
    if preset is not None:
        apply(load_preset(preset, base), f"preset '{preset}'")
    if config_file is not None:
        path = Path(config_file)
        apply(read_config_file(path, str(path)), str(path))
    if overrides:
        apply(dict(overrides), override_source, from_file=False)
    if legacy:
        where = "; ".join(f"{label}: {', '.join(keys)}" for label, keys in legacy.items())
        reasons = "; ".join(f"{key}: {LEGACY_KEYS[key]}"
                            for key in dict.fromkeys(k for keys in legacy.values() for k in keys))
        warnings.warn(f"ignoring key(s) of the original project that nnlab does not use: {where} ({reasons})",
                      UserWarning, stacklevel=2)
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
