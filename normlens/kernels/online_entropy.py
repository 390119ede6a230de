"""Attention entropy without the N x N matrix: the online-softmax algebra, its torch path, the dispatch.

For query i with scores s_j = scale · q_i·k_j over the keys it may see,
p_j = softmax(s)_j and H_i = -Σ_j p_j log p_j. With m = max_j s_j,
l = Σ_j exp(s_j - m) and u = Σ_j exp(s_j - m)·(s_j - m) (the online-softmax
accumulators of Milakov & Gimelshein 2018, "Online normalizer calculation for
softmax", with the score sum kept relative to the running max):

    H = log l - u / l,        log Σ_j exp(s_j) = m + log l.

Keeping u relative to m avoids the cancellation of m against t/l that the plain
form H = m + log l - t/l (t = Σ exp(s_j - m)·s_j) suffers in float32. Key blocks
update (m, l, u): when the running max moves from m to m', with δ = m - m',

    l' = e^δ·l + Σ_block exp(s_j - m'),
    u' = e^δ·(u + δ·l) + Σ_block exp(s_j - m')·(s_j - m').

This module is the one home of that algebra: :func:`blockwise_attention_entropy`
runs it in torch (any device, float64 for exact tests), and the Triton kernel
in :mod:`normlens.kernels.attention_entropy` runs the same update in base 2
(exp2/log2) per tile. :func:`compute_attention_entropy` is the dispatch: the
Triton kernel for CUDA tensors when triton is installed, the torch block loop
otherwise. The materializing reference is
:func:`normlens.kernels.reference.attention_entropy`.

Both paths return the log-sum-exp m + log l of each row as well, so the
probability of any single key j is exp(s_j - logsumexp) without another pass
(the attention on the first real token, for attention sinks).

Normalized entropy is H / log(n_visible) in [0, 1]; rows with at most one
visible key carry no choice and hold 0 (both H and normalized); rows with no
visible key (padding) hold 0 and logsumexp -inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class AttentionEntropy:
    """Per (batch, head, query) attention entropy in nats, normalized entropy and log-sum-exp.

    Tensors are (batch, head, n_query); float64 for float64 inputs on the torch
    path, float32 otherwise. ``logsumexp`` is log Σ_j exp(s_j) over the visible
    keys (-inf where none is visible).
    """

    entropy: torch.Tensor
    normalized: torch.Tensor
    logsumexp: torch.Tensor


def count_visible(n_query: int, n_key: int, *, causal: bool, key_padding_mask: torch.Tensor | None,
                  device: torch.device) -> torch.Tensor:
    """(batch or 1, n_query) int64: how many keys each query may see (positions aligned at 0)."""
    if key_padding_mask is None:
        keep = torch.ones(1, n_key, dtype=torch.int64, device=device)
    else:
        keep = key_padding_mask.to(device=device, dtype=torch.int64)  # (b, n_key)
    if not causal:
        return keep.sum(-1, keepdim=True).expand(keep.shape[0], n_query)
    seen = keep.cumsum(-1)  # (b, n_key): real keys at positions <= j
    idx = torch.arange(n_query, device=device).clamp_max(n_key - 1)
    return seen[:, idx]  # (b, n_query)


def normalize_entropy(entropy: torch.Tensor, n_visible: torch.Tensor) -> torch.Tensor:
    """H / log(n_visible), 0 where fewer than two keys are visible; broadcasts, clamped to [0, 1]."""
    choice = n_visible > 1
    log_n = torch.log(n_visible.clamp_min(2).to(entropy.dtype))
    return torch.where(choice, entropy / log_n, torch.zeros((), dtype=entropy.dtype,
                                                              device=entropy.device)).clamp(0, 1)


def blockwise_attention_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_size: int = 256,
) -> AttentionEntropy:
    """Entropy of softmax(scale · q kᵀ) per (batch, head, query) by the online algebra, in torch.

    Args:
        q: (batch, head, n_query, d_head); k: (batch, head, n_key, d_head); any float dtype.
        causal: query i sees keys j <= i.
        key_padding_mask: (batch, n_key), True/1 where the key is a real token.
        scale: score scale, default 1/sqrt(d_head).
        block_size: queries and keys per block; peak extra memory is about
            4·batch·heads·block_size²·itemsize bytes.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = q.detach().to(dtype), k.detach().to(dtype)
    b, h, n_q, d_head = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(d_head) if scale is None else float(scale)
    keep = None if key_padding_mask is None else key_padding_mask.to(device=q.device, dtype=torch.bool)
    device = q.device
    zero = torch.zeros((), dtype=dtype, device=device)
    entropy = torch.zeros(b, h, n_q, dtype=dtype, device=device)
    lse = torch.full((b, h, n_q), -math.inf, dtype=dtype, device=device)
    for q0 in range(0, n_q, block_size):
        q_pos = torch.arange(q0, min(q0 + block_size, n_q), device=device)
        qb = q[:, :, q_pos] * scale  # (b, h, bq, d)
        bq = len(q_pos)
        m = torch.full((b, h, bq), -math.inf, dtype=dtype, device=device)
        l = torch.zeros(b, h, bq, dtype=dtype, device=device)
        u = torch.zeros(b, h, bq, dtype=dtype, device=device)
        k_end = min(n_k, int(q_pos[-1]) + 1) if causal else n_k
        for k0 in range(0, k_end, block_size):
            k_pos = torch.arange(k0, min(k0 + block_size, k_end), device=device)
            vis = torch.ones(bq, len(k_pos), dtype=torch.bool, device=device)
            if causal:
                vis = k_pos[None, :] <= q_pos[:, None]
            vis = vis[None, None]  # (1, 1, bq, bk)
            if keep is not None:
                vis = vis & keep[:, None, None, k_pos]  # (b, 1, bq, bk)
            s = torch.matmul(qb, k[:, :, k_pos].transpose(-1, -2)).masked_fill(~vis, -math.inf)  # (b, h, bq, bk)
            m_new = torch.maximum(m, s.amax(-1))  # (b, h, bq)
            m_ref = torch.where(torch.isfinite(m_new), m_new, zero)  # no (-inf) - (-inf)
            delta = torch.where(torch.isfinite(m), m - m_ref, zero)  # m finite whenever l > 0
            rescale = torch.where(torch.isfinite(m), torch.exp(delta), zero)
            z = torch.where(vis, s - m_ref[..., None], zero)
            w = torch.where(vis, torch.exp(z), zero)
            u = rescale * (u + delta * l) + (w * z).sum(-1)
            l = rescale * l + w.sum(-1)
            m = m_new
        ok = l > 0
        l_safe = torch.where(ok, l, torch.ones((), dtype=dtype, device=device))
        entropy[:, :, q_pos] = torch.where(ok, torch.log(l_safe) - u / l_safe, zero).clamp_min(0)
        lse[:, :, q_pos] = torch.where(ok, m + torch.log(l_safe), lse[:, :, q_pos])
    n_vis = count_visible(n_q, n_k, causal=causal, key_padding_mask=keep, device=device)[:, None]  # (b|1, 1, q)
    return AttentionEntropy(entropy, normalize_entropy(entropy, n_vis).expand_as(entropy), lse)


def entropy_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """The path :func:`compute_attention_entropy` takes for ``q``: "triton" or "torch".

    "auto" picks the Triton kernel for CUDA tensors of float32/bfloat16/float16
    when triton is installed, and the torch block loop otherwise (CPU, float64).
    "triton" forces the kernel (on CPU it needs ``TRITON_INTERPRET=1``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    from normlens.kernels._launch import SUPPORTED_DTYPES
    from normlens.kernels.config import is_available

    if q.device.type == "cuda" and q.dtype in SUPPORTED_DTYPES and is_available():
        return "triton"
    return "torch"


def compute_attention_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    block_size: int = 256,
) -> AttentionEntropy:
    """Attention entropy per (batch, head, query) by the path :func:`entropy_backend` picks.

    Args:
        q: (batch, head, n_query, d_head); k: (batch, head, n_key, d_head); any strides.
        causal, key_padding_mask, scale: as in :func:`blockwise_attention_entropy`.
        backend: "auto", "torch" or "triton".
        block_size: the torch path's block (the kernel picks its own tiles).
    """
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be (batch, head, pos, d_head), got {got}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch, head and d_head")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, "
                         f"expected (batch, n_key) = {(k.shape[0], k.shape[2])}")
    if entropy_backend(q, backend) == "triton":
        from normlens.kernels.attention_entropy import fused_attention_entropy

        mask = None if key_padding_mask is None else key_padding_mask.to(q.device)
        return fused_attention_entropy(q.detach(), k.detach(), causal=causal, key_padding_mask=mask, scale=scale)
    return blockwise_attention_entropy(q, k, causal=causal, key_padding_mask=key_padding_mask, scale=scale,
                                       block_size=block_size)
