"""The renderer registry: a name in a manifest's section list -> a function that draws that section
from its saved data.

A renderer is ``render(folder: Path, options: Mapping) -> ReportSection``: it reads the files a run
saved under ``folder`` and draws figures and tables from them, computing nothing that is not
derived from those files (so re-rendering gives the same page). The built-in renderers are
imported on first use; a study adds its own through its ``renderers`` mapping (see
:mod:`normlens.study`), which is consulted before the built-ins.
"""
from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from normlens.report.manifest import SectionRef
from normlens.report.section import ReportSection

Renderer = Callable[[Path, Mapping[str, Any]], ReportSection]

BUILTIN: dict[str, tuple[str, str]] = {
    "training": ("normlens.report.sections.training", "render_training"),
    "probes": ("normlens.report.sections.probes", "render_probes"),
    "hessian": ("normlens.report.sections.curvature", "render_hessian_models"),
    "hessian_model": ("normlens.report.sections.curvature", "render_hessian_model"),
    "landscapes": ("normlens.report.sections.landscape", "render_landscapes"),
    "landscape": ("normlens.report.sections.landscape", "render_landscape"),
    "failed": ("normlens.report.sections", "render_failed"),
}


class RendererError(ValueError):
    """A manifest names a renderer that is not registered."""


def get_renderer(name: str, extra: Mapping[str, Renderer] | None = None) -> Renderer:
    """The renderer registered as ``name`` (``extra`` first, then the built-ins)."""
    if extra and name in extra:
        return extra[name]
    if name not in BUILTIN:
        known = sorted(set(BUILTIN) | set(extra or {}))
        raise RendererError(f"no renderer named {name!r} (known: {', '.join(known)}); the results were "
                            "written by a study or normlens version that is not installed")
    module, attribute = BUILTIN[name]
    return getattr(importlib.import_module(module), attribute)


def render_failed(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """A section whose computation failed during the run: its name and the error, as saved."""
    return ReportSection(title=f"{options.get('name', 'analysis')} (failed)",
                         summary=str(options.get("traceback", "")), notes=[str(options.get("error", ""))])


def render_sections(folder: str | Path, refs: Sequence[SectionRef | Mapping[str, Any]],
                    extra: Mapping[str, Renderer] | None = None) -> list[ReportSection]:
    """Render every section of a results folder in order. A section whose renderer fails is shown
    as such (with the error) instead of losing the rest of the report; an unknown renderer raises."""
    folder = Path(folder)
    sections = []
    for ref in refs:
        ref = ref if isinstance(ref, SectionRef) else SectionRef.from_dict(ref)
        render = get_renderer(ref.renderer, extra)
        try:
            sections.append(render(folder / ref.path, ref.options))
        except Exception as error:  # noqa: BLE001 - one broken section must not lose the report
            sections.append(ReportSection(
                title=f"{ref.renderer} (could not be rendered)",
                summary=traceback.format_exc(limit=2), notes=[f"{type(error).__name__}: {error}"]))
    return sections


__all__ = ["BUILTIN", "Renderer", "RendererError", "get_renderer", "render_failed", "render_sections"]
