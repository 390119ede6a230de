"""Studies: analyses that answer one question, run by ``normlens analyze NAME``, found by entry point.

A study is any object that satisfies :class:`Study`; a package registers it under the entry-point
group ``normlens.studies`` (normlens's own live in the top-level ``analyses`` package)::

    [project.entry-points."normlens.studies"]
    zoo = "analyses.zoo:STUDY"

``normlens`` never imports ``analyses``: it discovers studies through
``importlib.metadata.entry_points(group="normlens.studies")``, so other packages can add studies.

:func:`run_study` runs one: it checks the output location, clears the old manifest, calls
``study.run(config, results, log)`` (which writes data files under ``results`` and returns the
sections to draw), writes ``results/manifest.json`` with the provenance, and renders the HTML
*from the saved files* (``study.render`` and ``study.verdict`` read only ``results``).
:func:`rerender` does the last step again for any results folder (``normlens report``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from normlens.io import write_text
from normlens.resources import check_output_file, check_output_folder
from normlens.plots.style import plot_style
from normlens.report.build import render_results
from normlens.report.manifest import MANIFEST, SectionRef, collect_provenance, read_manifest, write_manifest
from normlens.report.section import ReportSection
from normlens.report.sections import Renderer, render_sections

ENTRY_POINT_GROUP = "normlens.studies"
MODES = ("quick", "full")
MIN_FREE_BYTES = 64 << 20

Log = Callable[[str], None]


class StudyError(ValueError):
    """An unknown study, an invalid mode, or an output location that cannot be written."""


@dataclass(frozen=True)
class StudyConfig:
    """What every study takes: ``mode`` ("quick": minutes on 2 CPU cores; "full": larger models, meant
    for a GPU), the ``seed`` of everything random, ``fresh`` (retrain instead of reusing saved
    checkpoints) and study-specific ``options`` (e.g. the zoo's ``{"steps": 300}``)."""

    mode: str = "quick"
    seed: int = 0
    fresh: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise StudyError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


@dataclass(frozen=True)
class StudyRun:
    """What ``Study.run`` returns: the sections to draw (renderer names + data folders, in order) and
    the provenance only the study knows (its config as JSON values, seeds, wall times, device)."""

    sections: list[SectionRef]
    config: Mapping[str, Any] = field(default_factory=dict)
    seeds: Mapping[str, Any] = field(default_factory=dict)
    wall_seconds: Mapping[str, float] = field(default_factory=dict)
    device: str = "cpu"


@runtime_checkable
class Study(Protocol):
    """A study: a name (the CLI's), a one-line description, a report title, extra section renderers,
    and three methods.

    * ``run(config, results, log) -> StudyRun``: compute, and save every number as data
      (JSON/NPZ/Parquet) under ``results``; reuse checkpoints found there unless ``config.fresh``.
    * ``render(results) -> list[ReportSection]``: draw the sections from the saved data only.
    * ``verdict(results) -> str``: one sentence, computed from the saved numbers, saying whether the
      small-scale result agrees with the claim the study tests (and plainly when it does not).
    """

    name: str
    description: str
    title: str
    renderers: Mapping[str, Renderer]

    def run(self, config: StudyConfig, results: Path, log: Log) -> StudyRun: ...

    def render(self, results: Path) -> list[ReportSection]: ...

    def verdict(self, results: Path) -> str: ...


class BaseStudy:
    """Defaults for a study: ``render`` draws the manifest's sections with the built-in renderers
    plus ``self.renderers``; subclasses set the attributes and implement ``run`` and ``verdict``."""

    name: str = ""
    description: str = ""
    title: str = ""
    renderers: Mapping[str, Renderer] = {}

    def run(self, config: StudyConfig, results: Path, log: Log) -> StudyRun:
        raise NotImplementedError

    def render(self, results: Path) -> list[ReportSection]:
        return render_sections(results, read_manifest(results)["sections"], self.renderers)

    def verdict(self, results: Path) -> str:
        return ""


def _entry_points() -> dict[str, Any]:
    return {point.name: point for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name)}


def _load(point) -> Study:
    try:
        study = point.load()
    except Exception as error:  # noqa: BLE001 - a broken plug-in is reported in one line
        raise StudyError(f"study {point.name!r} ({point.value}) failed to import: "
                         f"{type(error).__name__}: {error}") from None
    if not isinstance(study, Study):
        raise StudyError(f"entry point {point.name!r} ({point.value}) is not a Study (needs name, "
                         "description, title, renderers, run, render, verdict)")
    return study


def discover_studies() -> dict[str, Study]:
    """Every installed study, by name (entry-point group ``normlens.studies``), sorted by name;
    a StudyError names the first one that cannot be imported."""
    return {name: _load(point) for name, point in _entry_points().items()}


def list_studies() -> list[tuple[str, str]]:
    """(name, one-line description) of every installed study; a broken one says why instead."""
    rows = []
    for name, point in _entry_points().items():
        try:
            rows.append((name, _load(point).description))
        except StudyError as error:
            rows.append((name, f"(unusable) {error}"))
    return rows


def find_study(name: str, studies: Mapping[str, Study] | None = None) -> Study:
    """The study called ``name`` (only that entry point is imported); a one-line StudyError listing
    the installed ones otherwise."""
    points = _entry_points() if studies is None else studies
    if name not in points:
        known = ", ".join(points) or "none"
        raise StudyError(f"no study named {name!r}; installed studies: {known} (`normlens analyze --list`; "
                         "after adding one to pyproject.toml, reinstall with `pip install -e .`)")
    return _load(points[name]) if studies is None else studies[name]


def check_output(out: str | Path) -> Path:
    """Refuse, before any computation, a report path that cannot be written: not ending in .html, an
    existing folder, a parent that cannot be written, or a disk with less than 64 MiB free."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm") and not out.is_dir():
        raise StudyError(f"--out {out} must end in .html (the report); its data go to {out.stem}_data/ beside it")
    check_output_file(out, MIN_FREE_BYTES)
    check_output_folder(results_folder(out), MIN_FREE_BYTES, option="--out's data folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def results_folder(out: str | Path) -> Path:
    """Where a study's data go: ``reports/zoo.html`` -> ``reports/zoo_data``."""
    out = Path(out)
    return out.parent / f"{out.stem}_data"


def run_study(study: Study, config: StudyConfig = StudyConfig(), out: str | Path | None = None, *,
              log: Log = print, command: str | None = None) -> Path:
    """Run ``study``, save its data and manifest, and write the report rendered from them; return its path."""
    out = check_output(out if out is not None else Path("reports") / f"{study.name}.html")
    results = results_folder(out)
    if results.exists() and not results.is_dir():
        raise StudyError(f"{results} exists and is not a folder; move it or choose another --out")
    (results / MANIFEST).unlink(missing_ok=True)  # a run that stops early leaves no stale manifest behind
    started = time.perf_counter()
    record = study.run(config, results, log)
    wall = {"total": time.perf_counter() - started, **record.wall_seconds}
    provenance = collect_provenance(
        device=record.device, seeds={"seed": config.seed, **record.seeds}, wall_seconds=wall, command=command,
        config={"mode": config.mode, "fresh": config.fresh, "options": dict(config.options), **record.config})
    write_manifest(results, kind="study", study=study.name, title=study.title, mode=config.mode,
                   sections=record.sections, provenance=provenance,
                   report=os.path.relpath(os.path.abspath(out), os.path.abspath(results)))
    path = write_study_report(study, results, out)
    log(f"wrote {path} in {wall['total']:.1f} s")
    verdict = study.verdict(results)
    if verdict:
        log(f"verdict: {verdict}")
    return path


def write_study_report(study: Study, results: str | Path, out: str | Path) -> Path:
    """Render ``study``'s saved results to ``out`` (sections and verdict from the data only)."""
    with plot_style():
        sections = study.render(Path(results))
    verdict = study.verdict(Path(results))
    return write_text(out, render_results(results, out, sections=sections, verdict=verdict))


def default_report_path(results: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Where the run wrote the report of ``results`` (the manifest's ``report``), else ``results/report.html``."""
    return Path(os.path.normpath(Path(results) / manifest.get("report", "report.html")))


def rerender(results: str | Path, out: str | Path | None = None, *,
             studies: Mapping[str, Study] | None = None) -> Path:
    """Render any results folder again (a study's or a verb's) from its saved data; return the page's path.

    Without ``out`` the page goes where the run wrote it; the HTML is byte-identical to the run's own.
    """
    results = Path(results)
    manifest = read_manifest(results)
    out = Path(out) if out is not None else default_report_path(results, manifest)
    if out.is_dir():
        raise StudyError(f"-o {out} is a folder; give the report's file name, e.g. {out / 'report.html'}")
    if manifest.get("kind") == "study":
        return write_study_report(find_study(str(manifest.get("study")), studies), results, out)
    return write_text(out, render_results(results, out))


__all__ = ["BaseStudy", "ENTRY_POINT_GROUP", "MODES", "Study", "StudyConfig", "StudyError", "StudyRun",
           "check_output", "discover_studies", "find_study", "list_studies", "rerender", "results_folder", "run_study",
           "write_study_report"]
