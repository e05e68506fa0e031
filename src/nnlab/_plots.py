"""Figures without pyplot's global state, written atomically as PNG.

Shared by the analysis sections and the study figures. matplotlib is imported
only inside the functions, so importing this module stays fast
(``nnlab analyze --help``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from nnlab._files import atomic_write

__all__ = ["FIGURE_DPI", "FIGURE_SOFTWARE", "is_nnlab_figure", "new_figure", "save_figure"]

FIGURE_DPI = 300
# The PNG "Software" text of every figure nnlab writes: how a figure is recognised as nnlab's own
# (a study replaces its figure only then).
FIGURE_SOFTWARE = "nnlab"


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (12, 9), **kwargs):
    """A matplotlib Figure and its axes, without pyplot's global state.

    ``matplotlib.figure.Figure`` renders with the Agg canvas when saved, whatever
    the interactive backend, so analyses run headless and in threads.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig, path: str | os.PathLike, *, dpi: int = FIGURE_DPI) -> Path:
    """Write ``fig`` as a PNG at ``dpi`` (atomically: a temporary file renamed over ``path``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": FIGURE_SOFTWARE})
    path = Path(path)
    return atomic_write(path, lambda fh: fh.write(buffer.getvalue()), binary=True)


def is_nnlab_figure(path: str | os.PathLike) -> bool:
    """True when ``path`` is a PNG whose "Software" text chunk is :data:`FIGURE_SOFTWARE`
    (written by :func:`save_figure`); reads only the chunks before the image data."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            for _ in range(64):
                head = fh.read(8)
                if len(head) < 8:
                    return False
                length, name = int.from_bytes(head[:4], "big"), head[4:]
                if name == b"IDAT" or length > 1 << 20:
                    return False
                body = fh.read(length + 4)[:length]
                if name == b"tEXt" and body.partition(b"\0")[::2] == (b"Software", FIGURE_SOFTWARE.encode()):
                    return True
    except OSError:
        return False
    return False
