"""Console text that fits the terminal convention of 120 columns.

Every line nnlab prints fits :data:`LINE_WIDTH` columns, but for a single word
longer than that (a path is never split: it must stay copyable).
"""

from __future__ import annotations

import textwrap

__all__ = ["LINE_WIDTH", "fit"]

LINE_WIDTH = 120


def fit(text: str, *, width: int = LINE_WIDTH, indent: str = "  ") -> str:
    """``text`` with each of its lines wrapped at spaces to ``width`` columns.

    A continuation line keeps its line's own indentation plus ``indent``; words
    (paths, URIs) are never split, hyphens are not break points.

    Example:
        >>> print(fit("error: run x: " + "word " * 5, width=20))
        error: run x: word
          word word word
          word
        >>> fit("a/very/long/path/that/stays/whole", width=10)
        'a/very/long/path/that/stays/whole'
    """
    lines = []
    for line in text.split("\n"):
        if len(line) <= width:
            lines.append(line)
            continue
        own = line[:len(line) - len(line.lstrip(" "))]
        lines += textwrap.wrap(line, width, subsequent_indent=own + indent, break_long_words=False,
                               break_on_hyphens=False) or [line]
    return "\n".join(lines)
