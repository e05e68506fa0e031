"""Whose database is this: an Optuna storage, an MLflow tracking store, empty, or something else.

A database is recognised by its tables, read without changing anything (SQLite
opened read-only, a server's table list), so that a command refuses another
tool's database before creating a single table in it.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from urllib.parse import quote

from nnlab.errors import ConfigError

__all__ = ["DatabaseContents", "database_contents", "database_kind", "describe_kind"]

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# The tables that identify each tool's schema (each has more).
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
MLFLOW_TABLES = frozenset({"experiments", "runs"})
_DESCRIPTIONS = {"optuna": "an Optuna storage", "mlflow": "an MLflow tracking database"}
_SHOWN_TABLES = 5


@dataclass(frozen=True)
class DatabaseContents:
    """The tables of a database, and the schema version rows the two tools keep."""

    tables: frozenset[str]
    alembic_version: str | None = None  # alembic_version.version_num (both Optuna and MLflow keep one)
    optuna_library: str | None = None  # version_info.library_version: the Optuna that created it


def database_kind(contents: DatabaseContents) -> str:
    """``empty``, ``optuna``, ``mlflow`` or ``other``, by the tables that are there."""
    if not contents.tables:
        return "empty"
    if OPTUNA_TABLES <= contents.tables:
        return "optuna"
    if MLFLOW_TABLES <= contents.tables:
        return "mlflow"
    return "other"


def describe_kind(contents: DatabaseContents) -> str:
    """What the database is, for a message: 'an MLflow tracking database', 'a database with other tables (a, b)'."""
    kind = database_kind(contents)
    if kind in _DESCRIPTIONS:
        return _DESCRIPTIONS[kind]
    names = sorted(contents.tables)
    shown = ", ".join(names[:_SHOWN_TABLES]) + (f" and {len(names) - _SHOWN_TABLES} more"
                                                if len(names) > _SHOWN_TABLES else "")
    return f"a database of another application (tables {shown})"


def database_contents(url: str, *, option: str) -> DatabaseContents | None:
    """The tables of the database at ``url``, read without changing it; None when it cannot be reached.

    A SQLite file that does not exist or is empty has no tables. A server that
    cannot be reached (or whose driver is missing) gives None: opening it later
    reports why.

    Raises:
        ConfigError: a SQLite file that is not a SQLite database, naming ``option``.
    """
    path = sqlite_file(url)
    if path is not None:
        return _sqlite_contents(path, option=option)
    if url.split("://", 1)[0].lower().startswith("sqlite"):
        return DatabaseContents(frozenset())  # in memory: new and empty
    return _server_contents(url)


def sqlite_file(url: str) -> str | None:
    """The file of a ``sqlite:///FILE`` URL; None for other URLs and in-memory SQLite."""
    if not url.split("://", 1)[0].lower().startswith("sqlite"):
        return None
    path, _, query = url.split("://", 1)[1].partition("?")
    path = path[1:]
    return None if path in ("", ":memory:") or "mode=memory" in query else path


def _sqlite_contents(path: str, *, option: str) -> DatabaseContents:
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return DatabaseContents(frozenset())  # the other checks say what is wrong with the path
    except OSError:
        return DatabaseContents(frozenset())
    if not head:
        return DatabaseContents(frozenset())
    if head != SQLITE_MAGIC:
        raise ConfigError(f"{option}: '{path}' is not a SQLite database (it does not start with "
                          "'SQLite format 3'); choose another location or move the file")
    try:
        connection = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            tables = frozenset(row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
            return DatabaseContents(tables, *_versions(connection.execute, tables))
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{option}: '{path}' cannot be read as a SQLite database ({exc}); "
                          "choose another location or move the file") from None


def _versions(execute, tables: frozenset[str]) -> tuple[str | None, str | None]:
    """alembic_version.version_num and version_info.library_version, where those tables are."""
    def first(sql: str) -> str | None:
        try:
            row = next(iter(execute(sql)), None)
        except Exception:  # noqa: BLE001 -- a table of another shape: no version to report
            return None
        return None if row is None else str(row[0])

    alembic = first("SELECT version_num FROM alembic_version") if "alembic_version" in tables else None
    library = first("SELECT library_version FROM version_info") if "version_info" in tables else None
    return alembic, library


def _server_contents(url: str) -> DatabaseContents | None:
    try:
        import sqlalchemy
    except ImportError:
        return None
    connect_args = {"connect_timeout": 10} if url.lower().startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError):
        return None
    try:
        with engine.connect() as connection:
            tables = frozenset(sqlalchemy.inspect(connection).get_table_names())

            def execute(sql: str):
                return connection.execute(sqlalchemy.text(sql)).fetchall()

            return DatabaseContents(tables, *_versions(execute, tables))
    except (ImportError, sqlalchemy.exc.SQLAlchemyError):
        return None
    finally:
        engine.dispose()
