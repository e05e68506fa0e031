"""Particle CSV files: reading, atomic writing and the ``.meta.json`` provenance sidecar.

Paths are checked with ``os.stat`` before anything is opened: opening a named pipe
blocks until a writer appears and ``/dev/zero`` never ends, so a user who passes
one must get an error, not a hang.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnlab._files import atomic_write, probe_writable, special_file_kind
from nnlab.errors import ConfigError, DataValidationError

if TYPE_CHECKING:
    import pandas as pd

# pandas and the validation load when a file is read: checking a path (`--data nope.csv`) stays cheap.

DATA_FORMAT_VERSION = 1
GENERATOR_NAME = "nnlab.generate_particle_data"


def check_data_file(path: str | os.PathLike, *, option: str | None = None, hint: str = "",
                    what: str = "particle data file") -> Path:
    """Check that ``path`` is an existing regular file, without opening it.

    Args:
        path: the particle CSV to read.
        option: the command-line option that named it (``"--data"``), put in front of
            the message.
        hint: appended to the "not found" message (e.g. how to create the file).
        what: what the file is, for the messages (``"data file"`` for a user's table).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        DataValidationError: the file is missing, or is a directory, named pipe, device
            or socket (named as such), or cannot be looked up.

    Example:
        >>> check_data_file("/dev/zero")  # doctest: +SKIP
        DataValidationError: particle data file /dev/zero is a character device, not a regular file
    """
    p = Path(path)
    prefix = f"{option}: " if option else ""
    try:
        mode = os.stat(p).st_mode  # follows symlinks: a link to a pipe is a pipe
    except (FileNotFoundError, NotADirectoryError):
        raise DataValidationError(f"{prefix}{what} not found: {p}{hint}") from None
    except OSError as exc:
        raise DataValidationError(f"{prefix}cannot read {what} {p}: {exc.strerror}") from None
    kind = special_file_kind(mode)
    if kind is not None:
        raise DataValidationError(f"{prefix}{what} {p} is {kind}, not a regular file")
    return p


def check_output_file(path: str | os.PathLike, *, force: bool = False, option: str | None = None,
                      sidecar: bool = True, example: str = "particles.csv", advice: str | None = None) -> Path:
    """Refuse, before any work is done, a particle CSV destination that cannot be written.

    The CSV and its ``.meta.json`` sidecar are both checked: an existing one is only
    replaced with ``force``; a directory, named pipe or device is never replaced. Missing
    parent directories are allowed (``save_particle_data`` creates them) when the nearest
    existing one is a directory in which files can be created; that is probed with a
    temporary file, removed at once, so nothing is left behind.

    Args:
        path: the CSV file to write.
        force: allow replacing an existing CSV and sidecar.
        option: the command-line option that named it (``"--out"``), put in front of
            the message and of the ``--force`` advice.
        sidecar: also check the ``.meta.json`` sidecar (a particle CSV's); False for other CSVs.
        example: the file name suggested when ``path`` names a directory.
        advice: how to replace an existing file (default: ``pass --force`` / ``use force=True``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ConfigError: naming the path and why it cannot be written.

    Example:
        >>> check_output_file("notes.txt/particles.csv")  # doctest: +SKIP
        ConfigError: cannot write 'notes.txt/particles.csv': 'notes.txt' is not a directory
    """
    text = os.fspath(path)
    p = Path(path)
    prefix = f"{option}: " if option else ""
    if not text or text.endswith(("/", os.sep)):
        raise ConfigError(f"{prefix}'{text}' names a directory; give a file name (e.g. {text or './'}"
                          f"{example})")
    targets = [(p, "")] + ([(sidecar_path(p), f" (the metadata sidecar of '{p}')")] if sidecar else [])
    for target, role in targets:
        try:
            mode = os.stat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # the parent is checked below
        except OSError as exc:
            raise ConfigError(f"{prefix}cannot write '{target}': {exc.strerror}") from None
        kind = special_file_kind(mode)
        if kind is not None:
            raise ConfigError(f"{prefix}'{target}'{role} is {kind}, not a regular file; "
                              "give the name of a file to write")
        if not force:
            advice = advice or ("pass --force to replace it" if option else "use force=True to replace it")
            raise ConfigError(f"{prefix}'{target}'{role} already exists; choose another file or {advice}")
    try:
        probe_writable(p.parent)
    except NotADirectoryError as exc:
        raise ConfigError(f"{prefix}cannot write '{p}': '{exc.filename}' is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{prefix}cannot write '{p}': cannot create files in '{exc.filename}' "
                          f"({exc.strerror})") from None
    return p


def read_header(path: Path) -> list[str] | None:
    """The first non-blank record of a CSV as the csv module splits it (None if unreadable).

    pandas renames a repeated header name (``mass`` -> ``mass.1``), so duplicates can
    only be seen in the raw header.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:  # BOM: as pandas
            for record in csv.reader(fh):
                if record:
                    return record
    except (OSError, csv.Error):  # pandas reports an unreadable file in its own terms
        return None
    return None


def load_particle_data(path: str | os.PathLike) -> pd.DataFrame:
    """Read a particle CSV; raise ``DataValidationError`` naming the file if it cannot.

    Only regular files are opened (a named pipe or device is refused by name, see
    ``check_data_file``). The header must be comma-separated with distinct names.
    A CSV of the original lab (see ``original_lab_signs``) is refused with the
    command that converts it. Does not check the physics: pass the result to
    ``validate_particle_data``.

    Args:
        path: the CSV file.

    Returns:
        The DataFrame as read by ``pandas.read_csv``.

    Raises:
        DataValidationError: the file is missing, not a regular file, empty, not CSV,
            ';'- or tab-separated, has a repeated column name, or is the original lab's.

    Example:
        >>> df = load_particle_data("data/particles.csv")  # doctest: +SKIP
    """
    from nnlab.data._validate import original_lab_message, original_lab_signs

    df = read_particle_csv(path)
    if signs := original_lab_signs(df):
        message = original_lab_message(signs, path)
        raise DataValidationError(message, [message])
    return df


def read_particle_csv(path: str | os.PathLike, **read_csv: Any) -> pd.DataFrame:
    """``load_particle_data`` without the original-lab check; ``read_csv`` goes to pandas."""
    import pandas as pd

    from nnlab.data._validate import separator_hint

    p = check_data_file(path)
    header = None
    try:
        if p.stat().st_size == 0:
            raise DataValidationError(f"particle data file {p} is empty (0 bytes)")
        header = read_header(p)
        if header is not None and len(header) == 1 and (hint := separator_hint(header)):
            raise DataValidationError(f"particle data file {p} {hint}")
        df = pd.read_csv(p, **read_csv)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"particle data file {p} is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"particle data file {p} is not valid CSV: {exc}") from exc
    except OSError as exc:
        raise DataValidationError(f"cannot read particle data file {p}: {exc}") from exc
    # Compare with what pandas read, so that only the record pandas took as the header counts.
    if header is not None and len(header) == len(df.columns):
        repeated = [name for name, count in Counter(header).items() if count > 1 and name.strip()]
        if repeated:
            where = "; ".join(f"'{name}' (columns " + ", ".join(
                str(i + 1) for i, h in enumerate(header) if h == name) + ")" for name in repeated)
            raise DataValidationError(f"particle data file {p}: column name(s) repeated in the header: "
                                      f"{where}; every column name must be unique")
    if len(df) == 0:
        raise DataValidationError(f"particle data file {p} has a header but no data rows")
    return df


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def save_particle_data(df: pd.DataFrame, path: str | os.PathLike, *,
                       metadata: dict[str, Any] | None = None) -> Path:
    """Write ``df`` to CSV atomically, with a ``<path>.meta.json`` sidecar.

    An existing CSV and sidecar are replaced: call ``check_output_file`` first to
    refuse that (and unwritable places) before doing the work that produces ``df``.

    Args:
        df: the particle data.
        path: the CSV file; missing parent directories are created.
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
    try:
        atomic_write(sidecar_path(p), lambda fh: json.dump(meta, fh, indent=2))
    except OSError:
        # A CSV without its sidecar would pass for the user's own data: take it back.
        p.unlink(missing_ok=True)
        raise
    return p


def stale_reason(meta: dict[str, Any], expected: dict[str, Any], csv: Path) -> str | None:
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
