"""Self-contained HTML reports rendered from saved results (data files + manifest.json).

``section``: Figure, Table, ReportSection; ``render``: the page; ``manifest``: the results folder's
manifest; ``sections``: the renderer registry (name -> draw a section from its data folder);
``build``: load a results folder and render it.
"""
from normlens.report.render import render_html, write_report
from normlens.report.section import Figure, ReportSection, Table

__all__ = ["Figure", "ReportSection", "Table", "render_html", "write_report"]
