"""A training step after the statistics probe has run ÷ before it, under CPU contention.

    python benchmarks/bench_train_step.py [--quick] [--busy N]

Issue 14 saw a process's later CPU work slow down (0.27 → 2.7–4.8 CPU-seconds
per 8-layer training step at load average 8–10) once ``ActivationStatsProbe``
had run in it. This measures it: ``--busy N`` spinning processes (default: two
per core) load the machine; a fresh child process builds an 8-layer zoo model
(d_model 128, 8 × 128 tokens, AdamW), times training steps, runs the probe once
(attached forward + ``result()``), and times the same number of steps again.
A control child does the same with a plain forward in place of the probe, so
drift of the machine's load shows as the control's own ratio. Reported: the
median wall and CPU time per step after ÷ before (target ≤ 1.05), for the probe
and the control. The busy processes are stopped (by their own process ids) at
the end.

``benchmarks/bench_probes.py`` may carry its own ``bench_train_step_after_probes``
(the fix of the thread-pool slowdown adds one); ``python -m benchmarks`` prefers
that one and falls back to this.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.results import Row  # noqa: E402

# a spinner stops by itself when its parent is gone (so a killed benchmark leaves none behind)
SPIN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"


def _steps(model, optimizer, tokens, n: int) -> tuple[list[float], list[float]]:
    from normlens.losses import next_token_loss

    wall, cpu = [], []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        next_token_loss(model, tokens).backward()
        optimizer.step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def child(mode: str, n_steps: int) -> dict:
    """In a fresh process: steps, then the probe (mode "probe") or a plain forward ("control"), then steps."""
    import normlens
    from normlens.probes.attach import attach
    from normlens.probes.stats import ActivationStatsProbe

    model = normlens.build_model(norm="ln", n_layers=8, d_model=128, n_heads=4, n_ctx=128, seed=0).train()
    tokens = torch.randint(0, 256, (8, 128), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _steps(model, optimizer, tokens, 2)  # warm-up: allocator, autograd, optimizer state
    wall_before, cpu_before = _steps(model, optimizer, tokens, n_steps)
    with torch.no_grad():
        if mode == "probe":
            probe = ActivationStatsProbe()
            with attach(model, probe):
                model(tokens)
            probe.result()
        else:
            model(tokens)
    wall_after, cpu_after = _steps(model, optimizer, tokens, n_steps)
    med = statistics.median
    return {"wall_before": med(wall_before), "wall_after": med(wall_after),
            "cpu_before": med(cpu_before), "cpu_after": med(cpu_after), "threads": torch.get_num_threads()}


def _run_child(mode: str, n_steps: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(n_steps)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_train_step_after_probes(quick: bool = False, busy: int | None = None) -> dict:
    """Median training-step time after the probe ÷ before, in fresh processes under ``busy`` spinners."""
    busy = 2 * (os.cpu_count() or 1) if busy is None else busy
    n_steps = 4 if quick else 8
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        time.sleep(1.0)  # let the load build up
        load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        probe, control = _run_child("probe", n_steps), _run_child("control", n_steps)
        load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    finally:
        for p in spinners:
            p.terminate()
        for p in spinners:
            p.wait()
    return {
        "ratio": probe["wall_after"] / probe["wall_before"],
        "cpu_ratio": probe["cpu_after"] / probe["cpu_before"],
        "control_ratio": control["wall_after"] / control["wall_before"],
        "control_cpu_ratio": control["cpu_after"] / control["cpu_before"],
        "probe": probe, "control": control, "busy": busy, "n_steps": n_steps,
        "load_start": load_start, "load_end": load_end,
    }


def rows_from(result) -> list[Row]:
    """Benchmark rows from this module's result dict, or from a peer's float / dict / rows."""
    if isinstance(result, list):
        return result
    if not isinstance(result, dict):
        return [Row("train_step", "training step after probes ÷ before, under contention", float(result),
                    target="≤ 1.05")]
    out = [Row("train_step", "training step after probes ÷ before, under contention (wall)", result.get("ratio"),
               target="≤ 1.05", extra=result,
               detail=(f"{result['busy']} busy processes, load {result['load_start']:.1f}–{result['load_end']:.1f}; "
                       f"median of {result['n_steps']} steps: {result['probe']['wall_before'] * 1e3:.0f} → "
                       f"{result['probe']['wall_after'] * 1e3:.0f} ms") if "probe" in result else "")]
    if "cpu_ratio" in result:
        out.append(Row("train_step", "training step after probes ÷ before, CPU time", result["cpu_ratio"],
                       target="≤ 1.05", detail=f"{result['probe']['cpu_before']:.2f} → "
                       f"{result['probe']['cpu_after']:.2f} CPU-s per step" if "probe" in result else ""))
    if "control_ratio" in result:
        out.append(Row("train_step", "control: a plain forward in place of the probe (wall; CPU)",
                       result["control_ratio"], detail=f"CPU {result['control_cpu_ratio']:.2f}x "
                       "(the machine's own drift)"))
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
    else:
        busy_arg = int(sys.argv[sys.argv.index("--busy") + 1]) if "--busy" in sys.argv else None
        for row in rows_from(bench_train_step_after_probes("--quick" in sys.argv, busy_arg)):
            print(f"{row.name}: {row.shown()}  {row.target}  {row.detail}")
