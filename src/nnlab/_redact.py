"""Passwords out of what nnlab shows and writes: database URLs in messages, files and command lines."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["redact_url_password", "redact_argv"]

# scheme://user:password@host -> scheme://user:***@host (a password with '@' must be %40-encoded in a URL).
_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@/\s]*@")


def redact_url_password(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it replaced by ``***``.

    Example:
        >>> redact_url_password("postgresql+psycopg://nnlab:s3cret@db:5432/hpo")
        'postgresql+psycopg://nnlab:***@db:5432/hpo'
    """
    return _PASSWORD.sub(r"\1:***@", text)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line as it may be recorded (``training_config.json``): URL passwords masked."""
    return [redact_url_password(str(arg)) for arg in argv]
