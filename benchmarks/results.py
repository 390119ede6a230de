"""Benchmark rows, their Markdown tables, and RESULTS.md assembled from marked blocks.

RESULTS.md holds one block per writer (each section of ``python -m benchmarks``,
``benchmarks/gpu_check.sh``, ``bench_kernels.py``), each between
``<!-- begin NAME -->`` and ``<!-- end NAME -->`` and headed by the machine line
and command that produced it; a writer replaces its own block and keeps the
others, so rerunning one section, or a CPU run, does not erase other numbers.
results.json is keyed by section the same way.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # also when a bench_*.py runs as a script
    sys.path.insert(0, str(ROOT))

from normlens.io import write_text  # noqa: E402

RESULTS_MD = Path(__file__).with_name("RESULTS.md")
RESULTS_JSON = Path(__file__).with_name("results.json")
TITLE = "# normlens benchmarks"


@dataclasses.dataclass
class Row:
    """One measured comparison: ``value`` in ``unit`` (``x`` for ratios), with its target and details."""

    section: str
    name: str
    value: float | None
    unit: str = "x"
    target: str = ""
    detail: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def shown(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "–"
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if self.unit in ("s", "ms", "MB", "GB/s"):
            return f"{self.value:.3g} {self.unit}"
        return f"{self.value:.3g} {self.unit}".strip()


@dataclasses.dataclass
class Section:
    """One section's rows, or why it did not run (skipped: a note; failed: the error)."""

    key: str
    title: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    status: str = "ran"  # ran | skipped | failed
    note: str = ""
    seconds: float = 0.0


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def sections_markdown(sections: list[Section], level: int = 3) -> str:
    lines: list[str] = []
    for s in sections:
        lines += [f"{'#' * level} {s.title}", ""]
        if s.status != "ran":
            lines += [f"**{s.status}**: {_cell(s.note)}", ""]
            continue
        if s.note:
            lines += [s.note, ""]
        lines += ["| comparison | result | target | details |", "|---|---|---|---|"]
        for r in s.rows:
            lines.append(f"| {_cell(r.name)} | {r.shown()} | {_cell(r.target)} | {_cell(r.detail)} |")
        lines += ["", f"_section time {s.seconds:.0f} s_", ""]
    return "\n".join(lines)


def update_block(name: str, body: str, path: Path = RESULTS_MD) -> Path:
    """Replace block ``name`` of RESULTS.md with ``body`` (appended if absent), keeping the others."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    if not text.startswith(TITLE):
        # an older file without blocks: keep it below, marked as such
        old = text.strip()
        text = f"{TITLE}\n\nEach block below is written by the command it names; rerunning a command replaces its block.\n"
        if old:
            text += f"\n<!-- begin earlier -->\n## Earlier notes\n\n{old}\n<!-- end earlier -->\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text(path, text)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def write_json(path: Path, machine: dict, command: str, sections: list[Section]) -> Path:
    """Each section's rows with the machine and command that measured them, merged into ``path``
    by section key (other sections' entries are kept; NaN/inf are written as null)."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("sections"), dict):
            raise ValueError
    except (OSError, ValueError):
        data = {"sections": {}}
    for s in sections:
        data["sections"][s.key] = _jsonable({"machine": machine, "command": command, **dataclasses.asdict(s)})
    return write_text(path, json.dumps(data, indent=1) + "\n")
