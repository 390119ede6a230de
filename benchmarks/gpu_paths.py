"""GPU checks of the probe and landscape paths (run by benchmarks/gpu_check.sh on a CUDA machine).

    python benchmarks/gpu_paths.py probes      # statistics + attention entropy on CUDA vs the same on CPU
    python benchmarks/gpu_paths.py landscape   # batched landscape forward on CUDA vs the same on CPU

Each prints its rows and writes them as JSON to ``--json`` (for RESULTS.md);
exit code 1 when the GPU result disagrees with the CPU one beyond float32
rounding, 2 when there is no CUDA device. Which kernels ran is read from the
torch profiler (kernel names containing "entropy", "norm"; device-to-host
copies counted), so the check does not depend on how a probe routes its work.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEVICE = torch.device("cuda")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _median_cuda(fn, repeats: int = 5) -> float:
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _profile(fn) -> dict:
    """CUDA kernels launched by ``fn`` (names with counts) and its device-to-host copies."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        _sync()
    kernels: dict[str, int] = {}
    dtoh = 0
    for event in prof.key_averages():
        name = event.key
        if "memcpy" in name.lower() and "dtoh" in name.lower().replace(" ", "").replace("devicetohost", "dtoh"):
            dtoh += event.count
        on_device = getattr(event, "device_type", None) == DeviceType.CUDA
        if on_device and any(word in name.lower() for word in ("entropy", "norm")):
            kernels[name[:80]] = event.count
    return {"kernels": kernels, "dtoh_copies": dtoh}


def check_probes(n_seq: int = 4, n_ctx: int = 1024) -> tuple[list[dict], bool]:
    import normlens
    from normlens.probes.attach import attach
    from normlens.probes.attention import AttentionEntropyProbe
    from normlens.probes.stats import ActivationStatsProbe

    def run(model, tokens):
        stats, entropy = ActivationStatsProbe(), AttentionEntropyProbe()
        with attach(model, [stats, entropy]), torch.no_grad():
            model(tokens)
        return stats.result(), entropy.result()

    model = normlens.build_model(norm="ln", n_layers=4, d_model=256, n_heads=4, n_ctx=n_ctx, seed=0).eval()
    tokens = torch.randint(0, 256, (n_seq, n_ctx), generator=torch.Generator().manual_seed(0))
    cpu_stats, cpu_entropy = run(model, tokens)
    model_gpu, tokens_gpu = model.to(DEVICE), tokens.to(DEVICE)
    gpu_stats, gpu_entropy = run(model_gpu, tokens_gpu)
    ent_diff = float(np.nanmax(np.abs(np.asarray(gpu_entropy.entropy_sum) - np.asarray(cpu_entropy.entropy_sum))
                               / np.maximum(np.asarray(cpu_entropy.count), 1)))
    a, b = cpu_stats.to_frame(), gpu_stats.to_frame()
    numeric = list(a.select_dtypes("number").columns)
    scale = np.maximum(np.abs(a[numeric].to_numpy()), 1e-3)
    stats_rel = float(np.nanmax(np.abs(b[numeric].to_numpy() - a[numeric].to_numpy()) / scale))

    def plain():
        with torch.no_grad():
            model_gpu(tokens_gpu)

    t_plain = _median_cuda(plain)
    t_probes = _median_cuda(lambda: run(model_gpu, tokens_gpu))
    prof = _profile(lambda: run(model_gpu, tokens_gpu))
    entropy_kernel = any("entropy" in k.lower() for k in prof["kernels"])
    ok = ent_diff < 1e-3 and stats_rel < 1e-2
    rows = [
        {"check": f"probes on CUDA vs CPU ({n_seq}×{n_ctx}, 4 layers, d 256): mean entropy max |Δ|",
         "value": ent_diff, "ok": ent_diff < 1e-3},
        {"check": "activation statistics max relative difference GPU vs CPU", "value": stats_rel,
         "ok": stats_rel < 1e-2},
        {"check": "attention-entropy Triton kernel launched by the probe", "value": entropy_kernel,
         "ok": entropy_kernel, "detail": ", ".join(f"{k}×{v}" for k, v in prof["kernels"].items())},
        {"check": "device-to-host copies during one probed forward + result()", "value": prof["dtoh_copies"],
         "ok": True},
        {"check": "probes ÷ plain forward on CUDA", "value": t_probes / t_plain, "ok": True,
         "detail": f"{t_probes * 1e3:.1f} ms vs {t_plain * 1e3:.1f} ms"},
    ]
    return rows, ok and entropy_kernel


def check_landscape(resolution: int = 21, n_seq: int = 8) -> tuple[list[dict], bool]:
    from benchmarks.bench_landscape import zoo_model_and_tokens
    from normlens.landscape import compute_landscape, random_directions

    model, tokens = zoo_model_and_tokens(n_seq)  # the landscape benchmark's model (2 layers, d 64)
    directions = random_directions(model, 2, normalization="filter", one_d="zero", seed=0)
    cpu = compute_landscape(model, directions, tokens, resolution=resolution)
    model_gpu, tokens_gpu = model.to(DEVICE), tokens.to(DEVICE)
    directions_gpu = random_directions(model_gpu, 2, normalization="filter", one_d="zero", seed=0)
    last = {}

    def on_gpu(fast: bool = True):
        last["r"] = compute_landscape(model_gpu, directions_gpu, tokens_gpu, resolution=resolution,
                                      zoo_fast_path=fast)

    t_gpu = _median_cuda(on_gpu, 3)
    gpu = last["r"]
    t_vmap = _median_cuda(lambda: on_gpu(False), 3)
    diff = float(np.nanmax(np.abs(gpu.loss - cpu.loss)))
    rows = [
        {"check": f"{resolution}×{resolution} plane on CUDA vs CPU ({n_seq}×64 tokens): max |Δloss|", "value": diff,
         "ok": diff < 1e-3, "detail": f"forward path {gpu.info.get('forward_path')}"},
        {"check": "time per grid point on CUDA (batched zoo forward)", "value": t_gpu / gpu.loss.size * 1e3,
         "unit": "ms", "ok": True, "detail": f"whole plane {t_gpu:.3f} s; generic vmap path {t_vmap:.3f} s"},
    ]
    try:
        from benchmarks.bench_landscape import loss_landscapes_plane

        t_theirs = _median_cuda(lambda: loss_landscapes_plane(model_gpu, tokens_gpu, resolution), 3)
        rows.append({"check": "loss-landscapes ÷ normlens on CUDA", "value": t_theirs / t_gpu, "ok": True,
                     "detail": f"{t_theirs:.3f} s vs {t_gpu:.3f} s"})
    except ImportError:
        rows.append({"check": "loss-landscapes on CUDA", "value": None, "ok": True,
                     "detail": "skipped: loss-landscapes is not installed here"})
    except Exception as error:  # noqa: BLE001 - the peer's failure is not ours
        rows.append({"check": "loss-landscapes on CUDA", "value": None, "ok": True,
                     "detail": f"failed: {type(error).__name__}: {error}"[:200]})
    return rows, diff < 1e-3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("probes", "landscape"))
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_paths: no CUDA device here")
        return 2
    rows, ok = (check_probes if args.what == "probes" else check_landscape)()
    for r in rows:
        value = r["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {shown} {r.get('unit', '')} {r.get('detail', '')}")
    if args.json is not None:
        args.json.write_text(json.dumps({"what": args.what, "ok": ok, "device": torch.cuda.get_device_name(),
                                         "rows": rows}, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
