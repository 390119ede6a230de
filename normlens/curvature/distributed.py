"""Curvature products averaged over data held by several processes.

Each rank holds its own batches; rank r computes S_r = sum_{b in r} w_b A_b v and
W_r = sum_{b in r} w_b, one all-reduce (sum) gives sum_r S_r and sum_r W_r, and
every rank gets the same product (sum_r S_r) / (sum_r W_r): the operator of
one process over all the data. Algorithms (Lanczos, trace, density) run on
every rank in lockstep; seed them identically so the random vectors agree.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class DistributedOperator:
    """Wrap a :class:`~normlens.curvature.operators.CurvatureOperator` to all-reduce its products.

    Args:
        op: the local operator (its ``weighted_sum`` is summed over ranks).
        group: the process group (default: the world).

    Every rank must call ``@`` the same number of times (collective calls).
    """

    def __init__(self, op: Any, group: Any = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialized; call dist.init_process_group(...) "
                "on every rank before building a DistributedOperator"
            )
        if not hasattr(op, "weighted_sum"):
            raise TypeError(f"expected a curvature operator with weighted_sum, got {type(op).__name__}")
        self.op = op
        self.group = group
        self.shape = op.shape
        self.dtype = op.dtype
        self.device = op.device
        self.param_names = op.param_names
        self.param_shapes = op.param_shapes
        self.excluded = getattr(op, "excluded", "")
        self.n_matvecs = 0

    accepts_blocks = True  # one all-reduce per (n, m) block

    def __matmul__(self, vectors: torch.Tensor) -> torch.Tensor:
        total, weight = self.op.weighted_sum(vectors)
        buffer = torch.cat([total.reshape(-1), total.new_tensor([weight])])  # (numel + 1,)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group)
        self.n_matvecs += 1 if vectors.dim() == 1 else vectors.shape[1]
        return (buffer[:-1] / buffer[-1]).reshape(total.shape)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.op.unflatten(vector)
