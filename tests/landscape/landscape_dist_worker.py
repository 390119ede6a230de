"""Worker for the 2-process gloo test (spawned; must be importable by name)."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist


def _bare_normlens_package() -> None:
    """Register ``normlens`` without running its __init__ (which imports transformer_lens,
    ~6 s per spawned process); the workers only need ``normlens.landscape``."""
    if "normlens" not in sys.modules:
        spec = importlib.util.find_spec("normlens")
        package = types.ModuleType("normlens")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["normlens"] = package


_bare_normlens_package()

from landscape_helpers import TinyClassifier, tiny_tokens

KWARGS = dict(span=1.0, resolution=7, points_per_batch=5, items_per_batch=2, accuracy=True)


def run_single(grid_file=None, on_chunk=None):
    from normlens.landscape import compute_landscape, random_directions

    model = TinyClassifier()
    return compute_landscape(model, random_directions(model, 2, seed=0), tiny_tokens(), grid_file=grid_file,
                             on_chunk=on_chunk, **KWARGS)


def worker(rank: int, world: int, init_file: str, out_dir: str, grid_file: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = run_single(grid_file)
        result.save(Path(out_dir) / f"rank{rank}.npz")
    finally:
        dist.destroy_process_group()
