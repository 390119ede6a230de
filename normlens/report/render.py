"""Render report sections to one self-contained HTML page (no network requests).

Every user string (titles, model names, paths, table cells, notes, captions) is escaped:
the template autoescapes, table cells, headers and captions go through :func:`html.escape`;
links to data files are percent-encoded relative URLs.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from normlens.io import write_text
from normlens.report.section import ReportSection, Table
from normlens.resources import format_bytes


@dataclass(frozen=True)
class Provenance:
    """What the report's provenance block shows: (label, value) rows, the config as JSON,
    wall times, and the data files as (path, relative link, size) rows."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    config_json: str = ""
    wall: list[tuple[str, str]] = field(default_factory=list)
    files: list[tuple[str, str, str]] = field(default_factory=list)


def relative_link(target: str | Path, html_path: str | Path | None) -> str:
    """A percent-encoded URL of ``target`` relative to the folder of ``html_path`` (always a
    relative path, never a scheme: a file named ``javascript:x`` becomes ``./javascript%3Ax``)."""
    base = os.path.dirname(os.path.abspath(html_path)) if html_path is not None else os.getcwd()
    rel = Path(os.path.relpath(os.path.abspath(target), base)).as_posix()
    return quote(rel if rel.startswith(("../", "./")) else "./" + rel, safe="/")


def provenance_view(manifest: Mapping[str, Any], folder: str | Path,
                    html_path: str | Path | None) -> Provenance:
    """The provenance block of a results folder's manifest, with links relative to ``html_path``."""
    prov = manifest.get("provenance") or {}
    libraries = prov.get("libraries") or {}
    rows = [("normlens", str(prov.get("normlens", "?"))),
            ("git commit", str(prov.get("git_commit") or "not a git checkout")),
            ("libraries", ", ".join(f"{k} {v}" for k, v in libraries.items()) or "?"),
            ("python", f"{prov.get('python', '?')} on {prov.get('platform', '?')}"),
            ("device", f"{prov.get('device', '?')}, {prov.get('threads', '?')} CPU threads"),
            ("seeds", ", ".join(f"{k} = {v}" for k, v in (prov.get("seeds") or {}).items()) or "none"),
            ("command", str(prov.get("command") or "")),
            ("run ended", str(manifest.get("created", "?"))),
            ("results folder", os.path.abspath(folder))]
    wall = [(str(k), f"{float(v):.1f} s") for k, v in (prov.get("wall_seconds") or {}).items()]
    files = [(str(f["path"]), relative_link(Path(folder) / f["path"], html_path), format_bytes(int(f.get("bytes", 0))))
             for f in manifest.get("files", [])]
    config = json.dumps(prov.get("config") or {}, indent=1, sort_keys=False, allow_nan=True)
    return Provenance(rows=rows, config_json=config, wall=wall, files=files)


def format_cell(value: Any) -> tuple[str, str]:
    """(CSS class, text) of a table cell: numbers right-aligned and unbroken (4 significant digits),
    missing values as "—", anything else as text that may wrap."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "num", "—"
    if isinstance(value, (bool, np.bool_)):
        return "text", str(bool(value))
    if isinstance(value, (int, np.integer)):
        return "num", str(int(value))
    if isinstance(value, (float, np.floating)):
        return "num", "—" if math.isnan(value) else f"{float(value):.4g}"
    return "text", str(value)


_BREAK_AFTER = re.compile(r"([._/\\-])")
_HEADER_BREAK_AFTER = re.compile(r"(_)")
BREAK_LENGTH = 20  # shorter strings are left whole


def breakable(text: Any, separators: re.Pattern = _BREAK_AFTER) -> str:
    """``text`` escaped; when it is long, with line-break opportunities after the ``separators``
    (``. _ / \\ -`` by default: names, paths, hook sites)."""
    text = str(text)
    escaped = html.escape(text)
    return separators.sub(r"\1<wbr>", escaped) if len(text) >= BREAK_LENGTH else escaped


def _table_html(table: Table) -> Markup:
    """The table as escaped HTML inside a sideways-scrolling wrapper."""
    frame = table.frame
    head = "".join(f"<th>{breakable(c, _HEADER_BREAK_AFTER)}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False, name=None):
        cells = (format_cell(v) for v in values)
        rows.append("<tr>" + "".join(f'<td class="{cls}">{breakable(text) if cls == "text" else html.escape(text)}</td>'
                                     for cls, text in cells) + "</tr>")
    return Markup(f'<div class="table-wrap"><table><caption>{html.escape(table.caption)}</caption>'
                  f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("normlens.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        keep_trailing_newline=True,
    )
    env.filters["table_html"] = _table_html
    return env


def render_html(sections: Sequence[ReportSection], *, title: str, subtitle: str = "", verdict: str = "",
                provenance: Provenance | None = None) -> str:
    """The page: title, meta line, verdict, sections, then the provenance block."""
    return _environment().get_template("report.html").render(
        title=title, subtitle=subtitle, verdict=verdict, sections=list(sections), provenance=provenance)


def write_report(path: str | Path, sections: Sequence[ReportSection], *, title: str, subtitle: str = "",
                 verdict: str = "", provenance: Provenance | None = None) -> Path:
    """Write the report atomically and return its path."""
    return write_text(path, render_html(sections, title=title, subtitle=subtitle, verdict=verdict,
                                        provenance=provenance))
