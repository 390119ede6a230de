"""Render a results folder (data + manifest.json) to HTML: load, then draw. Nothing is recomputed."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from normlens.io import atomic_path, write_text
from normlens.plots.style import plot_style
from normlens.report.manifest import SectionRef, read_manifest, write_manifest
from normlens.report.render import provenance_view, render_html
from normlens.report.section import ReportSection
from normlens.report.sections import Renderer, render_sections

KIND_LABELS = {"probe": "normlens probe", "hessian": "normlens hessian", "landscape": "normlens landscape"}


def meta_line(manifest: Mapping[str, Any]) -> str:
    """The line under the title: what ran, in which mode, when, and how long it took."""
    kind = manifest.get("kind")
    parts = [f"normlens analyze {manifest.get('study')}" if kind == "study" else KIND_LABELS.get(kind, str(kind))]
    if manifest.get("mode"):
        parts.append(f"{manifest['mode']} mode")
    parts.append(f"run ended {manifest.get('created', '?')}")
    total = (manifest.get("provenance") or {}).get("wall_seconds", {}).get("total")
    if total is not None:
        parts.append(f"{float(total):.0f} s wall time")
    return " · ".join(parts)


def render_results(folder: str | Path, html_path: str | Path | None = None, *,
                   renderers: Mapping[str, Renderer] | None = None, verdict: str = "",
                   sections: list[ReportSection] | None = None) -> str:
    """The HTML page of the results in ``folder``; links to its data files are relative to ``html_path``.

    ``renderers`` adds section renderers to the built-in ones; ``sections`` (already rendered by
    the caller from this folder) replaces rendering the manifest's section list.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    with plot_style():
        drawn = sections if sections is not None else render_sections(folder, manifest["sections"], renderers)
    return render_html(drawn, title=str(manifest.get("title", "normlens report")), subtitle=meta_line(manifest),
                       verdict=verdict, provenance=provenance_view(manifest, folder, html_path))


def write_results_report(folder: str | Path, out: str | Path, **kwargs: Any) -> Path:
    """Render ``folder`` and write the page to ``out`` atomically."""
    return write_text(out, render_results(folder, out, **kwargs))




def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def publish_results(folder: str | Path, *, kind: str, title: str, sections: Sequence[SectionRef],
                    provenance: Mapping[str, Any], pngs: bool = False) -> tuple[Path, list[ReportSection]]:
    """Finish a verb's run: write ``folder/manifest.json``, render ``folder/report.html`` from the saved
    data, and (``pngs``) every named figure as ``folder/<name>.png``. Returns the report's path and
    the sections drawn."""
    folder = Path(folder)
    write_manifest(folder, kind=kind, title=title, sections=sections, provenance=provenance)
    manifest = read_manifest(folder)
    with plot_style():
        drawn = render_sections(folder, manifest["sections"])
    if pngs:
        for section in drawn:
            for figure in section.figures:
                if figure.name:
                    write_bytes(folder / f"{figure.name}.png", figure.png)
    out = folder / "report.html"
    return write_text(out, render_results(folder, out, sections=drawn)), drawn


__all__ = ["meta_line", "publish_results", "render_results", "write_results_report"]
