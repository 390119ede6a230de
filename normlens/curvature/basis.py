"""The Lanczos basis: orthonormal vectors in memory, spilled to a memory-mapped file past a budget.

Vectors are stored as rows of blocks. A block lives on the operator's device
while the in-memory bytes stay within ``max_bytes``; later blocks are NumPy
memory maps of a temporary file (unlinked at once, so nothing is left behind
even after a crash); their pages are released after every write and read
(``madvise(MADV_DONTNEED)``), so the process holds at most one spilled block
at a time and the rest stays in the file. Spilling keeps full reorthogonalization: a spilled vector
is read back bit for bit, so a run with a budget gives the basis of a run without
one (up to the order of floating-point sums), at the price of reading the spilled
blocks once per projection pass (twice when a second pass is needed).
"""
from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np
import torch

BLOCK_BYTES = 1 << 28  # at most 256 MB per block (a single vector may be larger: then one per block)
DGKS_ETA = 1 / 2**0.5  # reorthogonalize again when a pass shrinks the norm below this fraction
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def dot64(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 22) -> float:
    """a . b accumulated in float64, chunk by chunk (no float64 copy of a whole vector)."""
    if a.dtype == torch.float64:
        return float(a @ b)
    total = 0.0
    for start in range(0, a.numel(), chunk):
        total += float(a[start:start + chunk].double() @ b[start:start + chunk].double())
    return total


def norm64(a: torch.Tensor) -> float:
    """||a||_2 accumulated in float64."""
    return dot64(a, a) ** 0.5


class LanczosBasis:
    """Orthonormal vectors q_0, q_1, ... of length n; append, project out, combine.

    Args:
        n: vector length; dtype: float32 or float64; device: where in-memory blocks live.
        max_bytes: bytes of vectors kept in memory (None: all); the rest spill.
        spill_dir: folder of the spill file (default: the temporary folder).
    """

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device | str, *,
                 max_bytes: int | None = None, spill_dir: str | os.PathLike | None = None):
        if dtype not in _NUMPY:
            raise TypeError(f"a Lanczos basis is float32 or float64, got {dtype}")
        self.n, self.dtype, self.device = int(n), dtype, torch.device(device)
        self.vector_bytes = self.n * torch.empty((), dtype=dtype).element_size()
        self.block_rows = max(1, BLOCK_BYTES // max(self.vector_bytes, 1))
        self.max_in_memory = None if max_bytes is None else int(max_bytes) // max(self.vector_bytes, 1)
        self.spill_dir = str(spill_dir or tempfile.gettempdir())
        self._blocks: list[torch.Tensor | np.ndarray] = []  # (rows, n) each: tensors, or arrays over a map
        self._maps: dict[int, mmap.mmap] = {}  # block index -> its memory map
        self._counts: list[int] = []  # filled rows per block
        self.in_memory = 0  # vectors held in memory
        self.spilled = 0  # vectors held in spill files

    def __len__(self) -> int:
        return self.in_memory + self.spilled

    # -- storage
    def _new_block(self) -> None:
        rows = min(self.block_rows, max(8, len(self)))  # blocks double in size up to BLOCK_BYTES
        room = None if self.max_in_memory is None else self.max_in_memory - self._memory_rows()
        if room is None or room > 0:
            rows = rows if room is None else min(rows, room)
            self._blocks.append(torch.empty(rows, self.n, dtype=self.dtype, device=self.device))
        else:
            os.makedirs(self.spill_dir, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="normlens-lanczos-", suffix=".bin", dir=self.spill_dir)
            try:
                os.ftruncate(fd, rows * self.vector_bytes)
                mapped = mmap.mmap(fd, rows * self.vector_bytes)
            finally:
                os.close(fd)
                try:
                    os.unlink(path)  # the mapping keeps the data; no file is left behind
                except OSError:  # pragma: no cover - platforms that cannot unlink an open file
                    pass
            self._maps[len(self._blocks)] = mapped
            self._blocks.append(np.frombuffer(mapped, dtype=_NUMPY[self.dtype]).reshape(rows, self.n))
        self._counts.append(0)

    def _memory_rows(self) -> int:
        return sum(b.shape[0] for b in self._blocks if isinstance(b, torch.Tensor))

    def append(self, vector: torch.Tensor) -> torch.Tensor:
        """Store ``vector`` (n,); returns the stored copy when in memory, else ``vector`` itself."""
        if not self._blocks or self._counts[-1] == self._blocks[-1].shape[0]:
            self._new_block()
        block, row = self._blocks[-1], self._counts[-1]
        self._counts[-1] += 1
        if isinstance(block, torch.Tensor):
            block[row].copy_(vector)
            self.in_memory += 1
            return block[row]
        block[row] = vector.detach().to("cpu", self.dtype).numpy()
        self._release(len(self._blocks) - 1)
        self.spilled += 1
        return vector

    def _release(self, index: int) -> None:
        """Drop a spilled block's pages from this process (the data stays in the file)."""
        mapped = self._maps.get(index)
        if mapped is not None and hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_DONTNEED)

    def _filled(self):
        """(rows, n) tensors on the device, one per block: memory views, or spilled rows read back."""
        for index, (block, count) in enumerate(zip(self._blocks, self._counts)):
            if count == 0:
                continue
            if isinstance(block, torch.Tensor):
                yield block[:count]
            else:
                yield torch.from_numpy(block[:count]).to(self.device)  # reads the pages (no copy on CPU)
                self._release(index)

    def vector(self, index: int) -> torch.Tensor:
        """q_index (a view when in memory, a copy read back when spilled)."""
        if not 0 <= index < len(self):
            raise IndexError(f"basis has {len(self)} vectors, asked for {index}")
        for position, (block, count) in enumerate(zip(self._blocks, self._counts)):
            if index < count:
                if isinstance(block, torch.Tensor):
                    return block[index]
                vector = torch.from_numpy(np.array(block[index])).to(self.device)  # a copy
                self._release(position)
                return vector
            index -= count
        raise IndexError(index)  # pragma: no cover

    # -- algebra
    def project_out(self, w: torch.Tensor) -> torch.Tensor:
        """w - Q Q^T w, one classical Gram-Schmidt pass block by block (in place)."""
        for block in self._filled():  # (rows, n)
            w.addmv_(block.T, block @ w, alpha=-1)  # w -= (n, rows) @ (rows,), no (n,) temporary
        return w

    def orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        """Project ``w`` out of the basis, twice when the first pass cancels much of it.

        The second pass runs when ||w|| fell below 1/sqrt(2) of its value (Daniel,
        Gragg, Kaufman & Stewart 1976): "twice is enough" (Parlett 1980).
        """
        before = norm64(w)
        w = self.project_out(w)
        if norm64(w) < DGKS_ETA * before:
            w = self.project_out(w)
        return w

    def combine(self, coefficients: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Q S for S (len, k): (n, k) in the basis dtype on its device (written into ``out`` if given)."""
        if coefficients.shape[0] != len(self):
            raise ValueError(f"need {len(self)} coefficient rows, got {tuple(coefficients.shape)}")
        if out is None:
            out = torch.zeros(self.n, coefficients.shape[1], dtype=self.dtype, device=self.device)
        else:
            out.zero_()
        start = 0
        for block in self._filled():
            rows = block.shape[0]
            out.addmm_(block.T, coefficients[start:start + rows].to(self.device, self.dtype))
            start += rows
        return out

    def matrix(self) -> torch.Tensor:
        """The whole basis as an (n, len) tensor (tests and small operators only)."""
        return torch.cat([block.T for block in self._filled()], 1) if len(self) else torch.empty(self.n, 0)
