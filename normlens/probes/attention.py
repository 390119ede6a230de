"""Attention entropy, entropic overload and collapse, attention sinks -- without the N x N matrix.

Per query i, H_i = -Σ_j p_ij log p_ij over the keys it may see (computed by
:func:`normlens.kernels.online_entropy.compute_attention_entropy`: the Triton
kernel on CUDA, the torch block loop elsewhere). The head-level metrics follow
their papers:

* **Entropic overload** (ReLU's Revival: On the Entropic Overload in
  Normalization-Free LLMs): per sequence of T real tokens, the head's entropy
  averaged over all T queries, divided by the maximum log T (``entropy_ratio``;
  averaged over sequences). A head is overloaded when the ratio lies in
  [``overload_threshold``, 1] (3/4 in the paper). A perfectly uniform causal
  head reaches only mean_i log(i+1) / log T = log(T!) / (T log T): 0.771 at
  T = 64, 0.856 at T = 1024, so the 3/4 bar is demanding.
* **Entropy collapse**: the head's mean raw entropy (nats) below
  ``collapse_threshold`` (0.1 nats by default; reported with the result).
* **Attention sinks** (Gu et al. 2024, "When Attention Sink Emerges in Language
  Models: An Empirical View"): per head, the mean over queries of the attention
  on the first token; a head is a sink head when that mean exceeds ε
  (``sink_threshold``, 0.3 in the paper), and the sink rate is the share of sink
  heads. Queries at positions < ``skip_queries`` are left out (query 0 can only
  attend to the first token; ``skip_queries=0`` averages over every query as
  the paper's formula does). With padding, "first token" is the sequence's
  first real token, not key 0.

Variants kept under their own names (they are not the papers' quantities):

* ``overload_fraction_normalized``: each query's H_i / log(i+1) (its own
  maximum) averaged per head, above ``overload_threshold``. Dividing each
  query by its own maximum lifts every diffuse head towards 1 -- a head spread
  uniformly over 23 of 64 keys scores > 0.75 -- so it saturates at 1 for
  most models and separates nothing.
* ``sink_query_fraction``: the share of single queries (every position) whose
  first-token mass exceeds ε.

Positions are counted among a sequence's real tokens (position 0 = its first
real token). Per-sequence values are kept, so every head-level metric gets a
bootstrap interval over sequences (:meth:`AttentionEntropyResult.intervals`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from normlens import sites as S
from normlens.io import read_json, read_npz, save_frame, write_json, write_npz
from normlens.kernels import reference
from normlens.kernels.online_entropy import compute_attention_entropy, count_visible, normalize_entropy
from normlens.probes.attach import BatchContext, ModelInfo, Probe, ProbeError
from normlens.uncertainty import Interval, bootstrap_interval

N_BINS = 20  # histogram bins of normalized entropy over [0, 1]
FIRST_BUCKET_END = 8  # position buckets [1, 8), [8, 16), [16, 32), ...


@dataclass(frozen=True)
class EntropyRows:
    """Per-query results of one batch, each (batch, heads, q_pos)."""

    entropy: torch.Tensor
    normalized: torch.Tensor
    n_visible: torch.Tensor  # int64
    first_mass: torch.Tensor  # probability on the sequence's first real token


def _split_heads(x: torch.Tensor, n_heads: int | None, what: str) -> torch.Tensor:
    """(batch, pos, heads, d_head) or (batch, pos, heads*d_head) -> (batch, heads, pos, d_head) view."""
    if x.dim() == 4:
        return x.transpose(1, 2)
    if x.dim() == 3:
        if not n_heads or x.shape[-1] % n_heads:
            raise ProbeError(
                f"{what} has shape {tuple(x.shape)}; to split (batch, pos, n_heads*d_head) pass n_heads "
                f"dividing {x.shape[-1]}, got n_heads={n_heads}")
        b, p, hd = x.shape
        return x.view(b, p, n_heads, hd // n_heads).transpose(1, 2)
    raise ProbeError(f"{what} must be (batch, pos, heads, d_head) or (batch, pos, heads*d_head), "
                     f"got shape {tuple(x.shape)}")


def first_real_token(attention_mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """(batch,) int64 index of each sequence's first real token (0 without a mask or without a real token)."""
    if attention_mask is None:
        return torch.zeros(batch, dtype=torch.int64, device=device)
    keep = attention_mask.to(device=device, dtype=torch.bool)
    return torch.where(keep.any(-1), keep.to(torch.int64).argmax(-1), 0)


def attention_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    n_heads: int | None = None,
    scale: float | None = None,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
    block_size: int = 256,
    backend: str = "auto",
) -> EntropyRows:
    """Entropy of softmax(q kᵀ · scale) per (batch, head, query) and the mass on the first real token.

    Args:
        q, k: (batch, pos, heads, d_head) or (batch, pos, heads*d_head) (then pass n_heads).
        scale: score scale, default 1/sqrt(d_head).
        causal: query i sees keys j <= i.
        attention_mask: (batch, pos), 1/True = real token; padded keys are hidden.
        block_size: queries and keys per block of the torch path.
        backend: "auto" (Triton kernel on CUDA, torch elsewhere), "torch" or "triton".

    Returns:
        :class:`EntropyRows`, float64 for float64 inputs on the torch path, float32 otherwise.
    """
    qh = _split_heads(q.detach(), n_heads, "q")  # (batch, heads, pos, d_head)
    kh = _split_heads(k.detach(), n_heads, "k")
    if qh.shape[0] != kh.shape[0] or qh.shape[1] != kh.shape[1] or qh.shape[3] != kh.shape[3]:
        raise ProbeError(f"q and k disagree: q {tuple(q.shape)}, k {tuple(k.shape)}")
    b, h, n_q, d_head = qh.shape
    n_k = kh.shape[2]
    if attention_mask is not None and tuple(attention_mask.shape) != (b, n_k):
        raise ProbeError(f"attention_mask must be (batch, pos) = {(b, n_k)}, got {tuple(attention_mask.shape)}")
    keep = None if attention_mask is None else attention_mask.to(device=qh.device, dtype=torch.bool)
    out = compute_attention_entropy(qh, kh, causal=causal, key_padding_mask=keep, scale=scale, backend=backend,
                                    block_size=block_size)
    dtype = out.entropy.dtype
    n_vis = count_visible(n_q, n_k, causal=causal, key_padding_mask=keep, device=qh.device)  # (b|1, q)
    n_vis = n_vis[:, None].expand(b, h, n_q)
    first = first_real_token(keep, b, qh.device)  # (b,)
    scale = 1.0 / math.sqrt(d_head) if scale is None else float(scale)
    k_first = kh[torch.arange(b, device=qh.device), :, first]  # (b, h, d)
    s_first = torch.einsum("bhqd,bhd->bhq", qh.to(dtype), k_first.to(dtype)) * scale  # (b, h, q)
    sees_first = n_vis > 0
    if causal:
        sees_first = sees_first & (torch.arange(n_q, device=qh.device)[None, None] >= first[:, None, None])
    finite = torch.isfinite(out.logsumexp)
    p_first = torch.exp(s_first - torch.where(finite, out.logsumexp, torch.zeros((), dtype=dtype,
                                                                                    device=qh.device)))
    first_mass = torch.where(sees_first & finite, p_first, torch.zeros((), dtype=dtype, device=qh.device))
    return EntropyRows(out.entropy, normalize_entropy(out.entropy, n_vis), n_vis, first_mass.clamp(0, 1))


def pattern_entropy(pattern: torch.Tensor, visible: torch.Tensor | None = None,
                    first_key: torch.Tensor | None = None) -> EntropyRows:
    """Reference path: -Σ p log p from a stored (batch, head, q, k) pattern (0 log 0 = 0).

    ``visible`` (broadcastable bool) gives the visible keys and their count
    (default: the keys with p > 0); ``first_key`` (batch,) the first real token
    (default 0).
    """
    p = pattern.detach()
    ent, norm = reference.pattern_entropy(p, visible)
    vis = (visible if visible is not None else p > 0).expand_as(p)
    first = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device) if first_key is None else first_key
    first_mass = p[torch.arange(p.shape[0], device=p.device), :, :, first].to(ent.dtype)  # (b, h, q)
    return EntropyRows(ent, norm, vis.sum(-1), first_mass)


# -- accumulation -------------------------------------------------------------

def position_bucket(pos: np.ndarray | torch.Tensor):
    """Bucket index of query positions: [0, 8) -> 0, [8, 16) -> 1, [16, 32) -> 2, ... (doubling)."""
    if isinstance(pos, torch.Tensor):
        top = max(int(pos.max()) if pos.numel() else 0, 1)
        edges = torch.tensor([FIRST_BUCKET_END << k for k in range(max(top.bit_length(), 1))], device=pos.device)
        return (pos[..., None] >= edges).sum(-1)
    pos = np.asarray(pos)
    top = max(int(pos.max()) if pos.size else 0, 1)
    edges = np.array([FIRST_BUCKET_END << k for k in range(max(top.bit_length(), 1))])
    return (pos[..., None] >= edges).sum(-1)


def bucket_bounds(bucket: int, causal: bool = True) -> tuple[int, int]:
    """[low, high) positions of a bucket; bucket 0 starts at 1 under a causal mask (query 0 has no choice)."""
    if bucket == 0:
        return (1 if causal else 0), FIRST_BUCKET_END
    return FIRST_BUCKET_END << (bucket - 1), FIRST_BUCKET_END << bucket


@dataclass(frozen=True)
class _Layout:
    """Which queries are real and where they sit, for one batch (each (batch, pos) unless noted)."""

    real: torch.Tensor  # bool
    pos: torch.Tensor  # int64 position among the sequence's real tokens (0 on padding)
    length: torch.Tensor  # (batch,) int64 number of real tokens T


def _layout(attention_mask: torch.Tensor | None, b: int, n: int, device: torch.device) -> _Layout:
    if attention_mask is None:
        real = torch.ones(b, n, dtype=torch.bool, device=device)
    else:
        real = attention_mask.to(device=device, dtype=torch.bool)
    pos = torch.where(real, real.to(torch.int64).cumsum(-1) - 1, 0)
    return _Layout(real, pos, real.sum(-1))


class _EntropyAccumulator:
    """Per-layer sums over queries (per position, per bucket) and per-sequence head means."""

    def __init__(self, layers: Sequence[int]):
        self.layers = list(layers)
        self.pos_sums: dict[int, list[np.ndarray]] = {}  # 6 arrays (h, P)
        self.hist: dict[int, np.ndarray] = {}  # (h, B, N_BINS)
        self.seq: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # [(entropy (b, h), first (b, h))]
        self.lengths: dict[int, list[np.ndarray]] = {}

    def add(self, layer: int, rows: EntropyRows, layout: _Layout, sink_threshold: float,
            skip_queries: int) -> None:
        b, h, n = rows.entropy.shape
        dtype = torch.float64
        valid = (layout.real[:, None] & (rows.n_visible > 0)).to(dtype)  # (b, h, n)
        choice = (layout.real[:, None] & (rows.n_visible > 1)).to(dtype)
        ent, norm, first = rows.entropy.to(dtype), rows.normalized.to(dtype), rows.first_mass.to(dtype)
        per_query = [ent * valid, norm * choice, valid, choice, first * valid,
                     (first > sink_threshold).to(dtype) * valid]
        idx = layout.pos[:, None].expand(b, h, n).permute(1, 0, 2).reshape(h, b * n)  # (h, b*n)
        sums = []
        for value in per_query:
            flat = value.permute(1, 0, 2).reshape(h, b * n)
            sums.append(torch.zeros(h, n, dtype=dtype, device=flat.device).scatter_add_(1, idx, flat))
        n_buckets = int(position_bucket(torch.tensor(max(n - 1, 0)))) + 1
        bucket = position_bucket(layout.pos)[:, None].expand(b, h, n)  # (b, h, n)
        bins = (norm * N_BINS).long().clamp(0, N_BINS - 1)
        cell = (bucket * N_BINS + bins).permute(1, 0, 2).reshape(h, b * n)
        hist = torch.zeros(h, n_buckets * N_BINS, dtype=dtype, device=cell.device).scatter_add_(
            1, cell, choice.permute(1, 0, 2).reshape(h, b * n)).view(h, n_buckets, N_BINS)
        length = layout.length.to(dtype)  # (b,)
        seq_entropy = (ent * valid).sum(-1) / length[:, None]  # (b, h); NaN for empty sequences
        late = valid * (layout.pos >= skip_queries)[:, None].to(dtype)
        seq_first = (first * late).sum(-1) / late.sum(-1)  # NaN where no query is late enough
        self._merge(layer, [s.cpu().numpy() for s in sums], hist.cpu().numpy())
        self.seq.setdefault(layer, []).append((seq_entropy.cpu().numpy(), seq_first.cpu().numpy()))
        self.lengths.setdefault(layer, []).append(layout.length.cpu().numpy())

    def _merge(self, layer: int, sums: list[np.ndarray], hist: np.ndarray) -> None:
        old = self.pos_sums.get(layer)
        if old is not None:
            P = max(old[0].shape[1], sums[0].shape[1])
            sums = [_pad(o, P, 1) + _pad(s, P, 1) for o, s in zip(old, sums)]
            B = max(self.hist[layer].shape[1], hist.shape[1])
            hist = _pad(self.hist[layer], B, 1) + _pad(hist, B, 1)
        self.pos_sums[layer], self.hist[layer] = sums, hist

    def result(self, **opts) -> "AttentionEntropyResult":
        """Stack the layers; ``opts`` are the result's thresholds, skip_queries, causal and source."""
        layers = [l for l in self.layers if l in self.pos_sums]
        if not layers:
            z3, z4 = np.zeros((0, 0, 0)), np.zeros((0, 0, 0, N_BINS))
            return AttentionEntropyResult((), z3, z3, z3, z3, z3, z3, z4, np.zeros((0, 0, 0)),
                                          np.zeros((0, 0, 0)), np.zeros(0, dtype=np.int64), **opts)
        n_seq = {len(np.concatenate(self.lengths[l])) for l in layers}
        if len(n_seq) != 1:
            raise ProbeError(f"layers saw different numbers of sequences {sorted(n_seq)}; was a forward "
                             "interrupted? call reset() and run again")
        P = max(self.pos_sums[l][0].shape[1] for l in layers)
        B = max(self.hist[l].shape[1] for l in layers)
        stack = [np.stack([_pad(self.pos_sums[l][i], P, 1) for l in layers]) for i in range(6)]
        hist = np.stack([_pad(self.hist[l], B, 1) for l in layers])
        seq_entropy = np.stack([np.concatenate([e for e, _ in self.seq[l]]) for l in layers], axis=1)
        seq_first = np.stack([np.concatenate([f for _, f in self.seq[l]]) for l in layers], axis=1)
        lengths = np.concatenate(self.lengths[layers[0]]).astype(np.int64)
        return AttentionEntropyResult(tuple(layers), *stack, hist, seq_entropy, seq_first, lengths, **opts)


def _pad(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Zero-pad ``a`` along ``axis`` (counted from the end for negative values) to length ``n``."""
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, n - a.shape[axis])
    return np.pad(a, widths)


def _nanmean(a: np.ndarray, axis: int = 0) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        count = np.isfinite(a).sum(axis)
        total = np.where(np.isfinite(a), a, 0.0).sum(axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


_ARRAYS = ("entropy_sum", "normalized_sum", "count", "choice_count", "first_mass_sum", "sink_count",
           "normalized_hist", "sequence_entropy", "sequence_first_mass", "sequence_length")
_OPTIONS = ("overload_threshold", "collapse_threshold", "sink_threshold", "skip_queries", "causal", "source")


@dataclass(frozen=True)
class AttentionEntropyResult:
    """Attention entropy and first-token mass, per position and per sequence, with paper-defined summaries.

    Per (layer, head, pos) sums over queries, ``pos`` counted among real tokens,
    each (n_layers, n_heads, n_pos): ``entropy_sum`` (nats), ``normalized_sum``
    (H / log n_visible), ``count`` (real queries with >= 1 visible key),
    ``choice_count`` (>= 2 visible keys; the normalized sums run over these),
    ``first_mass_sum`` (attention on the first real token), ``sink_count``
    (queries whose first-token mass exceeds ``sink_threshold``).
    ``normalized_hist`` (n_layers, n_heads, n_buckets, N_BINS): histogram of the
    normalized entropy per position bucket ([1, 8), [8, 16), [16, 32), ...).
    Per sequence: ``sequence_entropy`` (n_seq, n_layers, n_heads) the mean raw
    entropy over the sequence's real queries, ``sequence_first_mass`` (n_seq,
    n_layers, n_heads) the mean first-token mass over queries at positions >=
    ``skip_queries`` (NaN when none), ``sequence_length`` (n_seq,) T.
    """

    layers: tuple[int, ...]
    entropy_sum: np.ndarray
    normalized_sum: np.ndarray
    count: np.ndarray
    choice_count: np.ndarray
    first_mass_sum: np.ndarray
    sink_count: np.ndarray
    normalized_hist: np.ndarray
    sequence_entropy: np.ndarray
    sequence_first_mass: np.ndarray
    sequence_length: np.ndarray
    overload_threshold: float = 0.75
    collapse_threshold: float = 0.1
    sink_threshold: float = 0.3
    skip_queries: int = 1
    causal: bool = True
    source: str = "qk"  # "qk" (from q and k) or "pattern" (from stored patterns, the reference)

    # -- per-head quantities ---------------------------------------------------
    def _head_arrays(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean entropy, entropy / log T, first-token mass), each (n_layers, n_heads), over sequences ``idx``."""
        ent = self.sequence_entropy if idx is None else self.sequence_entropy[idx]
        first = self.sequence_first_mass if idx is None else self.sequence_first_mass[idx]
        length = self.sequence_length if idx is None else self.sequence_length[idx]
        log_t = np.log(np.where(length >= 2, length, np.nan).astype(np.float64))[:, None, None]
        return _nanmean(ent), _nanmean(ent / log_t), _nanmean(first)

    def _fractions(self, idx: np.ndarray | None = None) -> dict[str, float]:
        ent, ratio, first = self._head_arrays(idx)
        defined = np.isfinite(ratio)
        n = max(int(defined.sum()), 1)
        sinks = np.isfinite(first)
        return {"overload_fraction": float(((ratio >= self.overload_threshold) & (ratio <= 1 + 1e-9)).sum() / n),
                "collapse_fraction": float((defined & (ent < self.collapse_threshold)).sum() / n),
                "sink_rate": float((first > self.sink_threshold).sum() / max(int(sinks.sum()), 1)),
                "mean_entropy": float(np.nanmean(ent)) if defined.any() else math.nan,
                "mean_entropy_ratio": float(np.nanmean(ratio)) if defined.any() else math.nan}

    def head_frame(self) -> pd.DataFrame:
        """One row per (layer, head).

        Columns: ``entropy`` (mean raw entropy, nats), ``entropy_ratio`` (mean
        entropy / log T), ``normalized_entropy`` (mean per-query H / log
        n_visible, the variant), ``first_token_mass`` (mean attention on the
        first real token over queries >= skip_queries), ``overloaded``
        (ratio in [overload_threshold, 1]), ``collapsed`` (entropy <
        collapse_threshold), ``sink`` (first_token_mass > sink_threshold),
        ``overloaded_normalized`` (the variant's verdict), ``state``
        ("overload", "collapse", "normal" or "undefined"), ``n_queries``.
        """
        ent, ratio, first = self._head_arrays()
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = self.normalized_sum.sum(-1) / np.where(self.choice_count.sum(-1) > 0,
                                                          self.choice_count.sum(-1), np.nan)
        rows = []
        for li, layer in enumerate(self.layers):
            for head in range(self.entropy_sum.shape[1]):
                r, e = ratio[li, head], ent[li, head]
                over = bool(self.overload_threshold <= r <= 1 + 1e-9)
                coll = bool(e < self.collapse_threshold)
                state = ("undefined" if not np.isfinite(r) else "overload" if over else
                         "collapse" if coll else "normal")
                rows.append({"layer": layer, "head": head, "entropy": e, "entropy_ratio": r,
                             "normalized_entropy": norm[li, head], "first_token_mass": first[li, head],
                             "overloaded": over, "collapsed": coll,
                             "sink": bool(first[li, head] > self.sink_threshold),
                             "overloaded_normalized": bool(norm[li, head] > self.overload_threshold),
                             "state": state, "n_queries": int(self.count[li, head].sum())})
        return pd.DataFrame(rows, columns=["layer", "head", "entropy", "entropy_ratio", "normalized_entropy",
                                           "first_token_mass", "overloaded", "collapsed", "sink",
                                           "overloaded_normalized", "state", "n_queries"])

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per (layer, head, pos) with mean entropy, normalized entropy, first-token mass."""
        L, H, P = self.count.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            frame = pd.DataFrame({
                "layer": np.repeat(np.asarray(self.layers, dtype=np.int64), H * P),
                "head": np.tile(np.repeat(np.arange(H), P), L),
                "pos": np.tile(np.arange(P), L * H),
                "entropy": (self.entropy_sum / self.count).ravel(),
                "normalized_entropy": (self.normalized_sum / self.choice_count).ravel(),
                "first_token_mass": (self.first_mass_sum / self.count).ravel(),
                "sink_query_fraction": (self.sink_count / self.count).ravel(),
                "n_queries": self.count.ravel().astype(np.int64),
            })
        return frame[frame.n_queries > 0].reset_index(drop=True)

    def bucket_frame(self) -> pd.DataFrame:
        """Per (layer, head, position bucket): the distribution of H / log(n visible keys).

        Buckets [1, 8), [8, 16), [16, 32), ... of the query position (query 0
        has no choice under a causal mask). Columns: ``bucket`` (label),
        ``pos_low``, ``pos_high``, ``n_queries``, ``mean_normalized``,
        ``q10``, ``median``, ``q90`` (from a 20-bin histogram over [0, 1]:
        resolution 0.05), ``mean_entropy`` (nats), ``share_above_threshold``
        (queries with H / log n_visible >= overload_threshold).
        """
        L, H, B, _ = self.normalized_hist.shape
        P = self.count.shape[2]
        bucket_of_pos = position_bucket(np.arange(P))
        edges = np.linspace(0.0, 1.0, N_BINS + 1)
        above = edges[:-1] >= self.overload_threshold - 1e-12
        rows = []
        for li, layer in enumerate(self.layers):
            for head in range(H):
                for bucket in range(B):
                    hist = self.normalized_hist[li, head, bucket]
                    n = hist.sum()
                    if n <= 0:
                        continue
                    in_bucket = bucket_of_pos == bucket
                    low, high = bucket_bounds(bucket, self.causal)
                    choice = self.choice_count[li, head, in_bucket].sum()
                    count = self.count[li, head, in_bucket].sum()
                    q10, med, q90 = (_hist_quantile(hist, edges, q) for q in (0.1, 0.5, 0.9))
                    rows.append({"layer": layer, "head": head, "bucket": f"[{low}, {high})", "pos_low": low,
                                 "pos_high": high, "n_queries": int(n),
                                 "mean_normalized": self.normalized_sum[li, head, in_bucket].sum() / choice,
                                 "q10": q10, "median": med, "q90": q90,
                                 "mean_entropy": self.entropy_sum[li, head, in_bucket].sum() / count,
                                 "share_above_threshold": float(hist[above].sum() / n)})
        return pd.DataFrame(rows, columns=["layer", "head", "bucket", "pos_low", "pos_high", "n_queries",
                                           "mean_normalized", "q10", "median", "q90", "mean_entropy",
                                           "share_above_threshold"])

    def summary(self) -> dict[str, float]:
        """Paper-defined fractions over heads, the variants, and the means they rest on.

        ``overload_fraction``, ``collapse_fraction``, ``sink_rate`` (share of
        heads), ``mean_entropy`` (nats), ``mean_entropy_ratio`` (entropy / log
        T), and the variants ``overload_fraction_normalized``,
        ``mean_normalized_entropy``, ``sink_query_fraction``; ``n_sequences``.
        """
        out = self._fractions()
        heads = self.head_frame()
        defined = heads[heads.state != "undefined"]
        out["overload_fraction_normalized"] = float(defined.overloaded_normalized.mean()) if len(defined) else 0.0
        out["mean_normalized_entropy"] = float(self.normalized_sum.sum() / max(self.choice_count.sum(), 1))
        out["sink_query_fraction"] = float(self.sink_count.sum() / max(self.count.sum(), 1))
        out["n_sequences"] = float(len(self.sequence_length))
        return out

    def intervals(self, *, level: float = 0.95, n_resamples: int = 2000, method: str = "percentile",
                  seed: int = 0) -> dict[str, Interval]:
        """Bootstrap intervals over sequences for the head-level summaries.

        Sequences are resampled with replacement and every statistic of
        :meth:`summary` that rests on per-sequence values (``overload_fraction``,
        ``collapse_fraction``, ``sink_rate``, ``mean_entropy``,
        ``mean_entropy_ratio``) is recomputed on each resample
        (:func:`normlens.uncertainty.bootstrap_interval`).
        """
        idx = np.arange(len(self.sequence_length), dtype=np.float64)
        return {name: bootstrap_interval(idx, statistic=lambda i, name=name: self._fractions(i.astype(np.int64))[name],
                                         level=level, n_resamples=n_resamples, seed=seed, method=method)
                for name in ("overload_fraction", "collapse_fraction", "sink_rate", "mean_entropy",
                             "mean_entropy_ratio")}

    def merge(self, other: "AttentionEntropyResult") -> "AttentionEntropyResult":
        """Sums added, sequences concatenated (same layers and options)."""
        if self.layers != other.layers:
            raise ValueError(f"cannot merge entropy over layers {self.layers} and {other.layers}")
        mine, theirs = ({k: getattr(r, k) for k in _OPTIONS} for r in (self, other))
        if mine != theirs:
            raise ValueError(f"cannot merge results with different options: {mine} vs {theirs}")
        P = max(self.count.shape[2], other.count.shape[2])
        B = max(self.normalized_hist.shape[2], other.normalized_hist.shape[2])
        sums = {k: _pad(getattr(self, k), P, 2) + _pad(getattr(other, k), P, 2) for k in _ARRAYS[:6]}
        return replace(self, **sums,
                       normalized_hist=_pad(self.normalized_hist, B, 2) + _pad(other.normalized_hist, B, 2),
                       **{k: np.concatenate([getattr(self, k), getattr(other, k)]) for k in _ARRAYS[7:]})

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        save_frame(self.head_frame(), folder / "attention_heads.parquet")
        save_frame(self.bucket_frame(), folder / "attention_buckets.parquet")
        write_npz(folder / "attention_entropy.npz", **{k: getattr(self, k) for k in _ARRAYS})
        write_json(folder / "attention_entropy.json", {"layers": list(self.layers),
                                                        **{k: getattr(self, k) for k in _OPTIONS},
                                                        **self.summary()})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "AttentionEntropyResult":
        folder = Path(folder)
        meta = read_json(folder / "attention_entropy.json")
        arrays = read_npz(folder / "attention_entropy.npz")
        return cls(tuple(meta["layers"]), *(arrays[k] for k in _ARRAYS), **{k: meta[k] for k in _OPTIONS})


def _hist_quantile(hist: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Quantile ``q`` of a histogram, linear within the bin that holds it."""
    cum = np.cumsum(hist)
    target = q * cum[-1]
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, len(hist) - 1)
    before = cum[i - 1] if i else 0.0
    frac = (target - before) / hist[i] if hist[i] > 0 else 0.0
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


def _check_options(overload: float, collapse: float, sink: float, skip_queries: int) -> None:
    if not 0 < overload <= 1:
        raise ValueError(f"overload_threshold is a share of log T in (0, 1], got {overload}")
    if not collapse >= 0:
        raise ValueError(f"collapse_threshold is an entropy in nats >= 0, got {collapse}")
    if not 0 < sink < 1:
        raise ValueError(f"sink_threshold must lie in (0, 1), got {sink}")
    if not isinstance(skip_queries, int) or skip_queries < 0:
        raise ValueError(f"skip_queries must be a non-negative integer, got {skip_queries!r}")


class AttentionEntropyProbe(Probe):
    """Entropy and first-token mass per (layer, head, query) from q and k (no pattern stored).

    Hooks ``blocks.{l}.attn.q.hook_out`` and ``k.hook_out``; reads the padding
    mask from the model call's ``attention_mask`` keyword. Assumes causal
    attention with scale 1/sqrt(d_head) and no rotary embedding (the zoo's
    attention); for other models use :class:`PatternEntropyProbe`. On CUDA the
    entropy comes from the Triton kernel (``backend="auto"``).

    Args:
        layers: layers to probe (default all).
        overload_threshold: share of log T above which a head is overloaded (3/4, ReLU's Revival).
        collapse_threshold: mean entropy in nats below which a head has collapsed.
        sink_threshold: ε of Gu et al. 2024 (0.3).
        skip_queries: queries at positions below this are left out of the first-token means.
        backend: "auto", "torch" or "triton" (see :func:`normlens.kernels.online_entropy.entropy_backend`).
    """

    name = "attention_entropy"
    source = "qk"

    def __init__(self, layers: Sequence[int] | None = None, *, block_size: int = 256,
                 overload_threshold: float = 0.75, collapse_threshold: float = 0.1,
                 sink_threshold: float = 0.3, skip_queries: int = 1, causal: bool = True,
                 scale: float | None = None, backend: str = "auto"):
        super().__init__(None)
        _check_options(overload_threshold, collapse_threshold, sink_threshold, skip_queries)
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
        self.layers_arg = None if layers is None else [int(l) for l in layers]
        self.block_size, self.backend = block_size, backend
        self.overload_threshold, self.collapse_threshold = overload_threshold, collapse_threshold
        self.sink_threshold, self.skip_queries = sink_threshold, skip_queries
        self.causal, self.scale = causal, scale
        self.reset()

    def _layers(self, info: ModelInfo) -> list[int]:
        if info.kind == "module" or not info.n_layers:
            raise ProbeError("attention probes need a TransformerLens bridge (with blocks.{l}.attn hooks)")
        layers = self.layers_arg if self.layers_arg is not None else list(range(info.n_layers))
        bad = [l for l in layers if not 0 <= l < info.n_layers]
        if bad:
            raise ProbeError(f"layers {bad} out of range; the model has layers 0..{info.n_layers - 1}")
        return layers

    def default_sites(self, info: ModelInfo) -> list[str]:
        names = []
        for layer in self._layers(info):
            names += [S.attn_q(layer), S.attn_k(layer)]
        missing = [n for n in names if not info.has(n)]
        if missing:
            raise ProbeError(f"model lacks the q/k hooks {missing[:2]}; use PatternEntropyProbe instead")
        return names

    def reset(self) -> None:
        self._acc = _EntropyAccumulator(self._layers(self.info) if self.info else [])
        self._pending: dict[int, torch.Tensor] = {}

    def begin_batch(self, batch: BatchContext) -> None:
        self._pending = {}

    def _add(self, layer: int, rows: EntropyRows, batch: BatchContext) -> None:
        b, _, n = rows.entropy.shape
        layout = _layout(batch.attention_mask, b, n, rows.entropy.device)
        self._acc.add(layer, rows, layout, self.sink_threshold, self.skip_queries)

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        layer = S.layer_of(site)
        if site == S.attn_q(layer):
            self._pending[layer] = x
            return
        q = self._pending.pop(layer, None)
        if q is None:
            raise ProbeError(f"saw {site} before the queries of layer {layer}")
        rows = attention_entropy(q, x, n_heads=self.info.n_heads, scale=self.scale, causal=self.causal,
                                 attention_mask=batch.attention_mask, block_size=self.block_size,
                                 backend=self.backend)
        self._add(layer, rows, batch)

    def result(self) -> AttentionEntropyResult:
        return self._acc.result(overload_threshold=self.overload_threshold,
                                collapse_threshold=self.collapse_threshold, sink_threshold=self.sink_threshold,
                                skip_queries=self.skip_queries, causal=self.causal, source=self.source)


class PatternEntropyProbe(AttentionEntropyProbe):
    """Reference path: entropy from TransformerLens's stored ``hook_pattern`` (N x N per head)."""

    name = "attention_entropy_pattern"
    source = "pattern"

    def default_sites(self, info: ModelInfo) -> list[str]:
        names = [S.attn_pattern(layer) for layer in self._layers(info)]
        return info.existing(names)

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        self._add(S.layer_of(site), _rows_from_pattern(x, batch.attention_mask, self.causal), batch)


def _rows_from_pattern(pattern: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool) -> EntropyRows:
    b, h, n_q, n_k = pattern.shape
    vis = reference.visible_keys(n_q, n_k, causal=causal, key_padding_mask=attention_mask, device=pattern.device)
    return pattern_entropy(pattern, vis, first_real_token(attention_mask, b, pattern.device))


def compute_pattern_entropy(
    patterns: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    *,
    causal: bool = True,
    overload_threshold: float = 0.75,
    collapse_threshold: float = 0.1,
    sink_threshold: float = 0.3,
    skip_queries: int = 1,
) -> AttentionEntropyResult:
    """The :class:`AttentionEntropyResult` of given attention patterns (e.g. ``output_attentions``).

    Args:
        patterns: per layer a (batch, head, query, key) pattern whose rows sum to 1 over the
            visible keys; a sequence is taken as layers 0, 1, ...
        attention_mask: (batch, pos), 1 = real token.
        causal, thresholds, skip_queries: as for :class:`AttentionEntropyProbe`.

    A uniform causal head over 64 tokens reaches 0.771 of log T (just overloaded):

    >>> p = torch.tril(torch.ones(64, 64, dtype=torch.float64))
    >>> heads = compute_pattern_entropy([(p / p.sum(-1, keepdim=True))[None, None]]).head_frame()
    >>> round(float(heads.entropy_ratio[0]), 3), heads.state[0]
    (0.771, 'overload')
    """
    _check_options(overload_threshold, collapse_threshold, sink_threshold, skip_queries)
    by_layer = dict(patterns) if isinstance(patterns, Mapping) else dict(enumerate(patterns))
    for layer, p in by_layer.items():
        if not isinstance(p, torch.Tensor) or p.dim() != 4 or p.shape[-1] != p.shape[-2]:
            got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"pattern of layer {layer} must be (batch, head, pos, pos), got {got}")
    acc = _EntropyAccumulator(sorted(by_layer))
    for layer in sorted(by_layer):
        p = by_layer[layer]
        b, _, n, _ = p.shape
        acc.add(layer, _rows_from_pattern(p, attention_mask, causal), _layout(attention_mask, b, n, p.device),
                sink_threshold, skip_queries)
    return acc.result(overload_threshold=overload_threshold, collapse_threshold=collapse_threshold,
                      sink_threshold=sink_threshold, skip_queries=skip_queries, causal=causal, source="pattern")
