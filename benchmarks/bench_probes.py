"""Probes benchmark: time and peak-memory ratios measured side by side in one run.

    python benchmarks/bench_probes.py [--quick] [--train-step]     (or as part of: python -m benchmarks)

1. Forward with all activation-statistics probes attached vs a plain forward
   (zoo model, 4 layers, width 256, 16 x 256 tokens, CPU, no_grad). Median of
   several alternating runs. Target <= 1.3x.
2. Context 1024 (4 x 1024 tokens): plain forward, probes, and ``run_with_cache``
   followed by the same statistics computed from the cache. Time ratios
   (target: probes <= run_with_cache) and additional peak memory over a plain
   forward (target: run_with_cache needs >= 10x more).
3. Attention entropy from q and k at context 4096 (1 sequence, 4 heads, d_head
   64): peak memory of the block-wise computation vs materializing the pattern
   and reducing it (target <= 1/16), and the largest difference in entropy.
4. A training step after the statistics probe has run once in the process / the
   same step before it, under contention (busy processes beside it; target
   <= 1.05), and torch's intra-op thread count before and after the probe
   (:func:`bench_train_step_after_probes`).

Peak memory: each measurement runs in a fresh Python process (so no allocator
cache is shared) that builds its inputs, records its peak resident set size
(VmHWM in /proc/self/status, a high-water mark, reset to the current RSS
by writing 5 to /proc/self/clear_refs just before), runs the operation once and
records the peak again; the difference is the operation's peak
additional memory. "Additional over a plain forward" subtracts the plain
forward's own difference measured the same way. The children's entropies come
back through files in a temporary folder.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import normlens  # noqa: E402
from benchmarks.results import Row  # noqa: E402
from benchmarks.timing import alternating_medians  # noqa: E402
from normlens.probes.attach import attach, model_info  # noqa: E402
from normlens.probes.attention import attention_entropy, pattern_entropy  # noqa: E402
from normlens.probes.stats import ActivationStatsProbe, default_stat_sites  # noqa: E402


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _model(n_ctx: int):
    return normlens.build_model(norm="ln", n_layers=4, d_model=256, n_heads=4, n_ctx=n_ctx).eval()


def _tokens(batch: int, n_ctx: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, n_ctx), generator=torch.Generator().manual_seed(0))


def _stats_from_cache(model, tokens):
    info, _ = model_info(model)
    sites = default_stat_sites(info)
    probe = ActivationStatsProbe()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        for site in sites:
            probe.update(site, cache[site])
    probe.result()
    return probe


def _with_probes(model, tokens, finish: bool = False):
    probe = ActivationStatsProbe()
    with attach(model, probe), torch.no_grad():
        model(tokens)
    if finish:
        probe.result()
    return probe


def _plain(model, tokens):
    with torch.no_grad():
        model(tokens)


def child(mode: str, save: str | None = None) -> dict:
    """One memory measurement in this (fresh) process; entropies are saved to ``save``."""
    if mode.startswith("entropy"):
        g = torch.Generator().manual_seed(0)
        q, k = (torch.randn(1, 4096, 4, 64, generator=g) for _ in range(2))
        _reset_peak()
        before = _peak_kb()
        if mode == "entropy_qk":
            ent = attention_entropy(q, k, block_size=256).entropy
        else:
            s = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8.0  # (1, 4, 4096, 4096)
            s = s.masked_fill(torch.triu(torch.ones(4096, 4096, dtype=torch.bool), 1), float("-inf"))
            ent = pattern_entropy(torch.softmax(s, -1)).entropy
        after = _peak_kb()
        if save:
            torch.save(ent, save)
        return {"peak_mb": (after - before) / 1024}
    model, tokens = _model(1024), _tokens(4, 1024)
    # warm-up on 4 x 64 tokens: the bridge registers its own hooks on first use, and the probe's
    # compiled reduction is loaded and its worker thread started once per process (not activation memory)
    _plain(model, tokens[:, :64])
    {"plain": _plain, "probes": _with_probes, "cache": _stats_from_cache}[mode](model, tokens[:, :64])
    _reset_peak()
    before = _peak_kb()
    {"plain": _plain, "probes": lambda m, t: _with_probes(m, t, True), "cache": _stats_from_cache}[mode](
        model, tokens)
    return {"peak_mb": (_peak_kb() - before) / 1024}


def _train_step_child(n_layers: int, d_model: int, n_ctx: int, batch: int, repeats: int,
                      torch_threads: int) -> dict:
    """In a fresh process: training steps before the probe, one probed forward, the same steps after."""
    from normlens.losses import next_token_loss

    torch.set_num_threads(torch_threads)
    model = normlens.build_model(norm="ln", n_layers=n_layers, d_model=d_model, n_heads=4, n_ctx=n_ctx)
    tokens = _tokens(batch, n_ctx)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad()
        next_token_loss(model, tokens).backward()
        opt.step()

    def timed() -> tuple[float, float]:
        wall, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        return statistics.median(wall), statistics.median(cpu)

    step()  # warm-up
    wall_before, cpu_before = timed()
    threads_before = torch.get_num_threads()
    _with_probes(model.eval(), tokens, finish=True)
    model.train()
    threads_after = torch.get_num_threads()
    wall_after, cpu_after = timed()
    return {"step_before_s": wall_before, "step_after_s": wall_after, "cpu_before_s": cpu_before,
            "cpu_after_s": cpu_after, "torch_threads_before": threads_before,
            "torch_threads_after": threads_after}


def bench_train_step_after_probes(n_busy: int = 3, n_layers: int = 8, d_model: int = 128, n_ctx: int = 128,
                                  batch: int = 8, repeats: int = 5, torch_threads: int | None = None) -> dict:
    """A training step after ``ActivationStatsProbe`` ran once in the process / before it, under contention.

    Runs in a fresh child process (a probe run earlier in this process would spoil "before"), with
    ``n_busy`` busy-looping processes started beside it and killed afterwards. ``torch_threads``
    (default: half the logical CPUs, torch's own default on a machine with two hardware threads per
    core) is set in the child, so that a probe which changed torch's thread count shows up both in
    ``torch_threads_after`` and in the step time. Returns the child's medians (wall and CPU seconds
    per step, before and after), the thread counts, and ``ratio`` = wall after / wall before
    (target <= 1.05) and ``cpu_ratio``.
    """
    if torch_threads is None:
        torch_threads = max(1, (os.cpu_count() or 2) // 2)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n_busy)]
    try:
        out = subprocess.run([sys.executable, __file__, "--child", "train_step", json.dumps(
            [n_layers, d_model, n_ctx, batch, repeats, torch_threads])], capture_output=True, text=True, check=True)
    finally:
        for proc in busy:
            proc.kill()
        for proc in busy:
            proc.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result |= {"ratio": result["step_after_s"] / result["step_before_s"],
               "cpu_ratio": result["cpu_after_s"] / result["cpu_before_s"], "n_busy": n_busy,
               "shape": f"{n_layers}L d{d_model}, {batch}x{n_ctx} tokens"}
    return result


def _run_child(mode: str, save: str | None = None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode] + (["--save", save] if save else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_overhead(repeats: int) -> dict:
    """[1] forward with statistics probes / plain forward at 16 x 256, then the cost of result()."""
    model, tokens = _model(256), _tokens(16, 256)
    last = {}
    times = alternating_medians({
        "plain": lambda: _plain(model, tokens),
        "probes": lambda: last.update(probe=_with_probes(model, tokens)),
        "result": lambda: last["probe"].result(),
    }, repeats)
    return {"plain_s": times["plain"], "probes_s": times["probes"], "result_s": times["result"],
            "ratio": times["probes"] / times["plain"],
            "ratio_with_result": (times["probes"] + times["result"]) / times["plain"]}


def bench_context_1024(repeats: int, memory_repeats: int = 3) -> dict:
    """[2] plain forward, probes and run_with_cache + statistics at 4 x 1024: time and added peak memory."""
    model, tokens = _model(1024), _tokens(4, 1024)
    times = alternating_medians({
        "plain": lambda: _plain(model, tokens),
        "probes": lambda: _with_probes(model, tokens, True),
        "cache": lambda: _stats_from_cache(model, tokens),
    }, repeats)
    # median of fresh processes per mode: the peak RSS of one run varies by ~+-20 MB
    mem = {mode: statistics.median(_run_child(mode)["peak_mb"] for _ in range(memory_repeats))
           for mode in ("plain", "probes", "cache")}
    extra_probe = max(mem["probes"] - mem["plain"], 0.0)
    extra_cache = mem["cache"] - mem["plain"]
    return {"plain_s": times["plain"], "probes_s": times["probes"], "cache_s": times["cache"],
            "probes_over_plain": times["probes"] / times["plain"],
            "cache_over_plain": times["cache"] / times["plain"],
            "probes_over_cache": times["probes"] / times["cache"],
            "plain_mb": mem["plain"], "probes_extra_mb": extra_probe, "cache_extra_mb": extra_cache,
            "memory_ratio": extra_cache / max(extra_probe, 1.0)}


def bench_entropy_memory() -> dict:
    """[3] attention entropy at context 4096: block-wise from q/k vs the materialized pattern."""
    with tempfile.TemporaryDirectory(prefix="normlens-bench-") as tmp:
        qk = _run_child("entropy_qk", f"{tmp}/qk.pt")
        pat = _run_child("entropy_pattern", f"{tmp}/pattern.pt")
        a, b = torch.load(f"{tmp}/qk.pt"), torch.load(f"{tmp}/pattern.pt")
    return {"qk_mb": qk["peak_mb"], "pattern_mb": pat["peak_mb"],
            "ratio": pat["peak_mb"] / max(qk["peak_mb"], 0.1), "max_abs_diff": float((a - b).abs().max())}


def rows(quick: bool = False) -> list[Row]:
    """Every probes comparison as benchmark rows (for ``python -m benchmarks``)."""
    repeats = 3 if quick else 7
    o = bench_overhead(repeats)
    c = bench_context_1024(repeats, 1 if quick else 3)
    e = bench_entropy_memory()
    return [
        Row("probes", "forward with statistics probes ÷ plain forward (16×256, 4 layers, d 256)", o["ratio"],
            target="≤ 1.3x", detail=f"{o['probes_s'] * 1e3:.0f} ms vs {o['plain_s'] * 1e3:.0f} ms; then result() "
            f"{o['result_s'] * 1e3:.0f} ms (forward + result ÷ plain {o['ratio_with_result']:.2f}x)", extra=o),
        Row("probes", "probes ÷ plain forward (4×1024)", c["probes_over_plain"],
            detail=f"{c['probes_s'] * 1e3:.0f} ms vs {c['plain_s'] * 1e3:.0f} ms", extra=c),
        Row("probes", "run_with_cache + statistics ÷ plain forward (4×1024)", c["cache_over_plain"],
            detail=f"{c['cache_s'] * 1e3:.0f} ms"),
        Row("probes", "probes ÷ (run_with_cache + statistics), time (4×1024)", c["probes_over_cache"], target="≤ 1x"),
        Row("probes", "added peak memory over a plain forward: probes (4×1024)", c["probes_extra_mb"], "MB",
            detail=f"plain forward itself {c['plain_mb']:.0f} MB"),
        Row("probes", "added peak memory over a plain forward: run_with_cache (4×1024)", c["cache_extra_mb"], "MB"),
        Row("probes", "run_with_cache added memory ÷ probes added memory (4×1024)", c["memory_ratio"],
            target="≥ 10x", detail="probe extra floored at 1 MB"),
        Row("probes", "attention entropy at context 4096: pattern peak ÷ block-wise q/k peak", e["ratio"],
            target="≥ 16x", detail=f"{e['qk_mb']:.1f} MB vs {e['pattern_mb']:.0f} MB; max |ΔH| "
            f"{e['max_abs_diff']:.1e}", extra=e),
    ]


def train_step_rows(quick: bool = False) -> list[Row]:
    """[4] as benchmark rows (for ``python -m benchmarks``)."""
    r = bench_train_step_after_probes(repeats=3 if quick else 5)
    detail = (f"{r['shape']}, {r['n_busy']} busy processes beside it; {r['step_before_s'] * 1e3:.0f} → "
              f"{r['step_after_s'] * 1e3:.0f} ms per step; torch threads {r['torch_threads_before']} → "
              f"{r['torch_threads_after']}")
    return [
        Row("train_step", "training step after the probe ÷ before, under contention (wall)", r["ratio"],
            target="≤ 1.05x", detail=detail, extra=r),
        Row("train_step", "training step after the probe ÷ before, CPU time", r["cpu_ratio"], target="≤ 1.05x",
            detail=f"{r['cpu_before_s']:.2f} → {r['cpu_after_s']:.2f} CPU-s per step"),
    ]


def main(quick: bool = False, train_step_only: bool = False) -> None:
    found = train_step_rows(quick) if train_step_only else rows(quick) + train_step_rows(quick)
    for row in found:
        print(f"{row.name}: {row.shown()}  {row.target}  {row.detail}")

    # 4. a training step after the probe / before, under contention
    r = bench_train_step_after_probes(repeats=3 if quick else 5)
    print(f"[4] training step after the statistics probe / before ({r['shape']}, {r['n_busy']} busy processes "
          f"beside it): {r['ratio']:.2f}x wall ({r['step_after_s'] * 1e3:.0f} ms vs "
          f"{r['step_before_s'] * 1e3:.0f} ms), "
          f"{r['cpu_ratio']:.2f}x CPU; torch threads {r['torch_threads_before']} -> {r['torch_threads_after']} "
          f"(target <= 1.05x, threads unchanged)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child" and sys.argv[2] == "train_step":
        print(json.dumps(_train_step_child(*json.loads(sys.argv[3]))))
    elif len(sys.argv) >= 3 and sys.argv[1] == "--child":
        torch.set_num_threads(1)
        save = sys.argv[sys.argv.index("--save") + 1] if "--save" in sys.argv else None
        print(json.dumps(child(sys.argv[2], save)))
    else:
        main(quick="--quick" in sys.argv, train_step_only="--train-step" in sys.argv)
