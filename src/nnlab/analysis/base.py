"""What every analysis section shares: its result, its skip signal, figure output.

No TensorFlow here, and no matplotlib import: :func:`new_figure` and
:func:`save_figure` (from :mod:`nnlab._plots`, shared with the studies) load it
when called, so ``nnlab analyze --help`` stays fast. :class:`ArtifactError` lives
in :mod:`nnlab.errors` and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlab._plots import FIGURE_DPI, new_figure, save_figure
from nnlab.errors import ArtifactError

__all__ = [
    "ArtifactError",
    "SectionSkipped",
    "SectionResult",
    "SECTIONS",
    "FIGURE_DPI",
    "new_figure",
    "save_figure",
]

# name -> title, in report order. The names are what `nnlab analyze --skip` takes.
SECTIONS: dict[str, str] = {
    "artifacts": "1. Artifact validation",
    "dynamics": "2. Training dynamics",
    "learning_rate": "3. Learning-rate analysis",
    "residuals": "4. Residual analysis",
    "predictions": "5. Prediction scatter plots",
    "baselines": "6. Baselines",
    "james_stein": "7. James-Stein comparison",
    "recommendations": "8. Hyperparameter recommendations",
    "heatmap": "9. Hyperparameter impact heatmap",
    "loss_and_constraints": "10. Adaptive-loss weights and constraint statistics",
    "physics": "11. Physics consistency",
}


class SectionSkipped(Exception):
    """Raised inside a section when its inputs are missing; the message is the reason.

    Not an :class:`~nnlab.errors.NnlabError`: a skipped section is recorded in
    ``skipped_sections`` and the analysis goes on.
    """


@dataclass
class SectionResult:
    """The outcome of one analysis section.

    Attributes:
        name: the section name (a key of :data:`SECTIONS`).
        title: its heading in the report.
        status: ``"done"``, ``"skipped"`` (inputs missing; ``reason`` says which)
            or ``"failed"`` (an unexpected error; ``reason`` holds it).
        reason: why the section was skipped or failed.
        tables: named pandas DataFrames, shown in the notebook and the report.
        figures: PNG files written by the section.
        summary: JSON-ready numbers that go into the analysis summary.
        notes: sentences that help read the section (shown under its tables).
        elapsed_s: wall time of the section.
    """

    name: str
    title: str
    status: str = "done"
    reason: str | None = None
    tables: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def display(self) -> None:
        """Show the section in a Jupyter notebook: status, notes, tables, figures."""
        from IPython.display import Image, Markdown, display

        head = f"**{self.title}** — {self.status} ({self.elapsed_s:.1f} s)"
        if self.reason:
            head += f": {self.reason}"
        display(Markdown(head))
        for note in self.notes:
            display(Markdown(f"- {note}"))
        for name, table in self.tables.items():
            display(Markdown(f"*{name}*"))
            display(table)
        for path in self.figures:
            display(Image(filename=str(path), width=900))
