"""Scale benchmark: every analysis on a GPT-2-small-shaped model, time and peak memory per row.

    python benchmarks/bench_scale.py [--quick] [--device cpu|cuda] [--skip ROW ...]
    (or as a section of: python -m benchmarks --scale)

The model is built locally, never downloaded: ``transformers.GPT2Config()``
defaults (12 layers, d_model 768, 12 heads, vocabulary 50257) with
``n_positions=4096`` so the probes can run at context 4096, random weights,
``save_pretrained`` to a temporary folder and loaded back with
``normlens.models.loading.load_model`` (the path users take). Tokens are random
ids (a compute benchmark; no tokenizer needed).

Rows, each with its wall time (median over repeats after a warm-up on a short
input) and its peak additional memory (CPU: the peak resident set size above
the RSS before the row, the kernel's high-water mark VmHWM reset through
/proc/self/clear_refs; CUDA: ``max_memory_allocated`` above the allocation
before the row):

* bridge forward at 1×1024 and 1×4096 (the baselines);
* ``run_with_cache`` at 1×1024 (and 1×4096 when the machine has the memory for
  its stored attention patterns);
* probes (activation statistics + attention entropy) at 1×1024 and 1×4096;
* one Hessian-vector product and one gradient at 1×256 tokens;
* the top-3 Hessian eigenvalues by Lanczos, with the residual reached and the
  tolerance asked for (skipped with the estimate when the Lanczos basis would
  not fit in memory);
* an 11×11 filter-normalized random plane on 1×256 tokens.

A row that fails prints its error and the run goes on: the HF-bridge paths of
curvature and landscapes are being extended (issue 12), and this script is
written against their public API only.
"""
from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.results import Row  # noqa: E402
from normlens.resources import available_memory  # noqa: E402

MB = 1 << 20
ROWS = ("forward", "cache", "probes", "hvp", "eigen", "landscape")
EIGEN_K, EIGEN_TOL = 3, 1e-3
EIGEN_BASIS_BYTES = 2 << 30  # Lanczos vectors kept in memory (the rest spilled): top-3 of GPT-2 small within 8 GB
EIGEN_STEPS = 30  # a fixed-length run (compute_eigenpairs' first run for k=3), so the cost is known in advance


# --------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak additional memory of the code inside the ``with`` block, in MB (CPU RSS or CUDA allocations)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb = float("nan")

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
            except OSError:
                pass
            self._base = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self._base) / MB
        else:
            peak = _status_kb("VmHWM")
            if peak is not None and self._base is not None:
                self.mb = (peak - self._base) / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], device: torch.device, repeats: int,
            warmup: Callable[[], Any] | None = None) -> dict:
    """Median wall time of ``fn`` over ``repeats`` (after ``warmup``, untimed) and its peak memory (last run)."""
    if warmup is not None:
        warmup()
        _sync(device)
    times, out = [], None
    for i in range(repeats):
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            out = fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        if i < repeats - 1:
            out = None
    return {"seconds": statistics.median(times), "peak_mb": peak.mb, "value": out}


# --------------------------------------------------------------------------- model


def build_gpt2_small(folder: Path, device: torch.device, n_positions: int = 4096):
    """GPT2Config() defaults with ``n_positions``, random weights, saved and loaded through normlens."""
    import transformers

    from normlens.models.loading import load_model

    config = transformers.GPT2Config(n_positions=n_positions)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(folder)
    del hf
    gc.collect()
    return load_model(str(folder), device=device).eval()


def _tokens(n: int, vocab: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n)).to(device)


# --------------------------------------------------------------------------- rows


def _forward(model, tokens):
    with torch.no_grad():
        return model(tokens)


def _cache(model, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return len(cache)


def _probes(model, tokens):
    from normlens.probes.attach import attach
    from normlens.probes.attention import AttentionEntropyProbe
    from normlens.probes.stats import ActivationStatsProbe

    stats, entropy = ActivationStatsProbe(), AttentionEntropyProbe()
    with attach(model, [stats, entropy]), torch.no_grad():
        model(tokens)
    return stats.result(), entropy.result()


def _cache_bytes(model, n: int) -> int:
    """What run_with_cache stores at 1×n: attention scores and patterns (2·h·n² per layer) and ~30 (n, d) tensors."""
    cfg = model.cfg
    return 4 * cfg.n_layers * (2 * cfg.n_heads * n * n + 30 * n * cfg.d_model)


def run(quick: bool = False, device: str | None = None, skip: tuple[str, ...] = (),
        log: Callable[[str], None] = print) -> dict:
    """Every row of the scale benchmark; returns {row: {seconds, peak_mb, ...} or {error}}."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    repeats = 1 if quick else 3
    results: dict[str, dict] = {}

    def row(name: str, fn: Callable[[], dict]) -> None:
        if name.split("@")[0] in skip:
            return
        log(f"  {name} ...")
        try:
            results[name] = fn()
            shown = {k: v for k, v in results[name].items() if k != "value"}
            log(f"  {name}: {shown}")
        except Exception as error:  # noqa: BLE001 - report per row and go on
            results[name] = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
            log(f"  {name}: FAILED {results[name]['error']}")
        gc.collect()

    with tempfile.TemporaryDirectory(prefix="normlens-scale-") as tmp:
        start = time.perf_counter()
        model = build_gpt2_small(Path(tmp) / "gpt2-small", dev)
        results["model"] = {"seconds": time.perf_counter() - start, "device": str(dev),
                            "n_params": sum(p.numel() for p in model.parameters()),
                            "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
                            "n_ctx": model.cfg.n_ctx, "d_vocab": model.cfg.d_vocab}
        log(f"  model: {results['model']}")
        vocab = model.cfg.d_vocab
        short = _tokens(64, vocab, dev)
        for n in (1024, 4096):
            tokens = _tokens(n, vocab, dev)
            row(f"forward@{n}", lambda: measure(lambda: _forward(model, tokens) is not None, dev, repeats,
                                                 lambda: _forward(model, short)))
            available = available_memory(dev)
            need = _cache_bytes(model, n)
            if available is not None and need * 1.5 > available:
                if "cache" not in skip:
                    results[f"cache@{n}"] = {"skipped": f"run_with_cache at 1×{n} stores about {need / MB:.0f} MB; "
                                                        f"{available / MB:.0f} MB available"}
            else:
                row(f"cache@{n}", lambda: measure(lambda: _cache(model, tokens), dev, repeats,
                                                   lambda: _cache(model, short)))
            row(f"probes@{n}", lambda: measure(lambda: _probes(model, tokens) is not None, dev, repeats,
                                                lambda: _probes(model, short)))
        row("hvp", lambda: _hvp(model, _tokens(256, vocab, dev), dev, repeats))
        row("eigen", lambda: _eigen(model, _tokens(256, vocab, dev), dev))
        row("landscape", lambda: _landscape(model, _tokens(256, vocab, dev), dev, repeats=1))
    return results


def _hvp(model, tokens, dev, repeats) -> dict:
    from normlens.curvature import HessianOperator

    op = HessianOperator(model, tokens)
    n = op.shape[0]
    v = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(dev)
    grad = measure(op.gradient, dev, repeats, op.gradient)
    hvp = measure(lambda: (op @ v) is not None, dev, repeats, lambda: op @ v)
    return {"seconds": hvp["seconds"], "peak_mb": hvp["peak_mb"], "gradient_seconds": grad["seconds"],
            "gradient_peak_mb": grad["peak_mb"], "ratio": hvp["seconds"] / grad["seconds"], "n_params": n}


def _eigen(model, tokens, dev) -> dict:
    from normlens.curvature import HessianOperator, compute_eigenpairs

    op = HessianOperator(model, tokens)
    n = op.shape[0]
    # the basis is bounded: EIGEN_BASIS_BYTES in memory, the rest memory-mapped in a temporary folder
    spill = tempfile.mkdtemp(prefix="normlens-bench-spill-")
    kwargs: dict[str, Any] = {"seed": 0, "tol": EIGEN_TOL, "warn": False, "max_basis_bytes": EIGEN_BASIS_BYTES,
                              "spill_dir": spill, "n_steps": EIGEN_STEPS, "max_steps": EIGEN_STEPS}
    start = time.perf_counter()
    with PeakMemory(dev) as peak:
        result = compute_eigenpairs(op, EIGEN_K, **kwargs)
        _sync(dev)
    seconds = time.perf_counter() - start
    shutil.rmtree(spill, ignore_errors=True)
    scale = float(abs(result.eigenvalues).max())
    return {"seconds": seconds, "peak_mb": peak.mb,
            "eigenvalues": [float(x) for x in result.eigenvalues],
            "max_relative_residual": float(max(result.residuals) / scale) if scale > 0 else float("nan"),
            "tol": EIGEN_TOL, "converged": bool(all(result.converged)), "n_matvecs": int(result.n_matvecs),
            "n_params": n, "basis_memory_mb": EIGEN_BASIS_BYTES / MB, "lanczos_steps": EIGEN_STEPS}


def _landscape(model, tokens, dev, repeats: int) -> dict:
    from normlens.landscape import compute_landscape, random_directions

    start = time.perf_counter()
    directions = random_directions(model, 2, normalization="filter", one_d="zero", seed=0)
    t_directions = time.perf_counter() - start
    out = measure(lambda: compute_landscape(model, directions, tokens, span=1.0, resolution=11),
                  dev, repeats)
    result = out.pop("value")
    forward = measure(lambda: _forward(model, tokens) is not None, dev, 3, lambda: _forward(model, tokens))
    per_point = out["seconds"] / result.loss.size
    return {**out, "directions_seconds": t_directions, "per_point_seconds": per_point,
            "forward_seconds": forward["seconds"], "per_point_over_forward": per_point / forward["seconds"],
            "center_loss": float(result.center_loss), "forward_path": result.info.get("forward_path", "")}


# --------------------------------------------------------------------------- report


def rows_from(results: dict) -> list[Row]:
    """The scale results as benchmark rows (ratios against the plain forward and run_with_cache)."""
    out: list[Row] = []
    model = results.get("model", {})
    where = f"GPT-2-small shape, {model.get('n_params', 0) / 1e6:.1f} M parameters, {model.get('device', '')}"

    def get(name):
        r = results.get(name)
        return r if r and "seconds" in r else None

    def failed(name, label):
        r = results.get(name, {})
        if "error" in r or "skipped" in r:
            out.append(Row("scale", label, None, detail=("failed: " + r["error"]) if "error" in r
                           else "skipped: " + r["skipped"]))
            return True
        return False

    for n in (1024, 4096):
        fwd = get(f"forward@{n}")
        if not failed(f"forward@{n}", f"bridge forward 1×{n}") and fwd:
            out.append(Row("scale", f"bridge forward 1×{n}: time", fwd["seconds"], "s",
                           detail=f"peak +{fwd['peak_mb']:.0f} MB; {where}", extra=fwd))
        cache = get(f"cache@{n}")
        if not failed(f"cache@{n}", f"run_with_cache 1×{n}") and cache and fwd:
            out.append(Row("scale", f"run_with_cache ÷ forward, 1×{n}", cache["seconds"] / fwd["seconds"],
                           detail=f"{cache['seconds']:.2f} s; peak +{cache['peak_mb']:.0f} MB", extra=cache))
        probes = get(f"probes@{n}")
        if not failed(f"probes@{n}", f"probes (stats + entropy) 1×{n}") and probes and fwd:
            extra = f"; ÷ run_with_cache {probes['seconds'] / cache['seconds']:.2f}x, memory " \
                    f"{probes['peak_mb']:.0f} vs {cache['peak_mb']:.0f} MB" if cache else ""
            out.append(Row("scale", f"probes (stats + entropy) ÷ forward, 1×{n}", probes["seconds"] / fwd["seconds"],
                           detail=f"{probes['seconds']:.2f} s; peak +{probes['peak_mb']:.0f} MB{extra}", extra=probes))
    hvp = get("hvp")
    if not failed("hvp", "one HVP, 1×256") and hvp:
        out.append(Row("scale", "one HVP ÷ one gradient, 1×256", hvp["ratio"],
                       detail=f"{hvp['seconds']:.2f} s, peak +{hvp['peak_mb']:.0f} MB over {hvp['n_params']} "
                       f"parameters", extra=hvp))
    eig = get("eigen")
    if not failed("eigen", f"top-{EIGEN_K} eigenvalues, 1×256") and eig:
        out.append(Row("scale", f"top-{EIGEN_K} Hessian eigenvalues, 1×256: time", eig["seconds"], "s",
                       detail=f"max residual/|λ| {eig['max_relative_residual']:.1e} (tol {eig['tol']:g}, converged "
                       f"{eig['converged']}), {eig['n_matvecs']} products, {eig.get('lanczos_steps', '?')} Lanczos steps with "
                       f"{eig.get('basis_memory_mb', 0):.0f} MB of the basis in memory (the rest memory-mapped), "
                       f"peak +{eig['peak_mb']:.0f} MB", extra=eig))
    land = get("landscape")
    if not failed("landscape", "11×11 landscape, 1×256") and land:
        out.append(Row("scale", "11×11 landscape, 1×256: time per point ÷ one forward", land["per_point_over_forward"],
                       detail=f"{land['seconds']:.1f} s ({land['forward_path']}), directions "
                       f"{land['directions_seconds']:.1f} s, peak +{land['peak_mb']:.0f} MB", extra=land))
    return out


def rows(quick: bool = False) -> list[Row]:
    return rows_from(run(quick))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed run per row instead of three")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--skip", nargs="*", default=[], choices=ROWS, help="rows to leave out")
    args = parser.parse_args(argv)
    results = run(args.quick, args.device, tuple(args.skip))
    print()
    for r in rows_from(results):
        print(f"{r.name}: {r.shown()}  {r.detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
