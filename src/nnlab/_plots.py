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

__all__ = ["FIGURE_DPI", "new_figure", "save_figure"]

FIGURE_DPI = 300


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
    fig.savefig(buffer, format="png", dpi=dpi)
    path = Path(path)
    return atomic_write(path, lambda fh: fh.write(buffer.getvalue()), binary=True)
