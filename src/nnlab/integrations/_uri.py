"""MLflow tracking URIs: their form (checked by the configuration) and the local default.

No MLflow import: a URI is refused before training (exit 2) whether or not the
package is installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from nnlab.errors import ConfigError

__all__ = ["check_tracking_uri", "check_tracking_target", "default_tracking_uri", "mlflow_option",
           "MLFLOW_OPTION_HELP", "DEFAULT_DB_NAME"]

DEFAULT_DB_NAME = "mlflow.db"
_DATABASES = ("postgresql", "mysql", "mssql")
_ALLOWED = ("http(s)://HOST[:PORT][/PATH], sqlite:///FILE, file:///DIR, postgresql://USER@HOST/DB, "
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
        if not parts.path:
            raise ValueError(bad + "give a directory as file:///absolute/dir")
    elif base in _DATABASES:
        if not parts.hostname:
            raise ValueError(bad + f"it names no database host; use {base}://USER@HOST[:PORT]/DB")
    elif base != "databricks" and text != "databricks":
        hint = " (a file path needs sqlite:/// in front)" if not scheme or len(scheme) == 1 else ""
        raise ValueError(bad + f"unknown scheme '{scheme or '(none)'}'{hint}; use {_ALLOWED}")
    return text


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
    if directory is None:
        return
    parent = directory if urlsplit(uri).scheme.lower().startswith("sqlite") else directory.parent
    if not parent.is_dir():
        raise ConfigError(f"{option}: '{uri}' is in '{parent}', which is not a directory; "
                          "create it first or give another location")


MLFLOW_OPTION_HELP = ("log to MLflow: a tracking URI (http://HOST:PORT, sqlite:///FILE, postgresql://...), or "
                      "nothing for sqlite:///<output-dir>/mlflow.db (config key mlflow_tracking_uri)")


def mlflow_option(value: str, output_dir: str | os.PathLike, *, option: str = "--mlflow") -> str:
    """The tracking URI of an ``--mlflow [URI]`` option: a bare ``--mlflow`` (``""``) is the local default.

    Raises:
        ConfigError: a URI of the wrong form, or a local store in a directory that does not exist.
    """
    if value == "":
        return default_tracking_uri(output_dir)
    try:
        uri = check_tracking_uri(value)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    check_tracking_target(uri, option=option)
    return uri
