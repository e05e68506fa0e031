"""Command-line building blocks shared by ``nnlab``, ``nnlab hpo`` and ``nnlab study``.

A leaf module: the argument types, the parser class and the exit statuses,
importing nothing from nnlab, so every command-line module can use them
without importing the top-level command line.

Example:
    >>> positive_int("3")
    3
    >>> seed_int("4294967295") == SEED_MAX
    True
"""

from __future__ import annotations

import argparse
import sys

__all__ = [
    "int_at_least",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SEED_MAX",
    "Parser",
    "non_negative_int",
    "positive_int",
    "seed_int",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The seeds NumPy, scikit-learn and Optuna's samplers accept: 0 <= seed < 2**32 (nnlab.config has its own).
SEED_MAX = 2**32 - 1


class Parser(argparse.ArgumentParser):
    """argparse already exits 2 on bad arguments; keep its message short.

    Abbreviations are off for every parser (subparsers are built through this
    class too): ``--conf x.json`` must be an error, not silently ``--config``,
    and adding an option must never change what an existing prefix meant.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # pragma: no cover - exercised via subprocess
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def int_at_least(minimum: int):
    """argparse type factory: an integer >= ``minimum`` ("expected an integer >= 2, got 1").

    Example:
        >>> int_at_least(2)("3")
        3
    """

    def parse(text: str) -> int:
        return _int_at_least(text, minimum, f"an integer >= {minimum}")

    return parse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, with a message naming the bad value."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0, with a message naming the bad value."""
    return _int_at_least(text, 0, "an integer >= 0")


def seed_int(text: str) -> int:
    """argparse type: a seed NumPy and scikit-learn accept (0 .. 2**32 - 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got '{text[:80]}'") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {SEED_MAX} (2**32 - 1), got {value}")
    return value
