"""The analysis outputs: the JSON summary (never overwritten) and the self-contained report.html."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnlab._files import atomic_write_text
from nnlab._numbers import to_jsonable
from nnlab.analysis.base import SectionResult
from nnlab.analysis.labels import headline_rows

__all__ = ["to_jsonable", "write_summary", "render_report", "write_report", "write_study_report"]


def write_summary(summary: Mapping[str, Any], out_dir: str | os.PathLike, *, now: datetime | None = None) -> Path:
    """Write ``analysis_summary_YYYYMMDD_HHMMSS.json`` without ever replacing an existing file.

    The JSON goes to a temporary file that is then hard-linked to its final
    name (which fails if the name exists, unlike a rename); a second summary
    within the same second gets a ``_2``, ``_3``... suffix.
    """
    out = Path(out_dir)
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    text = json.dumps(to_jsonable(summary), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".analysis_summary.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        for attempt in range(1, 1000):
            target = out / (f"analysis_summary_{stamp}.json" if attempt == 1 else
                            f"analysis_summary_{stamp}_{attempt}.json")
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            return target
        raise FileExistsError(f"too many analysis summaries for {stamp} in {out}")  # pragma: no cover
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "—" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return _fmt(value)


def _table_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p><em>(empty)</em></p>"
    shown = table.copy()
    for col in shown.columns:
        shown[col] = shown[col].astype(object).map(_cell)
    return f"<div class='table-wrap'>{shown.to_html(index=False, escape=True, border=0, classes='table')}</div>"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.table-wrap{max-width:100%;overflow-x:auto;margin:.6em 0 1.2em}
table.table{border-collapse:collapse;font-size:.8em;max-width:100%}
table.table th,table.table td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
table.table td{overflow-wrap:break-word;min-width:5em}table.table th{overflow-wrap:break-word}
table.table td{max-width:28em}
code{overflow-wrap:anywhere}
table.table th{background:#f3f3f3}
.status{display:inline-block;padding:.05em .5em;border-radius:.3em;font-size:.8em;color:#fff}
.done{background:#2e7d32}.skipped{background:#9e9e9e}.failed{background:#c62828}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8em;color:#555}
.notes li{font-size:.9em;color:#444}
"""


def _section_html(s: SectionResult) -> str:
    esc = html.escape
    parts = [f"<h2 id='{esc(s.name)}'>{esc(s.title)} <span class='status {esc(s.status)}'>{esc(s.status)}</span></h2>"]
    if s.reason:
        parts.append(f"<p><strong>{'Skipped' if s.status == 'skipped' else 'Failed'}:</strong> {esc(s.reason)}</p>")
    if s.notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in s.notes) + "</ul>")
    for name, table in s.tables.items():
        parts.append(f"<h3>{esc(name)}</h3>{_table_html(table)}")
    for path in s.figures:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{esc(Path(path).name)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(Path(path).name)}</figcaption></figure>")
    return "\n".join(parts)


def render_report(sections: Sequence[SectionResult], summary: Mapping[str, Any]) -> str:
    """The whole report as one HTML page: every section, table and figure (PNG embedded as base64)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>nnlab analysis: run {esc(str(summary.get('run_id')))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Experiment analysis: run {esc(str(summary.get('run_id')))}</h1>",
        f"<p>Analysed {esc(str(summary.get('analysis_timestamp')))} · run directory "
        f"<code>{esc(str(summary.get('run_dir')))}</code></p>",
    ]
    parts.append("<h2 id='headline'>Headline</h2>")
    parts.append(_table_html(pd.DataFrame(headline_rows(summary), columns=["quantity", "value"])))
    parts.append("<ul>" + "".join(
        f"<li><a href='#{esc(s.name)}'>{esc(s.title)}</a> <span class='status {esc(s.status)}'>{esc(s.status)}"
        f"</span></li>" for s in sections) + "</ul>")
    parts.extend(_section_html(s) for s in sections)
    parts.append(f"<p><small>Summary JSON: {esc(str(summary.get('summary_file', '')))}</small></p></body></html>")
    return "\n".join(parts)


def write_study_report(sections: Sequence[SectionResult], *, title: str, intro: str,
                       out_dir: str | os.PathLike) -> Path:
    """Write the ``report.html`` of ``nnlab analyze --study``: one section per study in the directory."""
    esc = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>nnlab: {esc(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>", *(_section_html(s) for s in sections),
             "</body></html>"]
    return atomic_write_text(Path(out_dir) / "report.html", "\n".join(parts))


def write_report(sections: Sequence[SectionResult], summary: Mapping[str, Any],
                 out_dir: str | os.PathLike) -> Path:
    """Write ``report.html`` (atomically)."""
    return atomic_write_text(Path(out_dir) / "report.html", render_report(sections, summary))
