"""Exceptions raised by nnlab.

Every error a user can cause (a bad configuration value, a malformed CSV, a
missing artifact) is one of these, with a message that names the
file/key/column, the bad value and what is allowed. The command line prints
the message without a traceback and exits with status 2.
"""

from __future__ import annotations


class NnlabError(Exception):
    """Base class of the errors nnlab raises for bad user input."""


class ConfigError(NnlabError, ValueError):
    """A configuration file, preset or override is invalid."""


class DataValidationError(NnlabError, ValueError):
    """Particle data is missing, unreadable or fails validation.

    Args:
        message: the whole report, one problem per line.
        problems: the individual problems, each a short sentence.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]
