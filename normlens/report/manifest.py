"""The manifest of a results folder: what was run, with what, and which renderer draws each section.

Every report normlens writes is rendered from a results folder: data files (JSON, NPZ,
Parquet) plus ``manifest.json``::

    {
      "format": "normlens-results", "version": 1,
      "kind": "study" | "probe" | "hessian" | "landscape",
      "study": "zoo",                      # studies only: the entry-point name
      "title": "...", "mode": "quick",     # mode: studies only ("quick" | "full")
      "report": "../zoo.html",             # where the run wrote the HTML, relative to the folder
      "created": "2025-01-01T12:00:00Z",   # when the run ended (UTC)
      "sections": [{"renderer": "probes", "path": "probes", "options": {}}, ...],
      "provenance": {"normlens": "0.1.0", "python": "...", "platform": "...",
                     "libraries": {"torch": "...", ...}, "git_commit": "..." | null,
                     "device": "cpu", "threads": 2, "command": "...",
                     "seeds": {...}, "config": {...}, "wall_seconds": {"total": ..., ...}},
      "files": [{"path": "probes/ln/activation_stats.parquet", "bytes": 1234, "sha256": "..."}, ...]
    }

``sections[i].path`` is relative to the results folder; the renderer named by
``sections[i].renderer`` (see :mod:`normlens.report.sections`) reads that folder and returns
a ReportSection. Nothing in a report is computed at render time that is not in these files,
so ``normlens report FOLDER`` re-renders the same page.
"""
from __future__ import annotations

import fnmatch
import hashlib
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from normlens.io import as_json_value, read_json, write_json

MANIFEST = "manifest.json"
FORMAT = "normlens-results"
VERSION = 1
KINDS = ("study", "probe", "hessian", "landscape")
LIBRARIES = ("torch", "transformer-lens", "numpy", "scipy", "pandas", "pyarrow", "scikit-learn", "matplotlib",
             "seaborn", "safetensors", "datasets", "triton")
HASH_LIMIT = 64 << 20  # files larger than this are listed with their size only


class ManifestError(ValueError):
    """A results folder without a readable manifest."""


@dataclass(frozen=True)
class SectionRef:
    """One report section: the renderer's registry name, its data folder (relative), JSON options."""

    renderer: str
    path: str = "."
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return as_json_value(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SectionRef":
        return cls(str(data["renderer"]), str(data.get("path", ".")), dict(data.get("options") or {}))


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on (absent ones left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: normlens's source), "+dirty" if
    it has uncommitted changes; None when it is not a checkout or git is missing."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def collect_provenance(*, device: str = "cpu", seeds: Mapping[str, Any] | None = None,
                       config: Mapping[str, Any] | None = None,
                       wall_seconds: Mapping[str, float] | None = None,
                       command: str | None = None) -> dict[str, Any]:
    """Versions, commit, machine, and the caller's seeds, config and wall times, as JSON values."""
    import torch

    try:
        version = metadata.version("normlens")
    except metadata.PackageNotFoundError:
        from normlens import __version__ as version
    return as_json_value({
        "normlens": version,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "libraries": library_versions(),
        "git_commit": git_commit(),
        "device": device,
        "threads": torch.get_num_threads(),
        "command": command if command is not None else " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        "seeds": dict(seeds or {}),
        "config": dict(config or {}),
        "wall_seconds": dict(wall_seconds or {}),
    })


def list_data_files(folder: str | Path, exclude: Sequence[str] = (MANIFEST, "report.html", "*.png")) -> list[dict]:
    """Every data file under ``folder`` (sorted, relative POSIX paths) with its size and SHA-256;
    the manifest, the report and PNG renderings (matched by name, ``exclude``) are not data."""
    folder = Path(folder)
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in exclude) or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # hidden: temporary files of atomic writes
        size = path.stat().st_size
        entry: dict[str, Any] = {"path": rel, "bytes": size}
        if size <= HASH_LIMIT:
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(entry)
    return files


def write_manifest(folder: str | Path, *, kind: str, title: str, sections: Sequence[SectionRef],
                   provenance: Mapping[str, Any], study: str | None = None, mode: str | None = None,
                   report: str = "report.html", created: datetime | None = None) -> Path:
    """Write ``folder/manifest.json`` (after the data: it lists the data files with their hashes).

    ``report`` is where the run writes its HTML, relative to ``folder`` (``normlens report`` re-renders
    there by default)."""
    if kind not in KINDS:
        raise ManifestError(f"manifest kind must be one of {', '.join(KINDS)}, got {kind!r}")
    folder = Path(folder)
    created = created or datetime.now(timezone.utc)
    manifest = {
        "format": FORMAT, "version": VERSION, "kind": kind, "study": study, "title": title, "mode": mode,
        "report": Path(report).as_posix(),
        "created": created.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sections": [s.to_dict() for s in sections],
        "provenance": as_json_value(dict(provenance)),
        "files": list_data_files(folder),
    }
    return write_json(folder / MANIFEST, manifest)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of ``folder``; a one-line ManifestError when it is missing or not ours."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder} is not a normlens results folder: {MANIFEST} is missing "
                            "(pass the folder a run wrote, e.g. reports/zoo_data or the --out of a verb)")
    try:
        manifest = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path} is not valid JSON ({err}); rerun the analysis to rewrite it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a normlens manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("version") != VERSION:
        raise ManifestError(f"{path} has manifest version {manifest.get('version')!r}; this normlens reads "
                            f"version {VERSION}: rerun the analysis with this version")
    if not isinstance(manifest.get("sections"), list):
        raise ManifestError(f"{path} lists no sections; rerun the analysis to rewrite it")
    return manifest


__all__ = ["MANIFEST", "ManifestError", "SectionRef", "collect_provenance", "git_commit", "library_versions",
           "list_data_files", "read_manifest", "write_manifest"]
