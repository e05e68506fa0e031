"""The form of an MLflow tracking URI, checked when the configuration is validated.

The configuration validates URIs itself (no import of :mod:`nnlab.integrations`,
which sits above it); :mod:`nnlab.integrations` re-exports the check. No MLflow
import: a URI is refused before training (exit 2) whether or not the package is
installed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["check_tracking_uri"]

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
