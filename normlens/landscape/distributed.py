"""Grid cells split across ``torch.distributed`` ranks and gathered back.

Launch with ``torchrun --nproc_per_node N script.py``; every rank calls
:func:`normlens.landscape.compute_landscape` with the same arguments. Chunk c
of the missing chunks goes to rank ``c mod N``; each rank persists its own
chunks to a shard file beside the grid file (so a killed distributed run
resumes too), then all ranks all-gather the values and rank 0 writes the grid
file and removes the shards. The grid file must be on a file system all ranks
see. Works with the gloo backend (CPU) and NCCL.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from normlens.landscape.store import GridStore


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(backend: str = "gloo") -> bool:
    """Initialize the default process group from torchrun's environment, if launched by it.

    Returns True if a process group is (now) initialized with more than one rank.
    """
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend)
    return world()[1] > 1


def assign_chunks(missing: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Round-robin share of ``missing`` chunk ids for ``rank``."""
    return np.asarray(missing)[rank::size]


def shard_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.rank{rank}")


def shard_paths(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.rank*"))


def merge_shards(store: GridStore) -> None:
    """Fold every shard file left by an earlier (killed) distributed run into ``store``."""
    if store.path is None:
        return
    for shard in shard_paths(store.path):
        store.merge(shard)


def remove_shards(path: Path | None) -> None:
    if path is None:
        return
    for shard in shard_paths(path):
        shard.unlink(missing_ok=True)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def gather_store(store: GridStore) -> None:
    """All-gather every rank's done chunks into ``store`` on every rank."""
    _, size = world()
    if size == 1:
        return
    local = [
        torch.from_numpy(store.loss.astype(np.float64)),
        torch.from_numpy(store.accuracy.astype(np.float64)),
        torch.from_numpy(store.chunk_done.astype(np.float64)),
    ]
    gathered = []
    for tensor in local:
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor)
        gathered.append(parts)
    for loss, accuracy, done in zip(*gathered):
        store.take_chunks(done.numpy() > 0.5, loss.numpy(), accuracy.numpy())
