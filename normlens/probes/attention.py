"""Attention entropy, entropic overload, collapse and attention sinks -- without the N x N matrix.

For query i with scores s_j = q_i . k_j / sqrt(d_head) over the keys it may see,
p_j = softmax(s)_j and H_i = -sum_j p_j log p_j. With m = max_j s_j,
l = sum_j exp(s_j - m) and t = sum_j exp(s_j - m) s_j (the online-softmax
accumulators of Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"):

    H = m + log l - t / l

The accumulators update block by block over keys (online softmax): when the
running max moves from m to m', l and t are rescaled by exp(m - m'). This file
keeps u = t - m l = sum_j exp(s_j - m)(s_j - m) instead of t (same algebra,
H = log l - u / l, u' = exp(m - m') (u + l (m - m'))), which avoids the
cancellation of m against t / l in float32. Queries are processed in blocks
too, so at most (batch, heads, q_block, k_block) scores exist at a time.

Normalized entropy is H / log(n_visible) in [0, 1] (the maximum under a mask). Rows with
at most one visible key carry no choice: H = 0, and their normalized entropy is
defined as 0 and left out of the per-head means. Fully masked rows (padding
queries) get H = 0 and are left out of every mean. "Entropic overload" (ReLU's
Revival): a head whose mean normalized entropy exceeds ``overload_threshold``
(0.75); "collapse": below ``collapse_threshold``. Attention-sink rate: the share
of queries putting more than ``sink_threshold`` (0.3) of their mass on the
first key (position 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from normlens import sites as S
from normlens.probes.attach import BatchContext, ModelInfo, Probe, ProbeError
from normlens.kernels.reference import visible_keys
from normlens.io import read_json, read_npz, save_frame, write_json, write_npz


@dataclass(frozen=True)
class EntropyRows:
    """Per-query results of one batch, each (batch, heads, q_pos)."""

    entropy: torch.Tensor
    normalized: torch.Tensor
    n_visible: torch.Tensor  # int64
    first_mass: torch.Tensor  # probability on key 0


def _visible(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool,
             key_mask: torch.Tensor | None) -> torch.Tensor:
    """(batch or 1, 1, q, k) bool: which keys each query may see, for one block of query and key
    positions (:func:`normlens.kernels.reference.visible_keys` for the whole matrix)."""
    vis = (k_pos[None, :] <= q_pos[:, None]) if causal else torch.ones(
        len(q_pos), len(k_pos), dtype=torch.bool, device=q_pos.device)
    vis = vis[None, None]  # (1, 1, q, k)
    if key_mask is not None:
        vis = vis & key_mask[:, None, None, k_pos]  # (batch, 1, q, k)
    return vis


def _pad_pos(a: np.ndarray, n_pos: int) -> np.ndarray:
    """Zero-pad the last (position) axis of ``a`` to ``n_pos``."""
    return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, n_pos - a.shape[-1])])


def _split_heads(x: torch.Tensor, n_heads: int | None, what: str) -> torch.Tensor:
    """(batch, pos, heads, d_head) or (batch, pos, heads*d_head) -> (batch, heads, pos, d_head)."""
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


def attention_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    n_heads: int | None = None,
    scale: float | None = None,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
    block_size: int = 256,
) -> EntropyRows:
    """Entropy of softmax(q k^T * scale) per (batch, head, query), block by block.

    Args:
        q, k: (batch, pos, heads, d_head) or (batch, pos, heads*d_head) (then pass n_heads).
        scale: score scale, default 1/sqrt(d_head).
        causal: query i sees keys j <= i.
        attention_mask: (batch, pos), 1/True = real token; padded keys are hidden.
        block_size: queries and keys per block; peak extra memory is
            about 4 * batch * heads * block_size^2 * itemsize bytes.

    Returns:
        :class:`EntropyRows`, float64 for float64 inputs, float32 otherwise.
    """
    qh = _split_heads(q.detach(), n_heads, "q")  # (batch, heads, pos, d_head)
    kh = _split_heads(k.detach(), n_heads, "k")
    if qh.shape[0] != kh.shape[0] or qh.shape[1] != kh.shape[1] or qh.shape[3] != kh.shape[3]:
        raise ProbeError(f"q and k disagree: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    dtype = torch.float64 if qh.dtype == torch.float64 else torch.float32
    qh, kh = qh.to(dtype), kh.to(dtype)
    b, h, n_q, d_head = qh.shape
    n_k = kh.shape[2]
    scale = 1.0 / math.sqrt(d_head) if scale is None else float(scale)
    key_mask = None
    if attention_mask is not None:
        if attention_mask.shape != (b, n_k):
            raise ProbeError(f"attention_mask must be (batch, pos) = {(b, n_k)}, got {tuple(attention_mask.shape)}")
        key_mask = attention_mask.to(torch.bool)
    device = qh.device
    entropy = torch.zeros(b, h, n_q, dtype=dtype, device=device)
    n_vis = torch.zeros(b, h, n_q, dtype=torch.int64, device=device)
    first_mass = torch.zeros(b, h, n_q, dtype=dtype, device=device)
    s0 = torch.einsum("bhqd,bhd->bhq", qh, kh[:, :, 0]) * scale  # (b, h, q) score on key 0
    for q0 in range(0, n_q, block_size):
        q_pos = torch.arange(q0, min(q0 + block_size, n_q), device=device)
        qb = qh[:, :, q_pos] * scale  # (b, h, bq, d)
        bq = len(q_pos)
        m = torch.full((b, h, bq), -math.inf, dtype=dtype, device=device)
        l = torch.zeros(b, h, bq, dtype=dtype, device=device)
        u = torch.zeros(b, h, bq, dtype=dtype, device=device)
        cnt = torch.zeros(b if key_mask is not None else 1, 1, bq, dtype=torch.int64, device=device)
        k_end = min(n_k, int(q_pos[-1]) + 1) if causal else n_k
        for k0 in range(0, k_end, block_size):
            k_pos = torch.arange(k0, min(k0 + block_size, k_end), device=device)
            vis = _visible(q_pos, k_pos, causal, key_mask)  # (b|1, 1, bq, bk)
            s = torch.matmul(qb, kh[:, :, k_pos].transpose(-1, -2))  # (b, h, bq, bk)
            s = s.masked_fill(~vis, -math.inf)
            m_new = torch.maximum(m, s.amax(-1))  # (b, h, bq)
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros((), dtype=dtype))
            alpha = torch.where(torch.isfinite(m), torch.exp(m - m_safe), torch.zeros((), dtype=dtype))
            shift = torch.where(torch.isfinite(m), m - m_safe, torch.zeros((), dtype=dtype))
            w = torch.exp(s - m_safe[..., None])  # masked -> exp(-inf) = 0
            centred = torch.where(vis, s - m_safe[..., None], torch.zeros((), dtype=dtype))
            u = alpha * (u + l * shift) + (w * centred).sum(-1)
            l = alpha * l + w.sum(-1)
            m = m_new
            cnt = cnt + vis.sum(-1)
        ok = l > 0
        ent = torch.where(ok, torch.log(torch.where(ok, l, 1.0)) - u / torch.where(ok, l, 1.0), 0.0)
        entropy[:, :, q_pos] = ent.clamp_min(0)
        n_vis[:, :, q_pos] = cnt.expand(b, h, bq)
        p0 = torch.exp(s0[:, :, q_pos] - torch.where(ok, m, 0.0)) / torch.where(ok, l, 1.0)
        vis0 = _visible(q_pos, torch.zeros(1, dtype=torch.long, device=device), causal, key_mask)[..., 0]
        first_mass[:, :, q_pos] = torch.where(ok & vis0, p0, 0.0)
    log_n = torch.log(n_vis.clamp_min(1).to(dtype))
    normalized = torch.where(n_vis > 1, entropy / torch.where(n_vis > 1, log_n, 1.0), 0.0)
    return EntropyRows(entropy, normalized.clamp(0, 1), n_vis, first_mass)


def pattern_entropy(pattern: torch.Tensor, visible: torch.Tensor | None = None) -> EntropyRows:
    """Reference path: -sum p log p from a stored (batch, head, q, k) pattern (0 log 0 = 0).

    ``visible`` (broadcastable bool) gives the number of visible keys; default:
    the keys with p > 0.
    """
    p = pattern.detach()
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    p = p.to(dtype)
    logp = torch.where(p > 0, torch.log(torch.where(p > 0, p, 1.0)), 0.0)
    ent = -(p * logp).sum(-1)  # (b, h, q)
    n_vis = (visible if visible is not None else p > 0).expand_as(p).sum(-1)
    log_n = torch.log(n_vis.clamp_min(1).to(dtype))
    normalized = torch.where(n_vis > 1, ent / torch.where(n_vis > 1, log_n, 1.0), 0.0)
    return EntropyRows(ent, normalized, n_vis, p[..., 0])


@dataclass(frozen=True)
class AttentionEntropyResult:
    """Sums over queries per (layer, head, pos) and their per-head summary.

    Arrays are (n_layers, n_heads, n_pos): ``entropy_sum``, ``normalized_sum``,
    ``sink_count`` over ``count`` valid queries (>= 1 visible key), and
    ``choice_count`` (>= 2 visible keys, the ones in normalized means).
    """

    layers: tuple[int, ...]
    entropy_sum: np.ndarray
    normalized_sum: np.ndarray
    count: np.ndarray
    choice_count: np.ndarray
    sink_count: np.ndarray
    overload_threshold: float = 0.75
    collapse_threshold: float = 0.1
    sink_threshold: float = 0.3
    source: str = "qk"  # "qk" (block-wise) or "pattern" (reference)

    def head_frame(self) -> pd.DataFrame:
        """One row per (layer, head): mean entropy, mean normalized entropy, sink rate, state."""
        rows = []
        for li, layer in enumerate(self.layers):
            for head in range(self.entropy_sum.shape[1]):
                n = self.count[li, head].sum()
                nc = self.choice_count[li, head].sum()
                ent = self.entropy_sum[li, head].sum() / n if n else float("nan")
                norm = self.normalized_sum[li, head].sum() / nc if nc else float("nan")
                state = ("overload" if norm > self.overload_threshold else
                         "collapse" if norm < self.collapse_threshold else "normal")
                rows.append({"layer": layer, "head": head, "entropy": ent, "normalized_entropy": norm,
                             "sink_rate": self.sink_count[li, head].sum() / n if n else float("nan"),
                             "n_queries": int(n), "state": state if nc else "undefined"})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per (layer, head, pos) with mean entropy, normalized entropy and sink rate."""
        L, H, P = self.count.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            frame = pd.DataFrame({
                "layer": np.repeat(np.asarray(self.layers), H * P),
                "head": np.tile(np.repeat(np.arange(H), P), L),
                "pos": np.tile(np.arange(P), L * H),
                "entropy": (self.entropy_sum / self.count).ravel(),
                "normalized_entropy": (self.normalized_sum / self.choice_count).ravel(),
                "sink_rate": (self.sink_count / self.count).ravel(),
                "n_queries": self.count.ravel().astype(np.int64),
            })
        return frame[frame.n_queries > 0].reset_index(drop=True)

    def summary(self) -> dict[str, float]:
        heads = self.head_frame()
        defined = heads[heads.state != "undefined"]
        n = max(len(defined), 1)
        return {"overload_fraction": float((defined.state == "overload").sum() / n),
                "collapse_fraction": float((defined.state == "collapse").sum() / n),
                "sink_rate": float(self.sink_count.sum() / max(self.count.sum(), 1)),
                "mean_normalized_entropy": float(self.normalized_sum.sum() / max(self.choice_count.sum(), 1))}

    def merge(self, other: "AttentionEntropyResult") -> "AttentionEntropyResult":
        if self.layers != other.layers:
            raise ValueError(f"cannot merge entropy over layers {self.layers} and {other.layers}")
        P = max(self.count.shape[2], other.count.shape[2])
        names = ("entropy_sum", "normalized_sum", "count", "choice_count", "sink_count")
        return AttentionEntropyResult(self.layers, *(_pad_pos(getattr(self, k), P) + _pad_pos(getattr(other, k), P)
                                                     for k in names),
                                      self.overload_threshold, self.collapse_threshold, self.sink_threshold, self.source)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        save_frame(self.head_frame(), folder / "attention_heads.parquet")
        write_npz(folder / "attention_entropy.npz", **{
            k: getattr(self, k) for k in ("entropy_sum", "normalized_sum", "count", "choice_count", "sink_count")})
        write_json(folder / "attention_entropy.json", {
            "layers": list(self.layers), "overload_threshold": self.overload_threshold,
            "collapse_threshold": self.collapse_threshold, "sink_threshold": self.sink_threshold,
            "source": self.source, **self.summary()})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "AttentionEntropyResult":
        folder = Path(folder)
        meta = read_json(folder / "attention_entropy.json")
        arrays = read_npz(folder / "attention_entropy.npz")
        return cls(tuple(meta["layers"]), arrays["entropy_sum"], arrays["normalized_sum"], arrays["count"],
                   arrays["choice_count"], arrays["sink_count"], meta["overload_threshold"],
                   meta["collapse_threshold"], meta["sink_threshold"], meta["source"])


class _EntropyAccumulator:
    def __init__(self, layers: Sequence[int]):
        self.layers = list(layers)
        self.sums: dict[int, list[np.ndarray]] = {}

    def add(self, layer: int, rows: EntropyRows, sink_threshold: float) -> None:
        valid = rows.n_visible > 0  # (b, h, q); fully masked rows are not counted
        choice = rows.n_visible > 1
        parts = [(rows.entropy * valid).sum(0), (rows.normalized * choice).sum(0), valid.sum(0),
                 choice.sum(0), ((rows.first_mass > sink_threshold) & valid).sum(0)]
        parts = [p.double().cpu().numpy() for p in parts]  # each (h, q)
        old = self.sums.get(layer)
        if old is not None:
            P = max(old[0].shape[1], parts[0].shape[1])
            parts = [_pad_pos(o, P) + _pad_pos(p, P) for o, p in zip(old, parts)]
        self.sums[layer] = parts

    def result(self, probe) -> AttentionEntropyResult:
        layers = [l for l in self.layers if l in self.sums]
        if not layers:
            z = np.zeros((0, 0, 0))
            return AttentionEntropyResult((), z, z, z, z, z, probe.overload_threshold,
                                          probe.collapse_threshold, probe.sink_threshold, probe.source)
        P = max(self.sums[l][0].shape[1] for l in layers)
        stack = [np.stack([_pad_pos(self.sums[l][i], P) for l in layers]) for i in range(5)]
        return AttentionEntropyResult(tuple(layers), *stack, probe.overload_threshold,
                                      probe.collapse_threshold, probe.sink_threshold, probe.source)


def _check_thresholds(overload: float, collapse: float, sink: float) -> None:
    if not 0 <= collapse <= overload <= 1:
        raise ValueError(f"need 0 <= collapse_threshold <= overload_threshold <= 1, got {collapse}, {overload}")
    if not 0 < sink < 1:
        raise ValueError(f"sink_threshold must lie in (0, 1), got {sink}")


class AttentionEntropyProbe(Probe):
    """Entropy per (layer, head, query position) from q and k, block by block (no pattern stored).

    Hooks ``blocks.{l}.attn.q.hook_out`` and ``k.hook_out``; reads the padding
    mask from the model call's ``attention_mask`` keyword. Assumes causal
    attention with scale 1/sqrt(d_head) and no rotary embedding (the zoo's
    attention); for other models use :class:`PatternEntropyProbe`.
    """

    name = "attention_entropy"
    source = "qk"

    def __init__(self, layers: Sequence[int] | None = None, *, block_size: int = 256,
                 overload_threshold: float = 0.75, collapse_threshold: float = 0.1,
                 sink_threshold: float = 0.3, causal: bool = True, scale: float | None = None):
        super().__init__(None)
        _check_thresholds(overload_threshold, collapse_threshold, sink_threshold)
        self.layers_arg = None if layers is None else [int(l) for l in layers]
        self.block_size = block_size
        self.overload_threshold, self.collapse_threshold = overload_threshold, collapse_threshold
        self.sink_threshold, self.causal, self.scale = sink_threshold, causal, scale
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

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        layer = S.layer_of(site)
        if site == S.attn_q(layer):
            self._pending[layer] = x
            return
        q = self._pending.pop(layer, None)
        if q is None:
            raise ProbeError(f"saw {site} before the queries of layer {layer}")
        rows = attention_entropy(q, x, n_heads=self.info.n_heads, scale=self.scale, causal=self.causal,
                                 attention_mask=batch.attention_mask, block_size=self.block_size)
        self._acc.add(layer, rows, self.sink_threshold)

    def result(self) -> AttentionEntropyResult:
        return self._acc.result(self)


class PatternEntropyProbe(AttentionEntropyProbe):
    """Reference path: entropy from TransformerLens's stored ``hook_pattern`` (N x N per head)."""

    name = "attention_entropy_pattern"
    source = "pattern"

    def default_sites(self, info: ModelInfo) -> list[str]:
        names = [S.attn_pattern(layer) for layer in self._layers(info)]
        return info.existing(names)

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        b, h, n_q, n_k = x.shape
        vis = visible_keys(n_q, n_k, causal=self.causal, key_padding_mask=batch.attention_mask, device=x.device)
        self._acc.add(S.layer_of(site), pattern_entropy(x, vis), self.sink_threshold)
