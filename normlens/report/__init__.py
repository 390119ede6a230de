"""Self-contained HTML reports built from sections of figures and tables."""
from normlens.report.render import render_html, write_report
from normlens.report.section import Figure, ReportSection, Table

__all__ = ["Figure", "ReportSection", "Table", "render_html", "write_report"]
