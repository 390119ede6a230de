"""Products all-reduced over 2 gloo processes equal one process over all the data."""
from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from curvature_helpers import make_mlp, mlp_batch, mlp_loss
from normlens.curvature import DistributedOperator, HessianOperator, compute_eigenpairs, estimate_trace

BATCHES = [(8, 11), (16, 12), (8, 13)]  # (size, seed): rank 0 gets the first two, rank 1 the last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = BATCHES[:2] if rank == 0 else BATCHES[2:]
        local = HessianOperator(make_mlp(), [mlp_batch(n, s) for n, s in mine], mlp_loss)
        op = DistributedOperator(local)
        r = compute_eigenpairs(op, 5, seed=4)
        t = estimate_trace(op, 30, seed=4)
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.append(r.eigenvalues, t.estimate))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    # fork (where the OS has it) spares each child re-importing torch and transformer_lens
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method=method)
    op = HessianOperator(make_mlp(), [mlp_batch(n, s) for n, s in BATCHES], mlp_loss)
    single = np.append(compute_eigenpairs(op, 5, seed=4).eigenvalues, estimate_trace(op, 30, seed=4).estimate)
    for rank in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), single, rtol=1e-9)


def test_requires_an_initialized_process_group():
    import pytest

    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedOperator(HessianOperator(make_mlp(), mlp_batch(), mlp_loss))
