"""Probes benchmark: time and peak-memory ratios measured side by side in one run.

    python benchmarks/bench_probes.py [--quick]      (or as part of: python -m benchmarks)

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
import resource
import statistics
import subprocess
import sys
import tempfile
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


def main(quick: bool = False) -> None:
    for row in rows(quick):
        print(f"{row.name}: {row.shown()}  {row.target}  {row.detail}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        torch.set_num_threads(1)
        save = sys.argv[sys.argv.index("--save") + 1] if "--save" in sys.argv else None
        print(json.dumps(child(sys.argv[2], save)))
    else:
        main(quick="--quick" in sys.argv)
