"""Particle CSV files: reading, atomic writing and the ``.meta.json`` provenance sidecar."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from nnlab._files import atomic_write
from nnlab.errors import DataValidationError

DATA_FORMAT_VERSION = 1
GENERATOR_NAME = "nnlab.generate_particle_data"


def load_particle_data(path: str | os.PathLike) -> pd.DataFrame:
    """Read a particle CSV; raise ``DataValidationError`` naming the file if it cannot.

    Does not check the physics: pass the result to ``validate_particle_data``.

    Args:
        path: the CSV file.

    Returns:
        The DataFrame as read by ``pandas.read_csv``.

    Example:
        >>> df = load_particle_data("data/particles.csv")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"particle data file not found: {p}")
    if p.is_dir():
        raise DataValidationError(f"particle data path {p} is a directory, expected a CSV file")
    try:
        if p.stat().st_size == 0:
            raise DataValidationError(f"particle data file {p} is empty (0 bytes)")
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"particle data file {p} is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"particle data file {p} is not valid CSV: {exc}") from exc
    except OSError as exc:
        raise DataValidationError(f"cannot read particle data file {p}: {exc}") from exc
    if len(df) == 0:
        raise DataValidationError(f"particle data file {p} has a header but no data rows")
    return df


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def save_particle_data(df: pd.DataFrame, path: str | os.PathLike, *,
                       metadata: dict[str, Any] | None = None) -> Path:
    """Write ``df`` to CSV atomically, with a ``<path>.meta.json`` sidecar.

    Args:
        df: the particle data.
        path: the CSV file; parent directories are created.
        metadata: JSON-serialisable provenance (generation config, num_particles, seed).
            ``format_version``, ``num_rows`` and ``csv_bytes`` are added.

    Returns:
        The CSV path.

    Example:
        >>> save_particle_data(df, "data/particles.csv", metadata={"seed": 1})  # doctest: +SKIP
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    json.dumps(meta)  # fail on unserialisable metadata before anything is written
    atomic_write(p, lambda fh: df.to_csv(fh, index=False))
    meta.update(format_version=DATA_FORMAT_VERSION, num_rows=len(df), csv_bytes=p.stat().st_size)
    atomic_write(_sidecar_path(p), lambda fh: json.dump(meta, fh, indent=2))
    return p


def _stale_reason(meta: dict[str, Any], expected: dict[str, Any], csv: Path) -> str | None:
    """Why the cached CSV does not hold the requested data, or None when it does."""
    if meta.get("format_version") != DATA_FORMAT_VERSION:
        return f"data format version {meta.get('format_version')} != {DATA_FORMAT_VERSION}"
    for key in ("num_particles", "seed"):
        if meta.get(key) != expected[key]:
            return f"it holds {key}={meta.get(key)!r}, {expected[key]!r} requested"
    # num_particles_default and random_seed do not shape the data once the effective
    # num_particles and seed (compared above) are known.
    ignored = {"num_particles_default", "random_seed"}
    old, new = meta.get("generation_config") or {}, expected["generation_config"]
    diff = sorted(k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k))
    if diff:
        return "generation config differs in " + ", ".join(
            f"{k} (file {old.get(k)!r}, requested {new.get(k)!r})" for k in diff)
    if meta.get("csv_bytes") != csv.stat().st_size:
        return "the CSV was modified after its metadata was written"
    return None
