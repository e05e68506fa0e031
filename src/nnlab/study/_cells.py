"""The cells of a study and its specification: which configurations are compared, on which seeds."""

from __future__ import annotations

import itertools
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from nnlab.errors import ConfigError

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_SEEDS",
    "KINDS",
    "MAX_SEEDS",
    "MAX_UNITS",
    "POLICIES",
    "PRECISION_KEYS",
    "ROUNDINGS",
    "SCHEDULES",
    "Cell",
    "StudySpec",
    "compare_cells",
    "parse_variant",
    "precision_cells",
]

# The exact two-sided paired Wilcoxon signed-rank test of n pairs cannot give p
# below 2 / 2**n: 0.0625 for n = 5, 0.03125 for n = 6. Six seeds is the
# smallest study in which a cell can differ significantly from the reference at 0.05.
DEFAULT_SEEDS = 6
# The size of a study: each unit is a training run, a trial in the storage and a row of the runs table
# (rewritten after every run), so a study is bounded before anything is allocated or written.
MAX_SEEDS = 1000
MAX_UNITS = 10_000
DEFAULT_BITS = (24, 12, 8, 6, 4, 3, 2)
PRECISION_KEYS = ("schedule", "rounding", "bits", "policy")
ROUNDINGS = ("truncate", "nearest", "stochastic")
SCHEDULES = ("epoch", "step")
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
FULL_BITS = 24  # a float32 significand: rounding to 24 bits changes nothing
REFERENCE_ROUNDING = "none"
# The options of `nnlab study precision` that set a key of every cell.
PRECISION_OPTIONS = {"max_binary_digits": "--bits", "binary_rounding": "--rounding",
                     "constraint_schedule": "--schedule", "precision_policy": "--policy"}
# Every precision cell switches these off, so its cells differ only in the rounding.
OTHER_CONSTRAINTS_OFF = {
    "enable_weight_oscillation_dampener": False,
    "use_adaptive_oscillation_dampener": False,
    "enable_binary_change_max": False,
    "enable_james_stein": False,
}
# Variant and study names end up in file names, CSV cells and labels.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
SEED_KEY = "seed"
# The kinds of study, each with its cell key columns (the summary's statistics know these two).
KINDS = {"precision": PRECISION_KEYS, "compare": ("variant",)}


@dataclass(frozen=True)
class Cell:
    """One configuration of a study: its key (the columns that identify it) and its config overrides.

    Args:
        key: column name -> value, e.g. ``{"rounding": "nearest", "bits": 4, ...}``
            or ``{"variant": "james_stein"}``.
        overrides: configuration keys applied on top of the study's base
            configuration for every run of this cell.

    Example:
        >>> Cell({"variant": "fast"}, {"learning_rate": 0.01}).label
        'variant=fast'
    """

    key: Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``k=v`` for every key column, space separated."""
        return " ".join(f"{k}={v}" for k, v in self.key.items())

    @property
    def id(self) -> str:
        """A stable text identity of the key (how a run is matched to its cell in the storage)."""
        return json.dumps(dict(self.key), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {"key": dict(self.key), "overrides": dict(self.overrides)}


def _allowed(field_name: str) -> tuple[str, ...]:
    """The values the configuration accepts for a Literal key (kept in step with config)."""
    import typing

    from nnlab.config import ModelConfig

    return tuple(typing.get_args(ModelConfig.model_fields[field_name].annotation))


def _names(option: str, values: str | Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    items = values.split(",") if isinstance(values, str) else list(values)
    items = [str(v).strip() for v in items]
    if not any(items):
        raise ConfigError(f"{option}: give at least one {what} ({', '.join(allowed)})")
    for item in items:
        if item not in allowed:
            raise ConfigError(f"{option}: unknown {what} '{_short(item)}'; choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def _bits(values: str | Sequence[int]) -> tuple[int, ...]:
    items = values.split(",") if isinstance(values, str) else list(values)
    if not items or (isinstance(values, str) and not values.strip()):
        raise ConfigError("--bits: give at least one number of significant bits from 1 to 24, e.g. 24,12,8,4")
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                item = int(item.strip())
            except ValueError:
                raise ConfigError(f"--bits: '{_short(item.strip())}' is not an integer; give comma-separated "
                                  "significant bits from 1 to 24, e.g. 24,12,8,4") from None
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= FULL_BITS:
            raise ConfigError(f"--bits: {_short(str(item))} is outside 1..24 (the significant bits of a "
                              "float32, implicit leading 1 included)")
        out.append(item)
    return tuple(dict.fromkeys(out))


def _short(text: str) -> str:
    from nnlab.config import shorten

    return shorten(text)


def precision_cells(*, bits: str | Sequence[int] = DEFAULT_BITS,
                    rounding: str | Sequence[str] = ROUNDINGS, schedule: str = "step",
                    policies: str | Sequence[str] = ("float32",)) -> list[Cell]:
    """The cells of a precision study: a reference per policy, then rounding × bits × policy.

    Each policy gets a reference cell (rounding ``none``, 24 bits: no binary
    constraint, plain training in that policy). Every other cell turns on only
    ``BinaryPrecisionMax(bits, rounding)`` on the given schedule; the dampeners,
    the change limit and James-Stein are off in all cells, so cells differ only
    in the rounding. 24 bits with any rounding is the identity -- the
    reference -- so 24 in ``bits`` adds no cell of its own.

    Args:
        bits: significant bits (1..24), a list or comma-separated text.
        rounding: ``truncate``, ``nearest``, ``stochastic`` (list or text).
        schedule: ``step`` (round after every optimizer step) or ``epoch``
            (every ``constraint_interval`` epochs).
        policies: ``float32``, ``mixed_bfloat16``, ``mixed_float16``.

    Raises:
        ConfigError: naming the option, the bad value and what is allowed.

    Example:
        >>> for cell in precision_cells(bits=[24, 4], rounding="truncate,stochastic"):
        ...     print(cell.label)
        schedule=step rounding=none bits=24 policy=float32
        schedule=step rounding=truncate bits=4 policy=float32
        schedule=step rounding=stochastic bits=4 policy=float32
    """
    bit_list = _bits(bits)
    roundings = _names("--rounding", rounding, _allowed("binary_rounding"), "rounding")
    schedules = _allowed("constraint_schedule")
    if schedule not in schedules:
        raise ConfigError(f"--schedule: unknown schedule '{_short(str(schedule))}'; choose from "
                          f"{', '.join(schedules)}")
    policy_list = _names("--policy", policies, _allowed("precision_policy"), "policy")
    cells = []
    for policy in policy_list:
        common = {**OTHER_CONSTRAINTS_OFF, "constraint_schedule": schedule, "precision_policy": policy}
        cells.append(Cell({"schedule": schedule, "rounding": REFERENCE_ROUNDING, "bits": FULL_BITS, "policy": policy},
                          {**common, "enable_binary_precision_max": False, "max_binary_digits": FULL_BITS}))
        for mode in roundings:
            for b in bit_list:
                if b == FULL_BITS:
                    continue
                cells.append(Cell({"schedule": schedule, "rounding": mode, "bits": b, "policy": policy},
                                  {**common, "enable_binary_precision_max": True, "max_binary_digits": b,
                                   "binary_rounding": mode}))
    return cells


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=KEY=VALUE KEY=VALUE`` (``--variant``) -> ``(NAME, {KEY: VALUE})``.

    The items are split like a shell would (quote a value holding spaces:
    ``'hidden_layers=[16, 8]'``); each VALUE is JSON or else a plain string,
    as for ``--set``. ``NAME=`` alone is the base configuration unchanged.

    Raises:
        ConfigError: a missing or bad name, or an item that is not KEY=VALUE.

    Example:
        >>> parse_variant("fast=learning_rate=0.01 hidden_layers=[16,8]")
        ('fast', {'learning_rate': 0.01, 'hidden_layers': [16, 8]})
    """
    from nnlab.config import parse_override

    name, sep, rest = str(text).partition("=")
    name = name.strip()
    if not sep:
        raise ConfigError(f"--variant expects NAME=\"KEY=VALUE ...\" (e.g. js=\"enable_james_stein=true\"), "
                          f"got '{_short(str(text))}'")
    _check_variant_name(name, text)
    try:
        items = shlex.split(rest)
    except ValueError as exc:  # an unclosed quote
        raise ConfigError(f"--variant {name}: cannot split '{_short(rest)}' into KEY=VALUE items ({exc})") from None
    overrides: dict[str, Any] = {}
    for item in items:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--variant {name}: expected KEY=VALUE items separated by spaces, got "
                              f"'{_short(item)}'")
        try:
            key, value = parse_override(item)
        except ConfigError as exc:  # parse_override speaks of --set: name the variant instead
            raise ConfigError(f"--variant {name}: {str(exc).removeprefix('--set').lstrip(': ')}") from None
        if key in overrides:
            raise ConfigError(f"--variant {name}: key '{_short(key)}' is given twice")
        overrides[key] = value
    return name, overrides


def _check_variant_name(name: str, text: Any = None) -> None:
    if not name:
        raise ConfigError(f"--variant: empty variant name in '{_short(str(text))}'; write NAME=\"KEY=VALUE ...\"")
    if not _NAME.match(name):
        raise ConfigError(f"--variant: bad variant name '{_short(name)}'; use letters, digits and _ . + - "
                          "(at most 64 characters, starting with a letter or digit)")


def compare_cells(variants: Mapping[str, Mapping[str, Any] | str] | Sequence[Any]) -> list[Cell]:
    """One cell per named variant (key column ``variant``); the first is the study's reference.

    Args:
        variants: ``{name: overrides}`` (overrides a dict of configuration keys,
            or ``"KEY=VALUE KEY=VALUE"`` text), a sequence of ``(name, overrides)``
            pairs, or ``--variant`` texts ``"NAME=KEY=VALUE ..."``.

    Raises:
        ConfigError: fewer than two variants, an empty or duplicate name, a
            malformed item, an unknown configuration key (with the closest
            key), or a variant that sets ``seed`` (the study's seeds set it).

    Example:
        >>> [c.key for c in compare_cells({"plain": {}, "js": {"enable_james_stein": True}})]
        [{'variant': 'plain'}, {'variant': 'js'}]
    """
    from nnlab.config import check_known_keys

    if isinstance(variants, Mapping):
        pairs = list(variants.items())
    elif isinstance(variants, str):
        raise ConfigError("variants: expected several variants, got one text; pass a list or a dict")
    else:
        pairs = [parse_variant(v) if isinstance(v, str) else tuple(v) for v in variants]
    cells, seen = [], set()
    for name, overrides in pairs:
        name = str(name).strip()
        if isinstance(overrides, str):
            name, overrides = parse_variant(f"{name}={overrides}")
        _check_variant_name(name, name)
        if name in seen:
            raise ConfigError(f"--variant: variant name '{name}' is given twice; each variant needs its own name")
        seen.add(name)
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"--variant {name}: overrides must be a dict of configuration keys, "
                              f"got {type(overrides).__name__}")
        check_known_keys(overrides, lambda _key, n=name: f"--variant {n}")
        if SEED_KEY in overrides:
            raise ConfigError(f"--variant {name}: 'seed' is set by the study for each of its seeds (--seeds); "
                              "remove it from the variant")
        cells.append(Cell({"variant": name}, dict(overrides)))
    if len(cells) < 2:
        raise ConfigError(f"--variant: a comparison needs at least two variants, got {len(cells)}; "
                          "e.g. --variant plain= --variant js=\"enable_james_stein=true\"")
    return cells


def _seeds(value: int | Sequence[int]) -> tuple[int, ...]:
    from nnlab.config import SEED_MAX

    if isinstance(value, bool):
        raise ConfigError(f"--seeds must be an integer >= 1 (how many seeds, 0, 1, ... N-1), got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"--seeds must be an integer >= 1 (how many seeds: 0, 1, ... N-1; "
                              f"{DEFAULT_SEEDS} or more for a significance test at 0.05), got {value}")
        if value > MAX_SEEDS:
            raise ConfigError(f"--seeds {value}: a study runs at most {MAX_SEEDS} seeds (every cell trains once "
                              "per seed); give fewer")
        return tuple(range(value))
    seeds = list(itertools.islice(iter(value), MAX_SEEDS + 1))  # never more than the limit in memory
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"seeds: more than {MAX_SEEDS} seeds given; a study runs at most {MAX_SEEDS}")
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= SEED_MAX:
            raise ConfigError(f"seeds: {s!r} is not a seed (an integer from 0 to 2**32 - 1 = {SEED_MAX})")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {seeds} repeats a seed; each seed is one paired replicate")
    return tuple(seeds)


@dataclass(frozen=True)
class StudySpec:
    """What a study compares: its cells, the reference cell, the seeds and the base configuration.

    Every (cell, seed) pair is one run. Runs that share a seed share the data
    split and the initial weights (config ``seed`` = the seed), so the cells
    are compared pairwise, seed by seed.

    Args:
        kind: ``precision`` or ``compare``: the file names (``<kind>_runs.csv``)
            and the statistics of the summary.
        cells: the :class:`Cell` s, keyed by the kind's columns (:data:`KINDS`).
        reference: the key of the cell the others are compared with
            (default: the first cell).
        seeds: how many seeds (``0 .. N-1``), or the seeds themselves.
        base: the base configuration: a :class:`~nnlab.config.Config`, or a
            dict of keys applied on top of the configuration files and ``preset``.
        preset: a preset applied under a dict ``base``.
        config_dir: the ``ml_config`` directory.

    Example:
        >>> spec = StudySpec.compare({"plain": {}, "js": {"enable_james_stein": True}}, seeds=6,
        ...                          base={"epochs": 20})
        >>> spec.keys, len(spec.units)
        (('variant',), 12)
    """

    kind: str
    cells: tuple[Cell, ...]
    _: KW_ONLY
    reference: Mapping[str, Any] | None = None
    seeds: int | Sequence[int] = DEFAULT_SEEDS
    base: Any = None
    preset: str | None = None
    config_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"study kind must be one of {', '.join(KINDS)}, got {_short(repr(self.kind))}")
        cells = tuple(self.cells)
        if not cells or not all(isinstance(c, Cell) for c in cells):
            raise ConfigError("a study needs at least one Cell")
        keys = KINDS[self.kind]
        for cell in cells:
            if tuple(cell.key) != keys:
                raise ConfigError(f"cell '{cell.label}' has key columns {list(cell.key)}; the cells of a "
                                  f"{self.kind} study have {list(keys)}")
        ids = [c.id for c in cells]
        for cell, cid in zip(cells, ids):
            if ids.count(cid) > 1:
                raise ConfigError(f"cell '{cell.label}' appears twice")
        reference = dict(cells[0].key) if self.reference is None else dict(self.reference)
        if json.dumps(reference, sort_keys=True, separators=(",", ":")) not in ids:
            raise ConfigError(f"reference {reference} is not one of the cells")
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "reference", reference)
        object.__setattr__(self, "seeds", _seeds(self.seeds))
        units = len(cells) * len(self.seeds)
        if units > MAX_UNITS:
            raise ConfigError(f"--seeds {len(self.seeds)} × {len(cells)} cells = {units} runs; a study runs at most "
                              f"{MAX_UNITS} (cells × seeds): give fewer seeds or cells")

    def source(self, cell: Cell) -> str:
        """How error messages name a cell: ``--variant NAME`` or ``cell k=v ...``."""
        return f"--variant {cell.key['variant']}" if self.kind == "compare" else f"cell {cell.label}"

    @property
    def keys(self) -> tuple[str, ...]:
        """The key columns of the cells."""
        return tuple(self.cells[0].key)

    @property
    def units(self) -> list[tuple[Cell, int]]:
        """Every (cell, seed) run, seed by seed: the first seed of every cell comes first."""
        return [(cell, seed) for seed in self.seeds for cell in self.cells]

    @classmethod
    def precision(cls, *, bits: str | Sequence[int] = DEFAULT_BITS, rounding: str | Sequence[str] = ROUNDINGS,
                  schedule: str = "step", policies: str | Sequence[str] = ("float32",),
                  seeds: int | Sequence[int] = DEFAULT_SEEDS, base: Any = None, preset: str | None = None,
                  config_dir: str | None = None) -> StudySpec:
        """A precision study (see :func:`precision_cells`); the reference is (none, 24 bits, float32)
        -- or the first policy's reference when float32 is not studied."""
        cells = precision_cells(bits=bits, rounding=rounding, schedule=schedule, policies=policies)
        policy = "float32" if any(c.key["policy"] == "float32" for c in cells) else cells[0].key["policy"]
        reference = {"schedule": schedule, "rounding": REFERENCE_ROUNDING, "bits": FULL_BITS, "policy": policy}
        return cls("precision", tuple(cells), reference=reference, seeds=seeds, base=base, preset=preset,
                   config_dir=config_dir)

    @classmethod
    def compare(cls, variants: Mapping[str, Mapping[str, Any] | str] | Sequence[Any], *,
                seeds: int | Sequence[int] = DEFAULT_SEEDS, base: Any = None, preset: str | None = None,
                config_dir: str | None = None) -> StudySpec:
        """An A/B(/C...) study of named variants (see :func:`compare_cells`); the first is the reference."""
        return cls("compare", tuple(compare_cells(variants)), seeds=seeds, base=base, preset=preset,
                   config_dir=config_dir)
