"""One batch of activations -> the additive sums behind every activation statistic.

A hook hands over a tensor (..., d). :class:`GroupSums` reduces it chunk by
chunk (at most :data:`CHUNK_ELEMENTS` entries, so temporaries stay bounded) to

* power sums S_k = sum (x - c)^k, k = 1..4, of each channel about a fixed
  centre c (:class:`~normlens.probes.moments.PowerSums`), and the same for the
  per-token RMS sqrt(mean_c x_c^2);
* a histogram of |x| over the top 16 bits of the float32 bit pattern (8
  exponent bits, 7 mantissa bits: bins a factor 2^(1/128) wide);
* the k largest |x| (they lie in the k tokens with the largest max |x|, so
  only those rows are searched), the largest RMS;
* counts: entries, tokens, exact zeros, NaN, inf, tokens holding a non-finite value.

Sums about the same centres add exactly (:meth:`GroupSums.add`), so a tensor
seen at two sites is reduced once, and the batch sums of a site add into its
running total with a handful of small operations. Entries that are not finite
are excluded from every statistic but the counts (a float64, masked path taken
only when a chunk's sums come out non-finite).

Speed: the large temporaries live in a :class:`Workspace` reused from batch
to batch. A fresh 4 MB tensor costs more in page faults than the arithmetic
done in it (measured on this project's 2-core CPU box: ``x * x`` on 4096 x 256
floats, 0.69 ms allocating vs 0.14 ms into a reused buffer).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

from normlens.probes.moments import Moments, PowerSums

try:  # the fused CPU pass; without numba every reduction takes the torch path
    from normlens.probes import cpu_kernel
except ImportError:  # pragma: no cover - numba is a dependency; this guards odd platforms
    cpu_kernel = None

N_HIST_BINS = 1 << 15  # top 16 bits of a non-negative float32
CHUNK_ELEMENTS = 1 << 20  # entries reduced at once by the torch path: ~4 MB per float32 temporary
KERNEL_MAX_ELEMENTS = 1 << 30  # entries per fused pass (its histogram counts are int32)


def abs_histogram(a: torch.Tensor) -> torch.Tensor:
    """Counts of |x| (given as ``a`` >= 0) in 2^15 log-spaced bins, int64."""
    bits = a.detach().float().contiguous().view(torch.int32) >> 16  # bin per entry
    return torch.bincount(bits.reshape(-1), minlength=N_HIST_BINS)


_KERNEL = {"enabled": os.environ.get("NORMLENS_CPU_KERNEL", "1") != "0"}


def use_cpu_kernel(enabled: bool) -> bool:
    """Switch the fused CPU pass on or off (env ``NORMLENS_CPU_KERNEL=0``); returns the previous setting."""
    previous, _KERNEL["enabled"] = _KERNEL["enabled"], bool(enabled)
    return previous


def _kernel_applies(x: torch.Tensor) -> bool:
    return (cpu_kernel is not None and _KERNEL["enabled"] and x.device.type == "cpu" and x.dim() == 3
            and x.dtype in (torch.float32, torch.float64))


class Workspace:
    """Named scratch buffers, grown when too small and otherwise reused."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def take(self, name: str, shape: torch.Size, dtype: torch.dtype,
             device: torch.device | str = "cpu") -> torch.Tensor:
        numel = math.prod(shape)
        key = (name, dtype, torch.device(device))
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buffer
        return buffer[:numel].view(shape)


def row_chunks(x: torch.Tensor, max_elements: int = CHUNK_ELEMENTS) -> Iterator[torch.Tensor]:
    """Views of ``x`` (..., d) that together hold each row once, each at most ``max_elements`` entries
    (or one row). No copy, also for non-contiguous views such as ``x[:, 1:]``."""
    if x.numel() <= max_elements or x.dim() == 1:
        yield x
        return
    if x.dim() == 2 or x.is_contiguous():
        rows = x.reshape(-1, x.shape[-1])
        step = max(1, max_elements // x.shape[-1])
        for start in range(0, rows.shape[0], step):
            yield rows[start:start + step]
        return
    per_index = x[0].numel()
    if per_index <= max_elements:
        step = max_elements // per_index
        for start in range(0, x.shape[0], step):
            yield x[start:start + step]
    else:
        for sub in x:
            yield from row_chunks(sub, max_elements)


def _kernel_parts(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Contiguous slices of ``x`` (B, P, D) along B, each under :data:`KERNEL_MAX_ELEMENTS` entries
    when one batch element fits (the kernel's histogram counts are int32); else one element each."""
    per_item = max(x[0].numel(), 1)
    step = max(1, KERNEL_MAX_ELEMENTS // per_item)
    if x.shape[0] <= step:
        yield x
        return
    for start in range(0, x.shape[0], step):
        yield x[start:start + step]


def _first_rows(x: torch.Tensor, n: int = 64) -> torch.Tensor:
    """Up to ``n`` rows of ``x`` (..., d) without copying the rest (for a centre)."""
    while x.dim() > 2:
        x = x[0]
    return x[:n]


@dataclass
class GroupSums:
    """Additive sums of one site and position group (see the module docstring)."""

    d: int
    top_k: int
    channel: PowerSums | None = None  # (d,)
    token_rms: PowerSums | None = None  # (1,)
    rms_max: float = 0.0
    top: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    hist: torch.Tensor | None = None  # (N_HIST_BINS,) int64; None until the first entries arrive
    n_entries: int = 0
    n_tokens: int = 0
    zeros: int = 0
    nan: int = 0
    inf: int = 0
    nonfinite_tokens: int = 0

    # -- building --------------------------------------------------------------
    def centred_like(self) -> "GroupSums":
        """Empty sums with this one's centres, so that the two add exactly."""
        out = GroupSums(self.d, self.top_k)
        if self.channel is not None:
            out.channel = PowerSums.start_at(self.channel.centre)
            out.token_rms = PowerSums.start_at(self.token_rms.centre)
        return out

    def same_centres(self, other: "GroupSums") -> bool:
        if self.channel is None or other.channel is None:
            return True
        return torch.equal(self.channel.centre, other.channel.centre) and torch.equal(
            self.token_rms.centre, other.token_rms.centre)

    def reduce(self, x: torch.Tensor, workspace: Workspace | None = None) -> "GroupSums":
        """Add every row of ``x`` (..., d), in place; returns self."""
        workspace = workspace or Workspace()
        for chunk in row_chunks(x.detach()):
            if chunk.numel():
                self._reduce_chunk(chunk, workspace)
        return self

    def reduce_positions(self, x: torch.Tensor, p0: int = 0, workspace: Workspace | None = None) -> "GroupSums":
        """Add the rows ``x[:, p0:]`` of ``x`` (B, P, D), in place; returns self.

        On the CPU one fused pass (:mod:`normlens.probes.cpu_kernel`); the torch
        path when the pass meets a non-finite value, when the kernel is switched
        off, and for activations on a GPU (reduced there; only the per-channel
        sums, the histogram and the top-k candidates come back to the CPU).
        """
        x = x.detach()
        if x.shape[0] * (x.shape[1] - p0) == 0:
            return self
        if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
            x = x.float()
        if not _kernel_applies(x):
            return self.reduce(x[:, p0:], workspace)
        work = x.contiguous()
        self._start_centres(work[:, p0:])
        for part in _kernel_parts(work):
            if not self._add_kernel_pass(part, p0):
                self.reduce(part[:, p0:], workspace)  # NaN/inf (or float32 overflow): masked path
        return self

    def _add_kernel_pass(self, work: torch.Tensor, p0: int) -> bool:
        """One fused pass over ``work[:, p0:]`` added in place; False (nothing added) if not finite."""
        sums, hist, scalars, row_max = cpu_kernel.reduce_rows(work, p0, self.channel.centre, self.token_rms.centre)
        if scalars[6]:
            return False
        n_rows, d = row_max.numel(), self.d
        self.channel.add_sums(float(n_rows), *sums)
        self.token_rms.add_sums(float(n_rows), *scalars[1:5])
        self.rms_max = max(self.rms_max, float(scalars[5]))
        width = work.shape[1] - p0
        rows = torch.topk(row_max, min(self.top_k, n_rows)).indices
        self._add_top(work[rows // width, p0 + rows % width].abs())
        self._add_hist(hist)  # a fresh tensor from the kernel: adopted, not copied
        self.zeros += int(scalars[0])
        self.n_entries += n_rows * d
        self.n_tokens += n_rows
        return True

    def _start_centres(self, x: torch.Tensor) -> None:
        """Fix the centres from the first rows of ``x`` (..., d), ignoring non-finite entries."""
        if self.channel is not None:
            return
        head = _first_rows(x if x.dtype in (torch.float32, torch.float64) else x.float())
        rms = torch.linalg.vector_norm(head, dim=-1) / math.sqrt(self.d)
        centre, rms_centre = head.mean(0), rms.mean().reshape(1)
        if not bool(torch.isfinite(centre.sum() + rms_centre.sum())):
            head = torch.where(torch.isfinite(head), head, float("nan"))
            rms = torch.where(torch.isfinite(rms), rms, float("nan"))
            centre = head.nanmean(0).nan_to_num(0.0, 0.0, 0.0)
            rms_centre = rms.nanmean().nan_to_num(0.0, 0.0, 0.0).reshape(1)
        self.channel = PowerSums.start_at(centre.double().cpu())  # sums live on the CPU
        self.token_rms = PowerSums.start_at(rms_centre.double().cpu())

    def _reduce_chunk(self, chunk: torch.Tensor, ws: Workspace) -> None:
        work = chunk if chunk.dtype in (torch.float32, torch.float64) else chunk.float()
        self._start_centres(work)
        d = self.d
        dev = ws.take("dev", work.shape, work.dtype, work.device)
        torch.sub(work, self.channel.centre.to(work.device, work.dtype), out=dev)
        part = PowerSums.start_at(self.channel.centre)
        scratch = ws.take("pow", (dev.numel() // d, d), work.dtype, work.device)
        part.add_deviations(dev.view(-1, d), scratch=scratch)
        if not bool(torch.isfinite(part.s4.sum())):  # NaN/inf, or float32 powers overflowed
            self._reduce_masked(work.double().reshape(-1, d))
            return
        self.channel.add_(part)
        n_rows = dev.numel() // d
        rms = torch.linalg.vector_norm(work, dim=-1).reshape(-1, 1) / math.sqrt(d)  # (n, 1)
        self._add_rms(rms)
        token_max = torch.maximum(work.amax(-1), work.amin(-1).neg_()).reshape(-1)  # max |x| per row
        rows = torch.topk(token_max, min(self.top_k, n_rows)).indices
        self._add_top(work[torch.unravel_index(rows, work.shape[:-1])].abs())
        source = work if work.dtype == torch.float32 else work.float()
        bits = ws.take("bits", work.shape, torch.int32, work.device)
        torch.bitwise_and(source.view(torch.int32), 0x7FFFFFFF, out=bits).bitwise_right_shift_(16)
        hist = torch.bincount(bits.view(-1), minlength=N_HIST_BINS).cpu()
        self._add_hist(hist)
        if hist[0] > 0:  # bin 0 holds the zeros (and denormals): count exactly
            self.zeros += n_rows * d - int(torch.count_nonzero(work))
        self.n_entries += n_rows * d
        self.n_tokens += n_rows

    def _reduce_masked(self, x: torch.Tensor) -> None:
        """Float64 path for a chunk (n, d) holding NaN/inf: those entries are counted, nothing else."""
        n_rows, d = x.shape
        valid = torch.isfinite(x)
        nan = int(torch.isnan(x).sum())
        bad = int((~valid).sum())
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        clean = torch.where(valid, x, zero)
        part = PowerSums.start_at(self.channel.centre)
        centre = self.channel.centre.to(x.device)
        part.add_deviations(torch.where(valid, x - centre, zero), valid.sum(0).double())
        self.channel.add_(part)
        good_tokens = valid.all(-1)
        rms = torch.linalg.vector_norm(clean, dim=-1) / math.sqrt(d)
        self._add_rms(rms[good_tokens].reshape(-1, 1))
        a = clean.abs()
        ranked = torch.where(valid, a, -1.0)  # NaN/inf rank below every |x| and are no candidates
        rows = torch.topk(ranked.amax(-1), min(self.top_k, n_rows)).indices
        candidates = ranked[rows]
        self._add_top(candidates[candidates >= 0])
        hist = abs_histogram(a).cpu()
        hist[0] -= bad  # non-finite entries were zeroed, not observed
        self._add_hist(hist)
        self.zeros += n_rows * d - int(torch.count_nonzero(clean)) - bad
        self.nan += nan
        self.inf += bad - nan
        self.nonfinite_tokens += int((~good_tokens).sum())
        self.n_entries += n_rows * d
        self.n_tokens += n_rows

    def _add_hist(self, hist: torch.Tensor) -> None:
        """Add counts (N_HIST_BINS,) int64 on the CPU; the first tensor is taken over as is."""
        if self.hist is None:
            self.hist = hist
        else:
            self.hist += hist

    def histogram(self) -> torch.Tensor:
        """The |x| histogram (N_HIST_BINS,) int64 (zeros before any entry)."""
        return self.hist if self.hist is not None else torch.zeros(N_HIST_BINS, dtype=torch.int64)

    def _add_rms(self, rms: torch.Tensor) -> None:
        if rms.numel():
            self.token_rms.add_deviations(rms - self.token_rms.centre.to(rms.device, rms.dtype))
            self.rms_max = max(self.rms_max, float(rms.max()))

    def _add_top(self, candidates: torch.Tensor) -> None:
        pool = torch.cat([self.top, candidates.reshape(-1).double().cpu()])
        self.top = torch.topk(pool, min(self.top_k, pool.numel())).values

    # -- combining -------------------------------------------------------------
    def _check_addable(self, other: "GroupSums") -> None:
        if self.d != other.d:
            raise ValueError(f"cannot add statistics of width {self.d} and {other.d}")
        if not self.same_centres(other):
            raise ValueError("sums about different centres cannot be added; reduce with centred_like()")

    def add(self, other: "GroupSums") -> "GroupSums":
        """Sums over both (a new object); the two must share centres (see :meth:`centred_like`)."""
        self._check_addable(other)
        return self.copy().add_(other)

    def add_(self, other: "GroupSums") -> "GroupSums":
        """In-place :meth:`add` (no new histogram or sums: the running total of a site); returns self.
        ``other`` is left unchanged."""
        self._check_addable(other)
        if other.channel is None:
            return self
        if self.channel is None:
            self.channel = PowerSums.start_at(other.channel.centre)
            self.token_rms = PowerSums.start_at(other.token_rms.centre)
        self.channel.add_(other.channel)
        self.token_rms.add_(other.token_rms)
        self.rms_max = max(self.rms_max, other.rms_max)
        self._add_top(other.top)
        if other.hist is not None:
            self._add_hist(other.hist.clone() if self.hist is None else other.hist)
        self.n_entries += other.n_entries
        self.n_tokens += other.n_tokens
        self.zeros += other.zeros
        self.nan += other.nan
        self.inf += other.inf
        self.nonfinite_tokens += other.nonfinite_tokens
        return self

    def copy(self) -> "GroupSums":
        """An independent copy (tensors cloned)."""
        out = self.centred_like()
        out.add_(self)
        return out

    def moments(self) -> tuple[Moments, Moments]:
        """(per-channel moments (d,), pooled moments of the per-token RMS ())."""
        if self.channel is None:
            return Moments.empty((self.d,)), Moments.empty(())
        return self.channel.to_moments(), self.token_rms.to_moments().pooled()
