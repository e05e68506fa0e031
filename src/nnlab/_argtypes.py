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
import shutil
import sys
import textwrap

__all__ = [
    "add_table_arguments",
    "column_list",
    "int_at_least",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HelpFormatter",
    "MAX_COLUMNS",
    "SEED_MAX",
    "Parser",
    "non_negative_int",
    "positive_int",
    "seed_int",
    "table_overrides",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The seeds NumPy, scikit-learn and Optuna's samplers accept: 0 <= seed < 2**32 (nnlab.config has its own).
SEED_MAX = 2**32 - 1


# The widest line nnlab prints (help included), whatever the terminal's width.
MAX_COLUMNS = 120


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, wrapped to the terminal but never wider than :data:`MAX_COLUMNS` columns.

    Lines break at spaces only, never after a hyphen: ``<output-dir>/runs`` or
    ``--num-particles`` stay whole.
    """

    def __init__(self, prog: str, **kwargs) -> None:
        kwargs.setdefault("width", min(shutil.get_terminal_size().columns, MAX_COLUMNS) - 2)
        super().__init__(prog, **kwargs)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse already exits 2 on bad arguments; keep its message short.

    Abbreviations are off for every parser (subparsers are built through this
    class too): ``--conf x.json`` must be an error, not silently ``--config``
    (nor ``--vers`` silently ``--verbose``), and adding an option must never
    change what an existing prefix meant. Help fits :data:`MAX_COLUMNS` columns.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # pragma: no cover - exercised via subprocess
        self.print_usage(sys.stderr)
        from nnlab._text import fit

        self.exit(EXIT_USAGE, fit(f"{self.prog}: error: {message}") + "\n")  # within 120 columns


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


def column_list(text: str) -> list[str]:
    """argparse type: comma-separated column names (``price`` or ``price,volume``).

    Example:
        >>> column_list("price, volume")
        ['price', 'volume']
    """
    names = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not name for name in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got '{text[:80]}'")
    return names


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """``--targets``, ``--features`` and ``--drop-missing``: a ``--data`` table's columns (config keys data_*)."""
    parser.add_argument("--targets", type=column_list, metavar="COL[,COL...]",
                        help="train on a table of your own: the --data column(s) to predict (config key "
                             "data_targets); without it a --data CSV is the particle task")
    parser.add_argument("--features", type=column_list, metavar="COL[,COL...]",
                        help="the table's input columns (config key data_features; default: every column but "
                             "the targets, leaving out a row-number column)")
    parser.add_argument("--drop-missing", action="store_true", default=None,
                        help="leave out the table's rows with missing values (config key data_drop_missing); "
                             "without it such a table is refused")


def table_overrides(args: argparse.Namespace) -> dict:
    """The configuration keys the table options set (only those given)."""
    given = {"data_targets": args.targets, "data_features": args.features, "data_drop_missing": args.drop_missing}
    return {key: value for key, value in given.items() if value is not None}
