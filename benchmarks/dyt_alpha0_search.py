"""Search DyT's initial alpha per slot kind against LayerNorm at the demo size.

One command: ``python benchmarks/dyt_alpha0_search.py [--out dyt-alpha0.json] [--seeds 0]``.
Trains the demo-size model (2 layers, d_model 64, 4 heads, ctx 64; 300 steps,
TrainConfig defaults) on the embedded corpus with LayerNorm and with DyT at
each setting, and records the final validation loss of each run. Settings
are searched coordinate-wise: alpha0 for the attention-input norms, then
the MLP-input norms, then the final norm, each over ``--grid`` with the other
kinds at their best value so far. Results are appended to ``--out`` as they
finish, so a rerun skips what is done.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from normlens.data import load_embedded
from normlens.io import write_json
from normlens.models import ZooConfig, build_model
from normlens.train import TrainConfig, train

KINDS = ("attn", "mlp", "final")


def run(norm: str, alphas: dict[str, float], seed: int, splits) -> dict:
    fields = {f"dyt_alpha0_{kind}": value for kind, value in alphas.items()} if norm == "dyt" else {}
    config = ZooConfig(norm=norm, n_layers=2, d_model=64, n_heads=4, n_ctx=64, seed=seed, **fields)
    torch.manual_seed(seed)
    model = build_model(config)
    started = time.perf_counter()
    result = train(model, splits, TrainConfig(seed=seed), progress=False)
    return {"norm": norm, "alphas": alphas if norm == "dyt" else None, "seed": seed,
            "val_loss": result.final_val_loss, "diverged": result.diverged,
            "seconds": round(time.perf_counter() - started, 1)}


def key(norm: str, alphas: dict[str, float] | None, seed: int) -> str:
    return json.dumps([norm, alphas if norm == "dyt" else None, seed], sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dyt-alpha0.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--grid", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--start", type=float, nargs=3, default=[0.5, 0.5, 0.5],
                        metavar=("ATTN", "MLP", "FINAL"), help="alpha0 per kind to start from")
    parser.add_argument("--only", type=float, nargs=3, default=None, metavar=("ATTN", "MLP", "FINAL"),
                        help="run just this setting (and LayerNorm) for every seed")
    args = parser.parse_args()
    runs = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    done = {key(r["norm"], r["alphas"], r["seed"]): r for r in runs}

    def measure(norm: str, alphas: dict[str, float]) -> float:
        losses = []
        for seed in args.seeds:
            k = key(norm, alphas, seed)
            if k not in done:
                splits = load_embedded(seed=seed)
                done[k] = run(norm, alphas, seed, splits)
                runs.append(done[k])
                write_json(args.out, {"runs": runs})
                print(json.dumps(done[k]), flush=True)
            losses.append(done[k]["val_loss"])
        return sum(losses) / len(losses)

    ln = measure("ln", {})
    best = dict(zip(KINDS, args.start))
    if args.only is not None:
        best = dict(zip(KINDS, args.only))
        print(f"LN {ln:.4f}  DyT {best}: {measure('dyt', best):.4f}")
        return
    best_loss = measure("dyt", best)
    for kind in KINDS:
        for value in args.grid:
            trial = dict(best, **{kind: value})
            loss = measure("dyt", trial)
            if loss < best_loss:
                best, best_loss = trial, loss
        print(f"after {kind}: best {best} -> {best_loss:.4f} (LN {ln:.4f}, gap {best_loss - ln:+.4f})",
              flush=True)
    print(f"LN {ln:.4f}; best DyT {best}: {best_loss:.4f}; gap {best_loss - ln:+.4f} nats")


if __name__ == "__main__":
    main()
