"""How much memory a Lanczos basis needs, and whether it fits, decided before allocating.

A Lanczos run keeps every basis vector (full reorthogonalization), so m steps
on an operator of size n hold m x n numbers: at n = 124 M (GPT-2 small) in
float32 that is 0.5 GB per step. :func:`plan_basis` splits the vectors between
memory (the operator's device, up to ``max_basis_bytes``) and a memory-mapped
file (the rest); :func:`check_plan` compares the plan with the free memory
of the device and the free space of the spill folder and refuses with the numbers.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch

from normlens.resources import available_memory, format_bytes

logger = logging.getLogger("normlens.curvature")

WORK_VECTORS = 3  # the current vector, the previous one and the product A q, besides the basis


class MemoryBudgetError(ValueError):
    """The requested computation does not fit in the memory (or disk) available."""


@dataclass(frozen=True)
class BasisPlan:
    """Where the vectors of a Lanczos basis will live.

    Attributes:
        n: entries per vector; n_vectors: basis vectors planned.
        dtype / device: of the basis (the operator's dtype, at least float32; its device).
        in_memory: vectors kept on ``device``; spilled: vectors written to a
            memory-mapped file in ``spill_dir``.
        work_vectors: vectors of working memory besides the basis.
    """

    n: int
    n_vectors: int
    dtype: torch.dtype
    device: str
    in_memory: int
    spilled: int
    work_vectors: int
    spill_dir: str
    max_basis_bytes: int | None
    label: str = "Lanczos basis"

    @property
    def vector_bytes(self) -> int:
        return self.n * torch.empty((), dtype=self.dtype).element_size()

    @property
    def memory_bytes(self) -> int:
        """Basis vectors in memory plus the working vectors."""
        return (self.in_memory + self.work_vectors) * self.vector_bytes

    @property
    def spill_bytes(self) -> int:
        return self.spilled * self.vector_bytes

    def describe(self) -> str:
        """One line: what the basis needs and where it goes."""
        dtype = str(self.dtype).replace("torch.", "")
        line = (
            f"{self.label}: {self.n_vectors} vectors x {self.n:,} {dtype} = "
            f"{format_bytes(self.n_vectors * self.vector_bytes)}"
        )
        if self.spilled:
            line += (
                f"; {self.in_memory} in memory on {self.device} ({format_bytes(self.in_memory * self.vector_bytes)}),"
                f" {self.spilled} spilled to a memory-mapped file in {self.spill_dir} "
                f"({format_bytes(self.spill_bytes)})"
            )
        else:
            line += f" on {self.device}"
        return line + f", plus {self.work_vectors} working vectors ({format_bytes(self.work_vectors * self.vector_bytes)})"


def basis_dtype(dtype: torch.dtype) -> torch.dtype:
    """The basis keeps the operator's dtype, but never less than float32 (orthogonality needs it)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def plan_basis(
    n: int,
    n_vectors: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_basis_bytes: int | None = None,
    spill_dir: str | os.PathLike | None = None,
    work_vectors: int = WORK_VECTORS,
    label: str = "Lanczos basis",
) -> BasisPlan:
    """Split ``n_vectors`` basis vectors of ``n`` entries between memory and a spill file.

    Args:
        max_basis_bytes: bytes of basis kept in memory; the vectors beyond it go
            to a memory-mapped file in ``spill_dir``. None: all in memory.
        spill_dir: folder of the spill file; default the system's temporary folder.

    >>> plan = plan_basis(1000, 10, dtype=torch.float64, max_basis_bytes=4 * 8000)
    >>> plan.in_memory, plan.spilled, plan.memory_bytes  # 4 basis + 3 working vectors of 8000 bytes
    (4, 6, 56000)
    """
    if max_basis_bytes is not None and (not isinstance(max_basis_bytes, int) or max_basis_bytes < 0):
        raise ValueError(f"max_basis_bytes must be a non-negative integer (bytes), got {max_basis_bytes!r}")
    dtype = basis_dtype(dtype)
    vector_bytes = n * torch.empty((), dtype=dtype).element_size()
    in_memory = n_vectors if max_basis_bytes is None else min(n_vectors, max_basis_bytes // max(vector_bytes, 1))
    return BasisPlan(
        n=int(n), n_vectors=int(n_vectors), dtype=dtype, device=str(torch.device(device)),
        in_memory=int(in_memory), spilled=int(n_vectors - in_memory), work_vectors=int(work_vectors),
        spill_dir=str(spill_dir or tempfile.gettempdir()), max_basis_bytes=max_basis_bytes, label=label,
    )


def check_plan(plan: BasisPlan, *, log: bool = True) -> BasisPlan:
    """Log the plan and raise :class:`MemoryBudgetError` when it will not fit.

    Memory: the in-memory basis and the working vectors against
    :func:`available_memory` of the device; disk: the spilled vectors against the
    free space of ``spill_dir``.
    """
    if log:
        logger.info(plan.describe())
    free = available_memory(plan.device)
    if free is not None and plan.memory_bytes > free:
        fit = max(free // max(plan.vector_bytes, 1) - plan.work_vectors, 0)
        raise MemoryBudgetError(
            f"{plan.describe()}: needs {format_bytes(plan.memory_bytes)} on {plan.device} but "
            f"{format_bytes(free)} is available. Fewer steps (room for about {fit} vectors), or "
            f"max_basis_bytes=<bytes> to keep part of the basis in a memory-mapped file instead"
        )
    if plan.spilled:
        os.makedirs(plan.spill_dir, exist_ok=True)
        disk = shutil.disk_usage(plan.spill_dir).free
        if plan.spill_bytes > disk:
            raise MemoryBudgetError(
                f"{plan.describe()}: the spill file needs {format_bytes(plan.spill_bytes)} but "
                f"{plan.spill_dir} has {format_bytes(disk)} free; pass spill_dir=<a larger disk> or fewer steps"
            )
    return plan


def max_vectors(plan: BasisPlan) -> int | None:
    """The most basis vectors that fit under this plan's budget, free memory and disk (None: no limit known)."""
    vector = max(plan.vector_bytes, 1)
    free = available_memory(plan.device)
    room = None if free is None else max(free // vector - plan.work_vectors, 0)  # vectors in memory
    if plan.max_basis_bytes is None:
        return room
    budget = plan.max_basis_bytes // vector
    if room is not None and budget > room:
        return room  # the budget itself does not fit in memory
    os.makedirs(plan.spill_dir, exist_ok=True)
    return int(budget + shutil.disk_usage(plan.spill_dir).free // vector)
