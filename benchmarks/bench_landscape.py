"""Loss-landscape benchmark: ratios measured side by side in one run.

    python benchmarks/bench_landscape.py [--quick] [--threads N] [--rank-threads N]
    (or as part of: python -m benchmarks)

1. A 21 × 21 filter-normalized random plane (span [−1, 1], 1-D parameters
   zeroed) of a zoo model (LayerNorm, 2 layers, d_model 64, ~137k parameters)
   over 8 × 64 held-out tokens: normlens (its batched zoo forward) vs
   loss-landscapes 3.0.6 ``random_plane(..., steps=21, normalization="filter")``
   on the same model and data, both with the same torch thread count (default:
   torch's default, all cores; ``--threads 1`` for one). Median of alternating
   runs. Target ≥ 4×. Also printed: each tool's centre value against the
   model's own loss, and normlens with the generic ``vmap`` path
   (``zoo_fast_path=False``) for models outside the zoo. Repeated (1b) with one
   64-token sequence, where per-point overhead rather than the model's
   arithmetic dominates. With 8 sequences both tools are bound by the model's
   arithmetic (one forward per grid point is the floor for any exact method):
   the matmuls alone of one point take about 0.8 ms on a 2-core VM (at ~145
   GFLOP/s), the whole batched forward about 1.7 ms, loss-landscapes about 5.3 ms.
   Measured here as "the arithmetic floor": the matrix products of one point's
   forward (QKV, scores, values, output, MLP, unembedding: the model's own
   shapes, timed alone with torch, median over repeats), against normlens's
   time per grid point.
2. The same kind of plane on a larger grid (≥ 20 s on one rank) launched with
   ``torchrun --nproc_per_node 2`` vs ``--nproc_per_node 1`` (gloo, CPU), every
   rank with the same number of threads. Timed inside the workers from a
   barrier before the grid to a barrier after it (process start-up and imports
   excluded, and reported separately). Target ≥ 1.7×. The two surfaces are
   checked to be identical.

loss-landscapes is a benchmark-only dependency: ``pip install -e ".[bench]"``. On a shared machine, timings vary with
the other load; every timing is a median of alternating repeats.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.results import Row  # noqa: E402
from benchmarks.timing import median_seconds, seconds  # noqa: E402
from normlens.losses import logits_loss  # noqa: E402


def zoo_model_and_tokens(n_seq: int):
    import normlens
    from normlens.data import eval_windows, load_embedded

    model = normlens.build_model(norm="ln", n_layers=2, d_model=64, n_heads=4, n_ctx=64, d_vocab=256, seed=0).eval()
    # loss-landscapes divides by the norm of each 1-D parameter and crashes on the zero biases of a
    # fresh model (ZeroDivisionError), so give the 1-D parameters small seeded values, as training would
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    tokens = eval_windows(load_embedded(), n_seq=n_seq, n_ctx=64, seed=0)
    return model, tokens


def normlens_plane(model, tokens, steps: int, zoo_fast_path: bool = True):
    from normlens.landscape import compute_landscape, random_directions

    directions = random_directions(model, 2, normalization="filter", one_d="zero", seed=0)
    return compute_landscape(model, directions, tokens, span=1.0, resolution=steps, zoo_fast_path=zoo_fast_path)


def loss_landscapes_plane(model, tokens, steps: int):
    from loss_landscapes import random_plane
    from loss_landscapes.metrics import Loss

    metric = Loss(logits_loss, tokens, tokens)
    # deepcopy_model=True: the library otherwise leaves the model's weights perturbed
    return random_plane(model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True)


def matmul_products(model, n_seq: int, n_ctx: int = 64):
    """The matrix products of one grid point's forward, as a function to time, and their FLOPs.

    Per block: x W_QKV (T, d)·(d, 3d), scores Q Kᵀ (B·h, n, d_h)·(B·h, d_h, n), values P V, the
    output projection (T, d)·(d, d), the MLP (T, d)·(d, d_mlp) and (T, d_mlp)·(d_mlp, d); then the
    unembedding (T, d)·(d, V); T = B·n tokens.
    """
    cfg = model.cfg
    d, h, d_mlp, vocab = cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.d_vocab
    d_head, tokens = d // h, n_seq * n_ctx
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    x, w_qkv, w_o = r(tokens, d), r(d, 3 * d), r(d, d)
    w_in, w_out, w_u, hidden = r(d, d_mlp), r(d_mlp, d), r(d, vocab), r(tokens, d_mlp)
    q, k, pattern = r(n_seq * h, n_ctx, d_head), r(n_seq * h, d_head, n_ctx), r(n_seq * h, n_ctx, n_ctx)
    v = r(n_seq * h, n_ctx, d_head)

    def products():
        with torch.no_grad():
            for _ in range(cfg.n_layers):
                torch.mm(x, w_qkv), torch.bmm(q, k), torch.bmm(pattern, v), torch.mm(x, w_o)
                torch.mm(x, w_in), torch.mm(hidden, w_out)
            torch.mm(x, w_u)

    flops = 2 * (cfg.n_layers * (tokens * d * 3 * d + 2 * n_seq * h * n_ctx * n_ctx * d_head + tokens * d * d
                                 + 2 * tokens * d * d_mlp) + tokens * d * vocab)
    return products, flops


def bench_plane(repeats: int, n_seq: int = 8, label: str = "1.") -> dict | None:
    try:
        import loss_landscapes  # noqa: F401
    except ImportError:
        print(f'{label} loss-landscapes is not installed: pip install -e ".[bench]" (skipped)')
        return None
    model, tokens = zoo_model_and_tokens(n_seq)
    baseline_model = copy.deepcopy(model)
    with torch.no_grad():
        own_loss = float(logits_loss(model(tokens), tokens))
    normlens_plane(model, tokens, 5)  # warm-up (first-call costs of both paths)
    loss_landscapes_plane(baseline_model, tokens, 3)
    normlens_plane(model, tokens, 5, zoo_fast_path=False)
    products, flops = matmul_products(model, n_seq)
    products()
    ours, generic, theirs, floors, last = [], [], [], [], {}
    for _ in range(repeats):  # alternate so all see the same background load (the matmul floor too)
        ours.append(seconds(lambda: last.update(ours=normlens_plane(model, tokens, 21))))
        generic.append(seconds(lambda: last.update(generic=normlens_plane(model, tokens, 21, False))))
        theirs.append(seconds(lambda: last.update(theirs=loss_landscapes_plane(baseline_model, tokens, 21))))
        floors.append(median_seconds(products, 5))
    ours_result, theirs_surface = last["ours"], last["theirs"]  # the last timed runs' values
    t_ours, t_theirs, t_generic = statistics.median(ours), statistics.median(theirs), statistics.median(generic)
    path = ours_result.info["forward_path"]
    max_diff = float(np.nanmax(np.abs(ours_result.loss - last["generic"].loss)))
    print(f"{label} 21×21 filter-normalized plane, zoo LN model (2 layers, d_model 64, "
          f"{sum(p.numel() for p in model.parameters())} params), {n_seq}×64 tokens, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"   normlens        median {t_ours:7.3f} s   runs {[round(t, 3) for t in ours]}  ({path})")
    print(f"   normlens vmap   median {t_generic:7.3f} s   runs {[round(t, 3) for t in generic]}  "
          f"(generic path; max |diff| to the batched path {max_diff:.1e})")
    print(f"   loss-landscapes median {t_theirs:7.3f} s   runs {[round(t, 3) for t in theirs]}")
    print(f"   speed-up normlens vs loss-landscapes: {t_theirs / t_ours:.2f}x (target >= 4x); "
          f"generic vmap path {t_theirs / t_generic:.2f}x")
    print(f"   model's own loss {own_loss:.6f}; normlens f(0,0) {ours_result.center_loss:.6f} "
          f"(|diff| {abs(ours_result.center_loss - own_loss):.1e}); loss-landscapes centre cell "
          f"{theirs_surface[10, 10]:.6f} (|diff| {abs(theirs_surface[10, 10] - own_loss):.1e})")
    t_floor = statistics.median(floors)
    floor = {"seconds": t_floor, "flops": flops, "gflops_per_s": flops / t_floor / 1e9}
    per_point = t_ours / ours_result.loss.size
    print(f"   per grid point: normlens {per_point * 1e3:.2f} ms, its matmuls alone {floor['seconds'] * 1e3:.2f} ms "
          f"({floor['gflops_per_s']:.0f} GFLOP/s) -> {per_point / floor['seconds']:.2f}x the arithmetic floor; "
          f"loss-landscapes {t_theirs / ours_result.loss.size * 1e3:.2f} ms")
    return {"n_seq": n_seq, "threads": torch.get_num_threads(), "forward_path": path,
            "normlens_s": t_ours, "normlens_vmap_s": t_generic, "loss_landscapes_s": t_theirs,
            "speedup": t_theirs / t_ours, "speedup_vmap": t_theirs / t_generic,
            "max_diff_vmap": max_diff, "own_loss": own_loss, "normlens_center": ours_result.center_loss,
            "loss_landscapes_center": float(theirs_surface[10, 10]),
            "per_point_s": per_point, "matmul_floor_s": floor["seconds"], "matmul_gflops_per_s": floor["gflops_per_s"],
            "floor_ratio": per_point / floor["seconds"],
            "n_params": sum(p.numel() for p in model.parameters())}


def worker(args) -> None:
    """One torchrun rank: time a plane between two barriers; rank 0 writes the result."""
    torch.set_num_threads(args.threads)
    from normlens.landscape.distributed import barrier, init_from_env, world

    init_from_env("gloo")
    model, tokens = zoo_model_and_tokens(args.n_seq)
    barrier()
    start = time.perf_counter()
    result = normlens_plane(model, tokens, args.resolution)
    barrier()
    elapsed = time.perf_counter() - start
    if world()[0] == 0:
        np.save(args.out + ".npy", result.loss)
        Path(args.out).write_text(json.dumps({"seconds": elapsed, "world": world()[1]}))


def launch(n_proc: int, resolution: int, n_seq: int, threads: int, out: str) -> tuple[float, float, np.ndarray]:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", f"--nproc_per_node={n_proc}", str(Path(__file__).resolve()),
               "--worker", "--resolution", str(resolution), "--n-seq", str(n_seq),
               "--threads", str(threads), "--out", out]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    data = json.loads(Path(out).read_text())
    return data["seconds"], wall, np.load(out + ".npy")


def bench_ranks(resolution: int, n_seq: int, threads: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        one, two, walls1, walls2 = [], [], [], []
        surfaces = {}
        for r in range(repeats):
            s1, w1, surfaces[1] = launch(1, resolution, n_seq, threads, f"{tmp}/one{r}.json")
            s2, w2, surfaces[2] = launch(2, resolution, n_seq, threads, f"{tmp}/two{r}.json")
            one.append(s1), two.append(s2), walls1.append(w1), walls2.append(w2)
    t1, t2 = statistics.median(one), statistics.median(two)
    print(f"2. {resolution}×{resolution} plane, {n_seq}×64 tokens, torchrun gloo, "
          f"{threads} thread(s) per rank")
    print(f"   1 rank  grid time median {t1:7.2f} s  runs {[round(t, 2) for t in one]}  "
          f"(launch wall incl. imports {statistics.median(walls1):.1f} s)")
    print(f"   2 ranks grid time median {t2:7.2f} s  runs {[round(t, 2) for t in two]}  "
          f"(launch wall incl. imports {statistics.median(walls2):.1f} s)")
    print(f"   speed-up 2 ranks vs 1: {t1 / t2:.2f}x (target >= 1.7x); "
          f"with start-up included {statistics.median(walls1) / statistics.median(walls2):.2f}x")
    same = np.array_equal(surfaces[1], surfaces[2], equal_nan=True)
    print(f"   surfaces identical: {same}")
    return {"resolution": resolution, "n_seq": n_seq, "threads_per_rank": threads, "one_rank_s": t1,
            "two_ranks_s": t2, "speedup": t1 / t2, "one_rank_wall_s": statistics.median(walls1),
            "two_ranks_wall_s": statistics.median(walls2),
            "speedup_with_startup": statistics.median(walls1) / statistics.median(walls2), "identical": same}


def rows(quick: bool = False, threads: int = 0, rank_threads: int = 1) -> list[Row]:
    """The landscape comparisons as benchmark rows: 21×21 plane vs loss-landscapes at 1×64 and 8×64
    tokens, per-point time ÷ the matmul floor, and 2 ranks vs 1."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    out: list[Row] = []
    try:
        repeats = 3 if quick else 5
        for n_seq in (1, 8):
            plane = bench_plane(repeats, n_seq, f"[{n_seq}x64]")
            if plane is None:
                out.append(Row("landscape", f"21×21 plane vs loss-landscapes, {n_seq}×64 tokens", None,
                               detail='skipped: loss-landscapes is not installed (pip install -e ".[bench]")'))
                continue
            out += [
                Row("landscape", f"21×21 plane: loss-landscapes ÷ normlens time, {n_seq}×64 tokens", plane["speedup"],
                    target="≥ 4x", extra=plane,
                    detail=f"{plane['normlens_s']:.2f} s vs {plane['loss_landscapes_s']:.2f} s, {plane['threads']} "
                    f"thread(s), {plane['forward_path']}; generic vmap path {plane['speedup_vmap']:.2f}x; "
                    f"centre |f(0) − loss| {abs(plane['normlens_center'] - plane['own_loss']):.1e}"),
                Row("landscape", f"normlens time per grid point ÷ its matmuls alone (arithmetic floor), {n_seq}×64",
                    plane["floor_ratio"], detail=f"{plane['per_point_s'] * 1e3:.2f} ms vs "
                    f"{plane['matmul_floor_s'] * 1e3:.2f} ms at {plane['matmul_gflops_per_s']:.0f} GFLOP/s"),
            ]
    finally:
        torch.set_num_threads(previous)
    resolution, n_seq_ranks = (31, 8) if quick else (61, 16)
    r = bench_ranks(resolution, n_seq_ranks, rank_threads, 1 if quick else 3)
    out.append(Row("landscape", f"{resolution}×{resolution} plane, 2 ranks vs 1 (gloo, {rank_threads} thread per rank)",
                   r["speedup"], target="≥ 1.7x", extra=r,
                   detail=f"{r['one_rank_s']:.1f} s vs {r['two_ranks_s']:.1f} s between barriers; with process "
                   f"start-up {r['speedup_with_startup']:.2f}x; surfaces identical: {r['identical']}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for part 1, both tools (default: torch's default, all cores)")
    parser.add_argument("--rank-threads", type=int, default=1, help="torch threads per rank in part 2")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=61, help="grid resolution of part 2 (>= 20 s on one rank)")
    parser.add_argument("--n-seq", type=int, default=16, help="evaluation sequences of part 2")
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--skip-plane", action="store_true", help="run part 2 only")
    parser.add_argument("--skip-ranks", action="store_true", help="run part 1 only")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 5
    if not args.skip_plane:
        bench_plane(repeats, 8, "1.")
        # the same with one sequence: per-point overhead dominates (the regime of the reference MLP)
        bench_plane(repeats, 1, "1b.")
    if not args.skip_ranks:
        resolution = args.resolution
        bench_ranks(resolution, args.n_seq, args.rank_threads, 1 if args.quick else 3)


if __name__ == "__main__":
    main()
