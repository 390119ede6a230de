"""Render report sections to one self-contained HTML page (no network requests)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import jinja2
from markupsafe import Markup

from normlens.io import write_text
from normlens.report.section import ReportSection, Table


def _table_html(table: Table) -> Markup:
    body = table.frame.to_html(index=False, escape=True, na_rep="—", float_format=lambda v: f"{v:.4g}",
                               border=0)
    caption = f"<caption>{html.escape(table.caption)}</caption>"
    return Markup(body.replace(">\n", ">" + caption + "\n", 1))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("normlens.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    env.filters["table_html"] = _table_html
    return env


def render_html(sections: Sequence[ReportSection], *, title: str, subtitle: str = "") -> str:
    return _environment().get_template("report.html").render(
        title=title, subtitle=subtitle, sections=list(sections))


def write_report(path: str | Path, sections: Sequence[ReportSection], *, title: str,
                 subtitle: str = "") -> Path:
    """Write the report atomically and return its path."""
    return write_text(path, render_html(sections, title=title, subtitle=subtitle))
