"""Benchmark normlens's fused kernels against torch eager, torch.compile and Liger-Kernel (GPU only).

Run:  python benchmarks/bench_kernels.py                 (writes its block of benchmarks/RESULTS.md)
      python benchmarks/bench_kernels.py --quick         (fewer widths, no torch.compile)
      python benchmarks/bench_kernels.py --compile-only  (no GPU needed: compiles every kernel
                                                          variant for sm_90, prints registers/spills)

Effective bandwidth with the usual byte counts: forward 2·M·N·elt
(read x, write y), backward 3·M·N·elt (read x and dy, write dx), plus the
parameters (read w [and b]; backward also writes dw [and db]). Each timing is
the median of ``triton.testing.do_bench`` medians over three repeats, all
measured side by side in the same run. Also: the cost of the statistics side
outputs (our forward with and without storing mean/rstd), and the attention
entropy kernel against materialize-then-reduce and against the SDPA forward.

Benchmark-only dependency: liger-kernel (skipped when not installed). On a
machine without CUDA this prints a message and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.results import RESULTS_MD, Row, update_block  # noqa: E402

WIDTHS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
QUICK_WIDTHS = [1024, 4096, 16384, 65536]
ELEMENTS = 1 << 25  # M·N per problem: 64 MiB of bf16 per tensor, far beyond L2
ENTROPY_CONTEXTS = [1024, 2048, 4096]
EPS = 1e-5


def _median_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    import triton.testing

    return statistics.median(
        triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") for _ in range(repeats)
    )


def _gbps(n_bytes: float, ms: float) -> float:
    return n_bytes / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------
# providers: name -> (forward fn(x, w, b, alpha) -> y)
# ---------------------------------------------------------------------------


def _torch_dyt(x, w, b, alpha):
    return torch.tanh(alpha * x) * w + b


def _providers(op: str, compile_too: bool) -> dict[str, Callable]:
    from normlens.kernels.dyt import fused_dyt
    from normlens.kernels.layer_norm import fused_layer_norm
    from normlens.kernels.rms_norm import fused_rms_norm

    eager = {
        "ln": lambda x, w, b, a: F.layer_norm(x, (x.shape[-1],), w, b, EPS),
        "rms": lambda x, w, b, a: F.rms_norm(x, (x.shape[-1],), w, EPS),
        "dyt": _torch_dyt,
    }[op]
    ours = {
        "ln": lambda x, w, b, a: fused_layer_norm(x, w, b, EPS),
        "rms": lambda x, w, b, a: fused_rms_norm(x, w, EPS),
        "dyt": lambda x, w, b, a: fused_dyt(x, a, w, b),
    }[op]
    out = {"normlens": ours, "torch eager": eager}
    if compile_too:
        out["torch.compile"] = torch.compile(eager, dynamic=False)
    liger = _liger(op)
    if liger is not None:
        out["liger-kernel"] = liger
    return out


def _liger(op: str) -> Callable | None:
    try:
        if op == "ln":
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction

            return lambda x, w, b, a: LigerLayerNormFunction.apply(x, w, b, EPS)
        if op == "rms":
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction

            return lambda x, w, b, a: LigerRMSNormFunction.apply(x, w, EPS)
        try:
            from liger_kernel.ops.dyt import LigerDyTFunction
        except ImportError:
            from liger_kernel.ops.element_wise_dyt import LigerDyTFunction
        return lambda x, w, b, a: LigerDyTFunction.apply(x, a.reshape(1), w, b)
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None


def _problem(n: int, dtype: torch.dtype, device: torch.device):
    m = max(1, ELEMENTS // n)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, n, device=device, dtype=dtype, generator=g)
    w = (1 + 0.1 * torch.randn(n, device=device, generator=g)).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(n, device=device, generator=g)).to(dtype).requires_grad_()
    alpha = torch.tensor(0.5, device=device, requires_grad=True)
    dy = torch.randn(m, n, device=device, dtype=dtype, generator=g)
    return m, x, w, b, alpha, dy


def _check_correct(op: str, fn: Callable, x, w, b, alpha) -> float:
    """Max |fused - fp32 torch reference| on a slice of the problem (the kernels' first compiled run)."""
    from normlens.kernels import reference

    xs = x[:64]
    with torch.no_grad():
        y = fn(xs, w, b, alpha).float()
        if op == "ln":
            ref = reference.layer_norm(xs.float(), w.float(), b.float(), EPS)[0]
        elif op == "rms":
            ref = reference.rms_norm(xs.float(), w.float(), EPS)[0]
        else:
            ref = reference.dyt(xs.float(), alpha.float(), w.float(), b.float())
    return (y - ref).abs().max().item()


def bench_norms(widths: list[int], compile_too: bool, device: torch.device) -> list[dict]:
    rows = []
    for op in ("ln", "rms", "dyt"):
        for dtype in (torch.bfloat16, torch.float32):
            elt = torch.finfo(dtype).bits // 8
            for n in widths:
                torch._dynamo.reset()  # a fresh torch.compile per shape: no recompile limit, no fallback
                providers = _providers(op, compile_too)
                m, x, w, b, alpha, dy = _problem(n, dtype, device)
                n_params = 1 if op == "rms" else 2
                fwd_bytes = 2 * m * n * elt + n_params * n * elt
                bwd_bytes = 3 * m * n * elt + 2 * n_params * n * elt
                err = _check_correct(op, providers["normlens"], x, w, b, alpha)
                for name, fn in providers.items():
                    xg = x.detach().requires_grad_()
                    try:
                        with torch.no_grad():
                            fwd_ms = _median_ms(lambda: fn(x, w, b, alpha))
                        y = fn(xg, w, b, alpha)
                        params = [xg, w] + ([] if op == "rms" else [b]) + ([alpha] if op == "dyt" else [])
                        bwd_ms = _median_ms(
                            lambda: torch.autograd.grad(y, params, dy, retain_graph=True)
                        )
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        print(f"  {op} {dtype} N={n} {name}: failed ({type(exc).__name__}: {exc})")
                        continue
                    row = dict(
                        op=op, dtype=str(dtype).replace("torch.", ""), n=n, m=m, provider=name,
                        fwd_ms=fwd_ms, fwd_gbps=_gbps(fwd_bytes, fwd_ms),
                        bwd_ms=bwd_ms, bwd_gbps=_gbps(bwd_bytes, bwd_ms),
                        max_err=err if name == "normlens" else float("nan"),
                    )
                    rows.append(row)
                    print(
                        f"  {op:3s} {row['dtype']:8s} N={n:6d} {name:14s} "
                        f"fwd {row['fwd_gbps']:7.0f} GB/s  bwd {row['bwd_gbps']:7.0f} GB/s"
                    )
                del x, w, b, dy
                torch.cuda.empty_cache()
    return rows


def bench_stats_cost(widths: list[int], device: torch.device) -> list[dict]:
    """Our forward storing mean/rstd vs the same kernel without the side outputs."""
    from normlens.kernels.layer_norm import norm_forward

    rows = []
    for op in ("ln", "rms"):
        for n in widths:
            m, x, w, b, _, _ = _problem(n, torch.bfloat16, device)
            bias = None if op == "rms" else b.detach()
            wd = w.detach()
            with_ms = _median_ms(lambda: norm_forward(x, wd, bias, EPS, rms=op == "rms"))
            without_ms = _median_ms(
                lambda: norm_forward(x, wd, bias, EPS, rms=op == "rms", store_stats=False)
            )
            rows.append(dict(op=op, n=n, with_ms=with_ms, without_ms=without_ms,
                             cost_pct=100 * (with_ms / without_ms - 1)))
            print(f"  stats {op} N={n:6d}: +{rows[-1]['cost_pct']:.2f} %")
    return rows


def bench_entropy(contexts: list[int], device: torch.device) -> list[dict]:
    from normlens.kernels import reference
    from normlens.kernels.attention_entropy import fused_attention_entropy as attention_entropy

    rows = []
    batch, heads, d_head = 1, 16, 64
    for n in contexts:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(batch, heads, n, d_head, device=device, dtype=torch.bfloat16, generator=g)
                   for _ in range(3))
        ours = attention_entropy(q, k, causal=True)
        ent_r, _ = reference.attention_entropy(q.float(), k.float(), causal=True)
        err = (ours.entropy - ent_r).abs().max().item()
        del ent_r

        def materialized():
            return reference.attention_entropy(q, k, causal=True)

        def peak(fn):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20

        row = dict(
            n=n,
            ours_ms=_median_ms(lambda: attention_entropy(q, k, causal=True)),
            materialized_ms=_median_ms(materialized),
            sdpa_ms=_median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
            ours_mib=peak(lambda: attention_entropy(q, k, causal=True)),
            materialized_mib=peak(materialized),
            max_err=err,
        )
        rows.append(row)
        print(f"  entropy N={n}: ours {row['ours_ms']:.3f} ms, materialized {row['materialized_ms']:.3f} ms, "
              f"SDPA {row['sdpa_ms']:.3f} ms, max err {err:.2e}")
    return rows


# ---------------------------------------------------------------------------
# --compile-only: compile every launched kernel variant for a GPU target, no GPU needed
# ---------------------------------------------------------------------------


def _compile(jit_fn, types: dict, values: dict, consts: dict, arch: int, num_warps: int):
    """Compile ``jit_fn`` for sm_<arch> with the specialization a launch would get.

    types: runtime argument -> Triton type; values: sample integer arguments (an
    int equal to 1 becomes a constant, a multiple of 16 gets the divisibility
    hint, as at launch); pointers are assumed 16-byte aligned.
    """
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(inspect.signature(jit_fn.fn).parameters):
        if name in consts:
            signature[name], constexprs[(i,)] = "constexpr", consts[name]
        elif types[name].startswith("*"):
            signature[name], attrs[(i,)] = types[name], [["tt.divisibility", 16]]
        elif types[name] == "i32" and values.get(name) == 1:
            signature[name], constexprs[(i,)] = "constexpr", 1
        else:
            signature[name] = types[name]
            if types[name] == "i32" and values.get(name, 3) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=jit_fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _resource_usage(kernel) -> str:
    """'REG n STACK n' from cuobjdump on the cubin (triton ships cuobjdump), or '?'."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool) or "cubin" not in kernel.asm:
        return "?"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    hit = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
    return f"REG {hit.group(1)} STACK {hit.group(2)}" if hit else "?"


def compile_only(arch: int) -> int:
    """Compile the variants the launchers pick (GPU tiling) and print registers and spills."""
    from normlens.kernels import attention_entropy as ae
    from normlens.kernels import dyt, layer_norm
    from normlens.kernels._launch import (
        MAX_ONE_PASS_N,
        MAX_ONE_PASS_N_BWD,
        num_warps_bwd,
        num_warps_for,
        row_tiling,
    )

    cpu = torch.device("cpu")
    failures = 0

    def report(label, fn):
        nonlocal failures
        try:
            print(f"  {label:58s} {_resource_usage(fn())}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every failing variant
            failures += 1
            print(f"  {label:58s} FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)

    for dt in ("bf16", "fp32"):
        for n in WIDTHS:
            m = ELEMENTS // n
            rows = {"M": m, "N": n, "stride_xm": n, "stride_xn": 1, "stride_dym": n, "stride_dyn": 1,
                    "rows_per_group": 64}
            fwd_t = row_tiling(m, n, cpu, max_one_pass=MAX_ONE_PASS_N, n_row_groups=1)
            bwd_t = row_tiling(m, n, cpu, max_one_pass=MAX_ONE_PASS_N_BWD, n_row_groups=1, backward=True)
            for rms in (False, True):
                name = "rms" if rms else "ln"
                types = {"X": f"*{dt}", "Y": f"*{dt}", "W": f"*{dt}", "B": f"*{dt}", "Mean": "*fp32",
                         "Rstd": "*fp32", "M": "i32", "N": "i32", "stride_xm": "i32", "stride_xn": "i32",
                         "eps": "fp32"}
                consts = {"IS_RMS": rms, "HAS_BIAS": not rms, "STORE_STATS": True, "ONE_PASS": fwd_t.one_pass,
                          "BLOCK_M": fwd_t.block_m, "BLOCK_N": fwd_t.block_n}
                report(f"{name} fwd {dt} N={n} ({fwd_t.block_m}x{fwd_t.block_n}, {fwd_t.num_warps} warps)",
                       lambda: _compile(layer_norm._norm_fwd_kernel, types, rows, consts, arch, fwd_t.num_warps))
                types = {"X": f"*{dt}", "DY": f"*{dt}", "W": f"*{dt}", "Mean": "*fp32", "Rstd": "*fp32",
                         "C1": "*fp32", "C2": "*fp32", "DX": f"*{dt}", "DW_PART": "*fp32", "DB_PART": "*fp32",
                         "M": "i32", "N": "i32", "stride_xm": "i32", "stride_xn": "i32", "stride_dym": "i32",
                         "stride_dyn": "i32", "rows_per_group": "i32"}
                consts = {"IS_RMS": rms, "HAS_DB": not rms, "ONE_PASS": bwd_t.one_pass,
                          "BLOCK_M": bwd_t.block_m, "BLOCK_N": bwd_t.block_n}
                report(f"{name} bwd {dt} N={n} ({bwd_t.block_m}x{bwd_t.block_n}, {bwd_t.num_warps} warps)",
                       lambda: _compile(layer_norm._norm_bwd_kernel, types, rows, consts, arch, bwd_t.num_warps))
                if not bwd_t.one_pass:
                    types = {k: v for k, v in types.items() if k not in ("DX", "DW_PART", "DB_PART", "rows_per_group")}
                    report(f"{name} bwd row terms {dt} N={n}",
                           lambda: _compile(layer_norm._norm_bwd_row_terms_kernel, types, rows,
                                            {"IS_RMS": rms, "BLOCK_N": bwd_t.block_n}, arch, bwd_t.num_warps))
            bm, bn = dyt._blocks(m, n, None, None)  # the launcher's own tiles
            types = {"X": f"*{dt}", "Y": f"*{dt}", "Alpha": "*fp32", "W": f"*{dt}", "B": f"*{dt}", "M": "i32",
                     "N": "i32", "stride_xm": "i32", "stride_xn": "i32"}
            report(f"dyt fwd {dt} N={n} ({bm}x{bn})",
                   lambda: _compile(dyt._dyt_fwd_kernel, types, rows, {"HAS_BIAS": True, "BLOCK_M": bm, "BLOCK_N": bn},
                                    arch, num_warps_for(bm * bn)))
            types = {"X": f"*{dt}", "DY": f"*{dt}", "Alpha": "*fp32", "W": f"*{dt}", "DX": f"*{dt}",
                     "DW_PART": "*fp32", "DB_PART": "*fp32", "DA_PART": "*fp32", "M": "i32", "N": "i32",
                     "stride_xm": "i32", "stride_xn": "i32", "stride_dym": "i32", "stride_dyn": "i32",
                     "rows_per_group": "i32"}
            report(f"dyt bwd {dt} N={n} ({bm}x{bn})",
                   lambda: _compile(dyt._dyt_bwd_kernel, types, rows, {"HAS_DB": True, "BLOCK_M": bm, "BLOCK_N": bn},
                                    arch, num_warps_bwd(bm * bn)))
    for dt in ("bf16", "fp16", "fp32"):
        for causal, masked in ((True, False), (True, True), (False, False)):
            strides = ["stride_qb", "stride_qh", "stride_qm", "stride_qd", "stride_kb", "stride_kh", "stride_kn",
                       "stride_kd", "stride_mb", "stride_mn"]
            types = {"Q": f"*{dt}", "K": f"*{dt}", "KEEP": "*i8", "ENT": "*fp32", "NORM_ENT": "*fp32",
                     "n_heads": "i32", "n_q": "i32", "n_k": "i32", "d_head": "i32", **{s: "i32" for s in strides},
                     "scale_log2": "fp32"}
            values = {"n_heads": 16, "n_q": 4096, "n_k": 4096, "d_head": 64, "stride_qd": 1, "stride_kd": 1,
                      "stride_mn": 1, "stride_qm": 64, "stride_kn": 64}
            consts = {"CAUSAL": causal, "HAS_MASK": masked, "UPCAST": False, "DOT_PRECISION": "tf32x3",
                      "BLOCK_Q": 64, "BLOCK_K": 64, "BLOCK_D": 64}
            report(f"entropy {dt} causal={causal} mask={masked} (64x64, d 64)",
                   lambda: _compile(ae._attention_entropy_kernel, types, values, consts, arch, 4))
    print(f"compile-only for sm_{arch}: {failures} failure(s)")
    return 1 if failures else 0


def _markdown(norm_rows, stats_rows, entropy_rows, command: str) -> str:
    dev = torch.cuda.get_device_name()
    lines = [
        "## Fused-kernel benchmarks",
        "",
        f"- device: {dev} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"triton {__import__('triton').__version__}, Python {platform.python_version()})",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- problems: M·N = {ELEMENTS} elements; bytes: forward 2·M·N·elt, backward 3·M·N·elt, plus parameters",
        "",
        "### Norms: effective bandwidth, GB/s (forward / backward)",
        "",
    ]
    providers = sorted({r["provider"] for r in norm_rows}, key=lambda p: (p != "normlens", p))
    for op in ("ln", "rms", "dyt"):
        for dtype in ("bfloat16", "float32"):
            sel = [r for r in norm_rows if r["op"] == op and r["dtype"] == dtype]
            if not sel:
                continue
            lines += [f"#### {op}, {dtype}", "", "| N | " + " | ".join(providers) + " | normlens max err |",
                      "|---|" + "---|" * (len(providers) + 1)]
            for n in sorted({r["n"] for r in sel}):
                cells = []
                for p in providers:
                    hit = [r for r in sel if r["n"] == n and r["provider"] == p]
                    cells.append(f"{hit[0]['fwd_gbps']:.0f} / {hit[0]['bwd_gbps']:.0f}" if hit else "–")
                err = [r["max_err"] for r in sel if r["n"] == n and r["provider"] == "normlens"]
                err_cell = f"{err[0]:.2e}" if err else "–"
                lines.append(f"| {n} | " + " | ".join(cells) + f" | {err_cell} |")
            lines.append("")
    lines += ["### Cost of the statistics side outputs (bf16 forward)", "",
              "| op | N | with stats, ms | without, ms | cost |", "|---|---|---|---|---|"]
    for r in stats_rows:
        lines.append(f"| {r['op']} | {r['n']} | {r['with_ms']:.4f} | {r['without_ms']:.4f} | {r['cost_pct']:+.2f} % |")
    lines += ["", "### Attention entropy (bf16, batch 1, 16 heads, d_head 64, causal)", "",
              "| context | ours, ms | materialize-then-reduce, ms | speed-up | SDPA forward, ms | ours, MiB | materialized, MiB | max err |",
              "|---|---|---|---|---|---|---|---|"]
    for r in entropy_rows:
        lines.append(
            f"| {r['n']} | {r['ours_ms']:.3f} | {r['materialized_ms']:.3f} | "
            f"{r['materialized_ms'] / r['ours_ms']:.1f}x | {r['sdpa_ms']:.3f} | "
            f"{r['ours_mib']:.1f} | {r['materialized_mib']:.1f} | {r['max_err']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer widths and no torch.compile")
    parser.add_argument("--out", type=Path, default=RESULTS_MD,
                        help="the Markdown results file (this script replaces its own block in it)")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile every kernel variant for a GPU target and print registers/spills; "
                             "needs no GPU (TRITON_INTERPRET must be unset)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability for --compile-only (90 = H100/H200)")
    args = parser.parse_args(argv)
    if args.compile_only:
        from normlens.kernels import interpreting

        if interpreting():
            print("bench_kernels --compile-only: unset TRITON_INTERPRET (the interpreter compiles nothing)")
            return 2
        print(f"compiling for sm_{args.arch}:")
        return compile_only(args.arch)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device here; the kernel benchmarks need a GPU. "
              "Correctness runs on CPU with: TRITON_INTERPRET=1 python -m pytest tests/kernels")
        return 0
    from normlens.kernels import interpreting, is_available

    if not is_available() or interpreting():
        print("bench_kernels: needs triton compiled for the GPU (triton installed, TRITON_INTERPRET unset)")
        return 0
    device = torch.device("cuda")
    widths = QUICK_WIDTHS if args.quick else WIDTHS
    print(f"device: {torch.cuda.get_device_name()}")
    print("norms:")
    norm_rows = bench_norms(widths, compile_too=not args.quick, device=device)
    print("statistics side outputs:")
    stats_rows = bench_stats_cost([w for w in widths if w >= 1024], device)
    print("attention entropy:")
    entropy_rows = bench_entropy(ENTROPY_CONTEXTS, device)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    update_block("bench_kernels", _markdown(norm_rows, stats_rows, entropy_rows, command), args.out)
    print(f"wrote {args.out}")
    return 0


def gpu_unavailable() -> str | None:
    """Why the kernel benchmarks cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    from normlens.kernels import interpreting, is_available

    if not is_available():
        return "triton is not installed"
    if interpreting():
        return "TRITON_INTERPRET=1 is set: the interpreter times nothing (unset it)"
    return None


def rows(quick: bool = False) -> list[Row]:
    """Kernel bandwidths (bf16, N ≥ 4096), statistics cost and the entropy kernel as benchmark rows."""
    device = torch.device("cuda")
    widths = [4096, 16384] if quick else [4096, 16384, 65536]
    norm_rows = bench_norms(widths, compile_too=False, device=device)
    stats_rows = bench_stats_cost(widths, device)
    entropy_rows = bench_entropy(ENTROPY_CONTEXTS, device)
    out = []
    for r in norm_rows:
        if r["dtype"] != "bfloat16":
            continue
        peers = {p["provider"]: p for p in norm_rows
                 if (p["op"], p["dtype"], p["n"]) == (r["op"], r["dtype"], r["n"]) and p["provider"] != r["provider"]}
        if r["provider"] == "normlens":
            detail = "; ".join(f"{name} {p['fwd_gbps']:.0f} / {p['bwd_gbps']:.0f}" for name, p in peers.items())
            out.append(Row("kernels", f"{r['op']} bf16 N={r['n']}: forward bandwidth", r["fwd_gbps"], "GB/s",
                           target="≥ 2900 (H100), 4150 (H200)", detail=f"max err {r['max_err']:.1e}; forward / "
                           f"backward GB/s of the others: {detail}", extra=r))
            out.append(Row("kernels", f"{r['op']} bf16 N={r['n']}: backward bandwidth", r["bwd_gbps"], "GB/s",
                           target="≥ 2500 (H100), 3580 (H200)"))
    for r in stats_rows:
        out.append(Row("kernels", f"statistics side outputs, {r['op']} N={r['n']}: extra time", r["cost_pct"], "%",
                       target="≤ 3 %", extra=r))
    for r in entropy_rows:
        out.append(Row("kernels", f"entropy kernel, context {r['n']}: materialize-then-reduce ÷ kernel time",
                       r["materialized_ms"] / r["ours_ms"], target="≥ 2x at 4096", extra=r,
                       detail=f"{r['ours_ms']:.3f} ms vs {r['materialized_ms']:.3f} ms (SDPA forward "
                       f"{r['sdpa_ms']:.3f} ms); memory {r['ours_mib']:.1f} vs {r['materialized_mib']:.0f} MiB; "
                       f"max err {r['max_err']:.1e}"))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
