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
reads the activations once instead of ~15 times.

Threads: the compiled row loop is serial and releases the GIL; the row ranges
run on a small pool of Python threads (idle workers block, they never spin),
at most ``torch.get_num_threads()`` of them, so the probe follows the thread
budget the user gave torch. numba's own parallel layer is deliberately not
used: its OpenMP layer binds to the libgomp torch has already loaded and, on
its first launch, calls ``omp_set_num_threads(NUMBA_NUM_THREADS)`` and enables
nested regions on the calling thread. ATen reads its intra-op thread count
from that same OpenMP setting, so after one probe every later torch operation
ran on numba's count (all logical CPUs) instead of torch's (physical cores, or
what ``torch.set_num_threads`` chose); on a busy machine the extra threads
spinning at OpenMP barriers made a training step several times slower.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numba
import torch

N_BINS = 1 << 15
_TILE = 128
MIN_ROWS_PER_THREAD = 256  # below this a second thread costs more than it saves
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


@numba.njit(fastmath=_FASTMATH, nogil=True, boundscheck=False, cache=True)
def _reduce_block(x, bits, p0, centre, start, stop, tile, sums, counts, row_sq, row_max):  # pragma: no cover
    """Rows ``start:stop`` of the flattened ``x[:, p0:]`` into this block's own accumulators.

    x (B, P, D), bits (B, P, D) int32, centre (D,) in x's dtype; writes tile (4, D) x.dtype
    scratch, sums (4, D) float64, counts (N_BINS,) int32, row_sq/row_max (n_rows,).
    Returns the number of exact zeros.
    """
    width = x.shape[1] - p0
    in_tile = 0
    zeros = 0
    for r in range(start, stop):
        b = r // width
        p = p0 + r - b * width
        row = x[b, p]
        row_sq[r] = _row_sums(row, centre, tile[0], tile[1], tile[2], tile[3])
        row_max[r] = _abs_max(row)
        zeros += _count_bins(bits[b, p], counts)
        in_tile += 1
        if in_tile == _TILE:
            _flush(tile, sums)
            in_tile = 0
    _flush(tile, sums)
    return zeros


@numba.njit(nogil=True, boundscheck=False, cache=True)
def _rms_scalars(row_sq, d, rms_centre, finite):  # pragma: no cover - compiled
    """(zeros slot, four power sums of the per-row RMS about rms_centre, max RMS, non-finite flag)."""
    scalars = np.zeros(7)
    for r in range(row_sq.shape[0]):
        rms = np.sqrt(row_sq[r] / d)
        finite = finite and np.isfinite(rms)
        e = rms - rms_centre
        scalars[1] += e
        scalars[2] += e * e
        scalars[3] += e * e * e
        scalars[4] += e * e * e * e
        scalars[5] = max(scalars[5], rms)
    scalars[6] = 0.0 if finite else 1.0
    return scalars


class _Workers:
    """A lazily started thread pool, rebuilt in a forked child (threads do not survive fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._executor: ThreadPoolExecutor | None = None
        self._size = 0

    def get(self, n_workers: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._pid != os.getpid() or self._size < n_workers:
                old, same_process = self._executor, self._pid == os.getpid()
                self._executor = ThreadPoolExecutor(n_workers, thread_name_prefix="normlens-stats")
                self._pid, self._size = os.getpid(), n_workers
                if old is not None and same_process:
                    old.shutdown(wait=False)
            return self._executor


_WORKERS = _Workers()


def n_threads_for(n_rows: int) -> int:
    """Threads one pass over ``n_rows`` rows uses: torch's intra-op count, ~256+ rows each."""
    return max(1, min(torch.get_num_threads(), n_rows // MIN_ROWS_PER_THREAD))


def reduce_rows(x: torch.Tensor, p0: int, centre: torch.Tensor, rms_centre: float):
    """Sums over rows ``x[:, p0:]`` of a C-contiguous CPU float32/float64 tensor (B, P, D).

    Returns torch tensors: power sums about ``centre`` (4, D) float64; the
    histogram (2^15,) int64; scalars (7,) float64 = (zeros, the four power sums
    of per-row RMS about ``rms_centre``, largest RMS, 1 if any sum or RMS is not
    finite else 0); per-row max |x| (n,) in x's dtype.
    """
    if x.numel() >= 1 << 31:
        raise ValueError("reduce at most 2^31 entries per call (the histogram counts are int32)")
    xs = x.numpy()
    n_batch, n_pos, d = xs.shape
    n_rows = n_batch * (n_pos - p0)
    bits = (x if x.dtype == torch.float32 else x.float()).view(torch.int32).numpy()  # |x| bins from float32 bits
    c = centre.numpy().astype(xs.dtype)
    n_blocks = n_threads_for(n_rows)
    # every array is allocated here, none in the threads (no per-thread malloc arenas)
    tiles = np.zeros((n_blocks, 4, d), xs.dtype)
    sums = np.zeros((n_blocks, 4, d))
    hist = np.zeros((n_blocks, N_BINS), np.int32)  # <= 2^31 entries per call (checked above)
    row_sq = np.empty(n_rows)
    row_max = np.empty(n_rows, xs.dtype)  # exact for float64 rows too: the top-k rows are ranked by it
    bounds = np.linspace(0, n_rows, n_blocks + 1).astype(np.int64)

    def block(i: int) -> int:
        return _reduce_block(xs, bits, p0, c, bounds[i], bounds[i + 1], tiles[i], sums[i], hist[i],
                             row_sq, row_max)

    if n_blocks == 1:
        zeros = block(0)
    else:
        pool = _WORKERS.get(n_blocks - 1)
        others = [pool.submit(block, i) for i in range(1, n_blocks)]
        zeros = block(0) + sum(f.result() for f in others)
    total = sums.sum(0)
    scalars = _rms_scalars(row_sq, d, float(rms_centre), bool(np.isfinite(total).all()))
    scalars[0] = zeros
    hist_total = hist.sum(0, dtype=np.int64)
    return tuple(torch.from_numpy(a) for a in (total, hist_total, scalars, row_max))
