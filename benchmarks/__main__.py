"""`python -m benchmarks`: every comparison normlens claims, measured side by side in one run.

    python -m benchmarks [--quick] [--scale] [--only SECTION ...] [--skip SECTION ...]

Sections (each a table of rows in benchmarks/RESULTS.md and benchmarks/results.json):

  probes      statistics probes vs plain forward vs run_with_cache (time, added peak memory);
              attention-entropy memory at context 4096 (bench_probes.py)
  train_step  a training step after the probes ÷ before, under CPU contention
              (bench_probes.bench_train_step_after_probes)
  hessian     HVP ÷ gradient; top-5 eigenvalues vs PyHessian, error and time (bench_hessian.py)
  landscape   21×21 plane vs loss-landscapes at 1×64 and 8×64 tokens, time per point ÷ its
              matmuls alone (the arithmetic floor), 2 ranks vs 1 (bench_landscape.py)
  kernels     fused norm kernels and the attention-entropy kernel (bench_kernels.py; CUDA only,
              skipped with a note elsewhere)
  scale       optional (--scale): every analysis on a GPT-2-small-shaped model (bench_scale.py)

Every timing is a median over repeats with warm-up runs excluded. The peers
(PyHessian, loss-landscapes, liger-kernel) are the benchmark-only extra:
pip install -e ".[bench]"; a section whose peer is missing reports the row as skipped.
A section that fails records its error and the run goes on. The machine line
(CPU model, cores, torch, threads, GPU, load average) heads the results.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, machine_line  # noqa: E402
from benchmarks.results import (  # noqa: E402
    RESULTS_JSON, RESULTS_MD, Row, Section, sections_markdown, update_block, write_json,
)

SECTIONS = ("probes", "train_step", "hessian", "landscape", "kernels", "scale")
TITLES = {
    "probes": "Probes: time and memory against a plain forward and run_with_cache",
    "train_step": "A training step after the probes ÷ before, under contention",
    "hessian": "Hessian: HVP cost and top-5 eigenvalues against PyHessian",
    "landscape": "Loss landscapes: against loss-landscapes, the arithmetic floor, 2 ranks vs 1",
    "kernels": "Fused kernels and the attention-entropy kernel (CUDA)",
    "scale": "Scale: a GPT-2-small-shaped model through every analysis",
}


def _kernel_rows(quick: bool) -> list[Row] | str:
    from benchmarks import bench_kernels

    why = bench_kernels.gpu_unavailable()
    return f"{why}; run benchmarks/gpu_check.sh on a GPU machine" if why else bench_kernels.rows(quick)


def _runners(args) -> dict[str, Callable[[], list[Row] | str]]:
    from benchmarks import bench_hessian, bench_landscape, bench_probes, bench_scale

    return {
        "probes": lambda: bench_probes.rows(args.quick),
        "train_step": lambda: bench_probes.train_step_rows(args.quick),
        "hessian": lambda: bench_hessian.rows(args.quick),
        "landscape": lambda: bench_landscape.rows(args.quick, args.threads, args.rank_threads),
        "kernels": lambda: _kernel_rows(args.quick),
        "scale": lambda: bench_scale.rows(args.quick),
    }


def run_sections(names: list[str], args) -> list[Section]:
    runners = _runners(args)
    sections = []
    for name in names:
        print(f"\n== {name}: {TITLES[name]}", flush=True)
        section = Section(name, TITLES[name])
        start = time.perf_counter()
        try:
            result = runners[name]()
            if isinstance(result, str):
                section.status, section.note = "skipped", result
            else:
                section.rows = result
        except Exception as error:  # noqa: BLE001 - record it and run the other sections
            traceback.print_exc()
            section.status, section.note = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
        section.seconds = time.perf_counter() - start
        for row in section.rows:
            print(f"   {row.name}: {row.shown()}  {row.target}  {row.detail}", flush=True)
        if section.status != "ran":
            print(f"   {section.status}: {section.note}", flush=True)
        sections.append(section)
    return sections


def _summary(sections: list[Section]) -> str:
    lines = []
    for s in sections:
        if s.status != "ran":
            lines.append(f"{s.key:10s} {s.status}: {s.note}")
        for r in s.rows:
            lines.append(f"{s.key:10s} {r.shown():>10s}  {r.target:10s}  {r.name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller rank grids (a short run)")
    parser.add_argument("--scale", action="store_true", help="also run the GPT-2-small-shaped scale section")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="leave these sections out")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the landscape planes (0: default)")
    parser.add_argument("--rank-threads", type=int, default=1, help="torch threads per rank for 2 ranks vs 1")
    parser.add_argument("--md", type=Path, default=RESULTS_MD, help="Markdown results (this command's block)")
    parser.add_argument("--json", type=Path, default=RESULTS_JSON, help="JSON results")
    args = parser.parse_args(argv)
    names = list(args.only) if args.only else [s for s in SECTIONS if s != "scale" or args.scale]
    names = [n for n in names if n not in args.skip]

    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info()
    print(f"machine: {machine_line(machine)}\ncommand: {command.strip()}", flush=True)
    start = time.perf_counter()
    sections = run_sections(names, args)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    machine["seconds"] = time.perf_counter() - start
    end_load = "/".join(f"{v:.1f}" for v in machine["load_average_end"] or [])
    for section in sections:  # one block per section: rerunning a section replaces only its own
        body = "\n".join([
            f"## `python -m benchmarks`: {section.key}", "",
            f"- machine: {machine_line(machine)}; load average {end_load} at the end",
            f"- command: `{command.strip()}` (whole run {machine['seconds'] / 60:.1f} min)",
            "- every timing is a median over repeats, warm-up runs excluded; the ratios are measured side by "
            "side in this one run", "",
            sections_markdown([section], level=3),
        ])
        update_block(f"python -m benchmarks: {section.key}", body, args.md)
    write_json(args.json, machine, command.strip(), sections)
    print(f"\n{_summary(sections)}\n\nwrote {args.md} and {args.json}")
    return 1 if any(s.status == "failed" for s in sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())
