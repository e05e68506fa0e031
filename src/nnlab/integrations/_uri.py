"""MLflow tracking URIs: the local default, the ``--mlflow`` option, local stores and the environment.

As ``mlflow.start_run()`` does, a bare ``--mlflow`` takes ``MLFLOW_TRACKING_URI`` from the
environment when it is set (else the output directory's SQLite store), and the default experiment
name gives way to ``MLFLOW_EXPERIMENT_NAME``.

The URI's form is checked by the configuration (:func:`nnlab.config.check_tracking_uri`,
re-exported here). No MLflow import: a URI is refused before training (exit 2)
whether or not the package is installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from nnlab.config import check_tracking_uri
from nnlab.errors import ConfigError

__all__ = ["check_tracking_uri", "check_tracking_target", "check_tracking_database", "default_tracking_uri",
           "mlflow_option", "experiment_name", "artifact_location",
           "MLFLOW_OPTION_HELP", "DEFAULT_DB_NAME", "DEFAULT_EXPERIMENT", "ARTIFACTS_DIR"]

DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_EXPERIMENT = "nnlab"  # config key mlflow_experiment's default
ARTIFACTS_DIR = "mlartifacts"  # beside a local store (and in the output directory for a database server)
_SERVER_DATABASES = ("postgresql", "mysql", "mssql", "oracle")


def experiment_name(configured: str | None) -> str:
    """The MLflow experiment: ``configured``, unless it is the default and ``MLFLOW_EXPERIMENT_NAME`` is set.

    Example:
        >>> experiment_name("physics-sweep")
        'physics-sweep'
    """
    env = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip()
    if env and (not configured or configured == DEFAULT_EXPERIMENT):
        return env
    return configured or DEFAULT_EXPERIMENT


def artifact_location(tracking_uri: str, fallback: str | os.PathLike | None = None) -> str | None:
    """Where an experiment nnlab creates keeps its artifacts (a ``file://`` URI), never the working directory.

    A SQLite store: ``mlartifacts/`` beside the database file. A database server
    (``postgresql://`` ...): ``fallback`` (the output directory's ``mlartifacts/``).
    A tracking server (``http(s)://``, ``databricks``): None, the server's own artifact root.
    """
    store = local_store_dir(tracking_uri)
    if store is not None:
        return (store / ARTIFACTS_DIR).resolve().as_uri()
    if urlsplit(tracking_uri).scheme.lower().split("+", 1)[0] in _SERVER_DATABASES and fallback is not None:
        return Path(fallback).resolve().as_uri()
    return None


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """The store a bare ``--mlflow`` uses: ``sqlite:///<output-dir>/mlflow.db`` (absolute)."""
    return f"sqlite:///{(Path(output_dir) / DEFAULT_DB_NAME).resolve()}"


def local_store_dir(uri: str) -> Path | None:
    """The directory a local store (sqlite file, file: dir) lives in; None for a server."""
    parts = urlsplit(uri)
    base = parts.scheme.lower().split("+", 1)[0]
    if base == "sqlite":
        return Path(uri[len(parts.scheme) + 4:]).parent
    if base == "file":
        return Path(parts.path)
    return None


def check_tracking_target(uri: str, *, option: str = "--mlflow") -> None:
    """Before training: a local store's directory must exist (a server is only tried when the run starts).

    Raises:
        ConfigError: naming ``option``, the directory and what to do.
    """
    directory = local_store_dir(uri)
    if directory is not None:
        parent = directory if urlsplit(uri).scheme.lower().startswith("sqlite") else directory.parent
        if not parent.is_dir():
            raise ConfigError(f"{option}: '{uri}' is in '{parent}', which is not a directory; "
                              "create it first or give another location")
    check_tracking_database(uri, option=option)


def check_tracking_database(uri: str, *, option: str = "--mlflow") -> None:
    """A database URI must be empty, new or an MLflow store: MLflow would add its tables to anything else.

    A server that cannot be reached is not refused here (the run reports it).

    Raises:
        ConfigError: the database is an Optuna storage or another application's, naming ``option``.
    """
    from nnlab._redact import redact_url_password
    from nnlab.integrations._databases import database_contents, database_kind, describe_kind

    if urlsplit(uri).scheme.lower().split("+", 1)[0] not in ("sqlite", "postgresql", "mysql", "mssql", "oracle"):
        return
    contents = database_contents(uri, option=option)
    if contents is None or database_kind(contents) in ("empty", "mlflow"):
        return
    raise ConfigError(f"{option}: '{redact_url_password(uri)}' is {describe_kind(contents)}, not an MLflow "
                      "tracking database; MLflow would add its tables to it. Give a new or empty database, "
                      "or an MLflow one")


MLFLOW_OPTION_HELP = ("log to MLflow: a tracking URI (http://HOST:PORT, sqlite:///FILE, postgresql://...), or "
                      "nothing for $MLFLOW_TRACKING_URI when set, else sqlite:///<output-dir>/mlflow.db "
                      "(config key mlflow_tracking_uri)")


def mlflow_option(value: str, output_dir: str | os.PathLike, *, option: str = "--mlflow") -> str:
    """The tracking URI of an ``--mlflow [URI]`` option; a bare ``--mlflow`` (``""``) is
    ``MLFLOW_TRACKING_URI`` when the environment sets it, else the output directory's store.

    Raises:
        ConfigError: a URI of the wrong form, or a local store in a directory that does not exist.
    """
    if value == "":
        value = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        if not value:
            return default_tracking_uri(output_dir)
        option = f"{option} (from the environment's MLFLOW_TRACKING_URI)"
    try:
        uri = check_tracking_uri(value)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    check_tracking_target(uri, option=option)
    return uri
