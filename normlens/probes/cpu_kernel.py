"""Fused single-pass CPU reduction for the activation-statistics probe (numba).

One read of x (B, P, D) gives every additive sum :class:`~normlens.probes.reduce.GroupSums`
needs for the positions ``p >= p0``:

* S_k = sum over rows of (x - c)^k per channel, k = 1..4, about the centre c,
  accumulated in x's dtype over tiles of 128 rows and added into float64;
* per row: sum of x^2 (in x's dtype) and max |x|;
* a histogram of |x| over the top 16 bits of its float32 pattern, and the
  number of entries whose float32 value is exactly zero;
* the power sums of the per-row RMS about its own centre, and the largest RMS.

Rows are split into one contiguous range per thread, each with its own
accumulators, summed at the end. Non-finite entries are not masked here: they
make the row's sum of squares non-finite, and the caller then takes the masked
path. Compared with the same reduction as ~15 separate torch operations this
reads the activations once instead of ~15 times (measured on the project's
2-core box, 4080 x 256 float32: 0.8 ms vs 3.3 ms).
"""
from __future__ import annotations

import os

import numpy as np
import numba
import torch

N_BINS = 1 << 15
_TILE = 128
# reassociation lets LLVM vectorize the sums; no "nnan"/"ninf": NaN must propagate to the caller's check
_FASTMATH = {"reassoc", "contract", "arcp"}


@numba.njit(fastmath=_FASTMATH, nogil=True, boundscheck=False, cache=True)
def _row_sums(row, centre, s1, s2, s3, s4):  # pragma: no cover - compiled
    d = row.shape[0]
    for j in range(d):
        e = row[j] - centre[j]
        e2 = e * e
        s1[j] += e
        s2[j] += e2
        s3[j] += e2 * e
        s4[j] += e2 * e2
    sq = row[0] * row[0] * 0  # the row's dtype: float32 rows sum in float32, exact enough for one row
    for j in range(d):
        sq += row[j] * row[j]
    return sq


@numba.njit(fastmath=True, nogil=True, boundscheck=False, cache=True)
def _abs_max(row):  # pragma: no cover - compiled
    # full fastmath (no NaN semantics) lets max vectorize; a row holding NaN/inf has a
    # non-finite sum of squares, so the caller discards this value and takes the masked path
    largest = abs(row[0])
    for j in range(1, row.shape[0]):
        largest = max(largest, abs(row[j]))
    return largest


@numba.njit(nogil=True, boundscheck=False, cache=True)
def _count_bins(bits, counts):  # pragma: no cover - compiled
    zeros = 0
    for j in range(bits.shape[0]):
        magnitude = bits[j] & 0x7FFFFFFF
        counts[magnitude >> 16] += 1
        zeros += magnitude == 0
    return zeros


@numba.njit(fastmath=_FASTMATH, nogil=True, boundscheck=False, cache=True)
def _flush(tile, total):  # pragma: no cover - compiled
    for k in range(4):
        for j in range(tile.shape[1]):
            total[k, j] += tile[k, j]
            tile[k, j] = 0


def _reduce_rows(x, bits, p0, centre, rms_centre, n_blocks):  # pragma: no cover - compiled
    n_batch, n_pos, d = x.shape
    width = n_pos - p0
    n_rows = n_batch * width
    sums = np.zeros((n_blocks, 4, d))
    hist = np.zeros((n_blocks, N_BINS), np.int32)  # <= 2^31 entries per call (checked by the caller)
    zeros = np.zeros(n_blocks, np.int64)
    row_sq = np.empty(n_rows)
    row_max = np.empty(n_rows, x.dtype)  # exact for float64 rows too: the top-k rows are ranked by it
    per_block = (n_rows + n_blocks - 1) // n_blocks
    # every array is allocated here, none in the threads (no per-thread malloc arenas)
    tiles = np.zeros((n_blocks, 4, d), x.dtype)
    c = centre.astype(x.dtype)
    for block in numba.prange(n_blocks):
        tile = tiles[block]
        counts = hist[block]
        in_tile = 0
        z = 0
        for r in range(block * per_block, min(n_rows, (block + 1) * per_block)):
            b = r // width
            p = p0 + r - b * width
            row = x[b, p]
            sq = _row_sums(row, c, tile[0], tile[1], tile[2], tile[3])
            largest = _abs_max(row)
            z += _count_bins(bits[b, p], counts)
            row_sq[r] = sq
            row_max[r] = largest
            in_tile += 1
            if in_tile == _TILE:
                _flush(tile, sums[block])
                in_tile = 0
        _flush(tile, sums[block])
        zeros[block] = z
    total = sums.sum(0)
    # scalars: zeros, RMS power sums about rms_centre (4), RMS max, non-finite flag
    scalars = np.zeros(7)
    scalars[0] = zeros.sum()
    finite = np.isfinite(total).all()
    for r in range(n_rows):
        rms = np.sqrt(row_sq[r] / d)
        finite = finite and np.isfinite(rms)
        e = rms - rms_centre
        scalars[1] += e
        scalars[2] += e * e
        scalars[3] += e * e * e
        scalars[4] += e * e * e * e
        scalars[5] = max(scalars[5], rms)
    scalars[6] = 0.0 if finite else 1.0
    return total, hist.astype(np.int64).sum(0), scalars, row_max


_reduce_parallel = numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)(_reduce_rows)
# A process forked from one whose OpenMP pool is running must not use that pool
# (GNU OpenMP aborts the child): forked children run the same loop on one thread.
# (not cached: numba's cache would hand it the parallel build of the same function)
_reduce_serial = numba.njit(nogil=True, boundscheck=False)(_reduce_rows)
_PROCESS = {"forked": False}
os.register_at_fork(after_in_child=lambda: _PROCESS.update(forked=True))


def reduce_rows(x: torch.Tensor, p0: int, centre: torch.Tensor, rms_centre: float):
    """Sums over rows ``x[:, p0:]`` of a C-contiguous CPU float32/float64 tensor (B, P, D).

    Returns torch tensors: power sums about ``centre`` (4, D) float64; the
    histogram (2^15,) int64; scalars (7,) float64 = (zeros, the four power sums
    of per-row RMS about ``rms_centre``, largest RMS, 1 if any sum or RMS is not
    finite else 0); per-row max |x| (n,) in x's dtype.
    """
    if x.numel() >= 1 << 31:
        raise ValueError("reduce at most 2^31 entries per call (the histogram counts are int32)")
    n_rows = x.shape[0] * (x.shape[1] - p0)
    if _PROCESS["forked"]:
        kernel, n_blocks = _reduce_serial, 1
    else:
        kernel, n_blocks = _reduce_parallel, max(1, min(numba.get_num_threads(), n_rows // 64))
    bits = (x if x.dtype == torch.float32 else x.float()).view(torch.int32)  # |x| bins from float32 bits
    out = kernel(x.numpy(), bits.numpy(), p0, centre.numpy(), float(rms_centre), n_blocks)
    return tuple(torch.from_numpy(a) for a in out)
