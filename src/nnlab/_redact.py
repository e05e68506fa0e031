"""Passwords out of what nnlab shows and writes: the one redaction path of every file, message and command line.

Every form the database drivers and MLflow accept is masked:

* user-info of a URL, ``scheme://user:PASSWORD@host`` -- the password may hold any
  character, ``/``, ``:``, ``@`` and percent-escapes included (everything up to
  the last ``@`` of the URL is taken as the password);
* ``password=`` settings: URL query parameters (``?password=…``, ``&password=…``),
  libpq key=value connection strings (``host=db password='a b'``) and
  environment-style settings (``PGPASSWORD=…``, ``MLFLOW_TRACKING_PASSWORD=…``);
* values under a password-like key of a mapping (``{"password": …}``);
* in messages and printed output, every password seen once (6 characters or more), in
  its plain and percent-encoded spellings, wherever it appears later (e.g. inside a
  driver's exception text). Written structures are masked by form only, so that a
  short common word used as a password never blanks paths or values in a file.

:func:`redact` is applied to every structure written (JSON files, MLflow params,
Optuna user attributes); :func:`redact_text` to every message; :func:`install`
wraps ``sys.stdout``/``sys.stderr`` of the command-line process and its workers.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

__all__ = ["MASK", "install", "redact", "redact_argv", "redact_text", "redact_url_password", "remember_secrets",
           "without_masked_password"]

MASK = "***"
# A password seen this short is masked in URLs and settings, but not searched for as a bare string.
MIN_REMEMBERED = 6

_KEY = r"[\w.-]*(?:password|passwd|pwd)"
_KEY_RE = re.compile(rf"^{_KEY}$", re.IGNORECASE)
# key=value: a quoted value (libpq) or one up to whitespace, '&' or ';' (query string, conninfo).
_SETTING = re.compile(
    rf"(?P<key>(?<![\w.-]){_KEY})(?P<sep>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;'\"]+)",
    re.IGNORECASE)
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*"
# In free text a URL ends at whitespace: its password runs to the last '@' before it.
_USERINFO_TEXT = re.compile(rf"(?P<head>{_SCHEME}):(?P<value>\S*)@")
# A value that is one URL (or KEY=URL): its password runs to its last '@' (whitespace included).
_USERINFO_VALUE = re.compile(rf"^(?P<head>(?:[^\s=]*=)?\s*{_SCHEME}):(?P<value>.*)@", re.DOTALL)

_known: set[str] = set()


def _spellings(secret: str) -> set[str]:
    plain = {secret, unquote(secret), unquote_plus(secret)}
    return plain | {quote(s, safe="") for s in plain} | {quote_plus(s, safe="") for s in plain} | {
        quote(s) for s in plain}


def _learn(secret: str) -> None:
    if secret and secret != MASK:
        _known.update(s for s in _spellings(secret.strip("'\"")) if len(s) >= MIN_REMEMBERED and s != MASK)


def remember_secrets(text: Any) -> None:
    """Learn the passwords in ``text`` (a URL, an option value, a configuration) so later text masks them anywhere."""
    if isinstance(text, Mapping):
        for key, value in text.items():
            if isinstance(key, str) and _KEY_RE.match(key) and isinstance(value, str):
                _learn(value)
            remember_secrets(value)
    elif isinstance(text, (list, tuple)):
        for item in text:
            remember_secrets(item)
    elif isinstance(text, str):
        for match in _SETTING.finditer(text):
            _learn(match["value"])
        whole = _USERINFO_VALUE.match(_SETTING.sub("", text))
        if whole:
            _learn(whole["value"])
        for match in _USERINFO_TEXT.finditer(text):
            _learn(match["value"])


def _mask(text: str, userinfo: re.Pattern[str], *, known: bool = True) -> str:
    text = _SETTING.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    text = userinfo.sub(lambda m: f"{m['head']}:{MASK}@", text)
    for secret in sorted(_known, key=len, reverse=True) if known else ():
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_text(text: str) -> str:
    """``text`` (a message, a line of output) with every password in it replaced by ``***``.

    Example:
        >>> redact_text("cannot open postgresql+psycopg://nnlab:s3/c@et@db:5432/hpo: refused")
        'cannot open postgresql+psycopg://nnlab:***@db:5432/hpo: refused'
        >>> redact_text("postgresql://db/hpo?user=me&password=pw%2F1")
        'postgresql://db/hpo?user=me&password=***'
    """
    remember_secrets(text)
    return _mask(text, _USERINFO_TEXT)


def redact_url_password(text: str) -> str:
    """``text`` with the password of every URL in it (and every ``password=`` setting) replaced by ``***``.

    Example:
        >>> redact_url_password("postgresql+psycopg://nnlab:s3cret@db:5432/hpo")
        'postgresql+psycopg://nnlab:***@db:5432/hpo'
    """
    return redact_text(text)


def _redact_value(text: str) -> str:
    """One value that may be a whole URL (an option, a configuration value): its password may hold spaces."""
    remember_secrets(text)
    return _mask(_mask(text, _USERINFO_VALUE, known=False), _USERINFO_TEXT, known=False)


def redact(value: Any) -> Any:
    """A copy of ``value`` (str, or dicts/lists/tuples of them) to write or log: every password masked.

    Strings are masked as whole values (a URL's password runs to its last ``@``);
    a mapping's value under a password-like key (``password``, ``PGPASSWORD``) is
    replaced by ``***`` outright. Other values are returned as they are.

    Example:
        >>> redact({"mlflow_tracking_uri": "postgresql://u:a b@db/x", "PGPASSWORD": "pw", "epochs": 3})
        {'mlflow_tracking_uri': 'postgresql://u:***@db/x', 'PGPASSWORD': '***', 'epochs': 3}
    """
    if isinstance(value, str):
        return _redact_value(value)
    if isinstance(value, Mapping):
        return {key: (MASK if isinstance(key, str) and _KEY_RE.match(key) and value[key] not in (None, "")
                      else redact(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    return value


def without_masked_password(url: str) -> str:
    """A URL read back from a file (masked by :func:`redact`) without its ``***`` password, so that the driver
    takes the password from the environment (``PGPASSWORD``, ``~/.pgpass``, ``MLFLOW_TRACKING_PASSWORD``).

    Example:
        >>> without_masked_password("postgresql://u:***@db/x?sslmode=off&password=***")
        'postgresql://u@db/x?sslmode=off'
    """
    url = url.replace(f":{MASK}@", "@", 1)
    url = re.sub(rf"[?&]{_KEY}={re.escape(MASK)}(?=&|$)", "", url, flags=re.IGNORECASE)
    return url if "?" in url or "&" not in url else url.replace("&", "?", 1)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line as it may be recorded (``training_config.json``): every password masked."""
    return [_redact_value(str(arg)) for arg in argv]


class _RedactingStream(io.TextIOBase):
    """A text stream that masks passwords in everything written, then hands it to ``raw``."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def write(self, text: str) -> int:
        self._raw.write(redact_text(text) if isinstance(text, str) and text else text)
        return len(text)

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, buffer, ...
        return getattr(self._raw, name)

    def isatty(self) -> bool:
        return self._raw.isatty()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._raw.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._raw.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._raw, "errors", None)


def install() -> None:
    """Mask passwords in everything this process prints (``sys.stdout``, ``sys.stderr``); idempotent."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _RedactingStream):
            setattr(sys, name, _RedactingStream(stream))
