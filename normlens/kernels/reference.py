"""Plain-torch references for the fused kernels (differentiable, any device, any float dtype).

They compute in float32 (float64 stays float64) and return the output in the
input's dtype, like the kernels. The autograd Functions fall back on them when
a second derivative is asked for, so they must stay pure torch.

* layer_norm:  mean = E[x], rstd = 1/sqrt(Var[x] + eps), y = (x - mean)·rstd·w + b  (Ba et al. 2016)
* rms_norm:    rstd = 1/sqrt(E[x²] + eps), y = x·rstd·w  (Zhang & Sennrich 2019)
* dyt:         y = w·tanh(alpha·x) + b  (Zhu et al. 2025)
* attention_entropy / pattern_entropy: H_i = -Σ_j p_ij log p_ij over the keys query i
  may see (0·log 0 = 0), from the materialized scores or a stored pattern;
  normalized by log(number of visible keys); 0 where fewer than two keys are visible.
  This is the one reference for the online algebra of :mod:`normlens.kernels.online_entropy`.
"""
from __future__ import annotations

import math

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dim. Returns (y in x.dtype, mean, rstd), stats shaped x.shape[:-1]."""
    xf = x.to(_compute_dtype(x))
    mean = xf.mean(-1)  # (...,)
    centred = xf - mean.unsqueeze(-1)
    rstd = torch.rsqrt(centred.pow(2).mean(-1) + eps)  # (...,)
    y = centred * rstd.unsqueeze(-1)
    if weight is not None:
        y = y * weight.to(xf.dtype)
    if bias is not None:
        y = y + bias.to(xf.dtype)
    return y.to(x.dtype), mean, rstd


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim. Returns (y in x.dtype, rstd), rstd shaped x.shape[:-1]."""
    xf = x.to(_compute_dtype(x))
    rstd = torch.rsqrt(xf.pow(2).mean(-1) + eps)  # (...,)
    y = xf * rstd.unsqueeze(-1)
    if weight is not None:
        y = y * weight.to(xf.dtype)
    return y.to(x.dtype), rstd


def dyt(
    x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """Dynamic Tanh y = weight·tanh(alpha·x) + bias, alpha a scalar tensor; y in x.dtype."""
    xf = x.to(_compute_dtype(x))
    y = torch.tanh(alpha.to(xf.dtype) * xf)
    if weight is not None:
        y = y * weight.to(xf.dtype)
    if bias is not None:
        y = y + bias.to(xf.dtype)
    return y.to(x.dtype)


def visible_keys(
    n_query: int,
    n_key: int,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean (batch or 1, 1, n_query, n_key) mask of the keys each query may attend to."""
    allowed = torch.ones(n_query, n_key, dtype=torch.bool, device=device)
    if causal:
        allowed = torch.tril(allowed)  # key j visible to query i iff j <= i
    allowed = allowed[None, None]  # (1, 1, q, k)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.to(torch.bool)[:, None, None, :]  # (b, 1, q, k)
    return allowed


def attention_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of softmax(q kᵀ · scale) per (batch, head, query), materializing the scores.

    Args:
        q: (batch, head, n_query, d_head); k: (batch, head, n_key, d_head).
        causal: query i sees keys j <= i.
        key_padding_mask: (batch, n_key), True/1 where the key is a real token.
        scale: score scale, default 1/sqrt(d_head).

    Returns:
        (entropy, normalized) in float64 when the inputs are float64, else float32,
        each (batch, head, n_query); both 0 on rows with no visible key.
    """
    d_head = q.shape[-1]
    scale = 1.0 / math.sqrt(d_head) if scale is None else scale
    dtype = _compute_dtype(q)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(dtype), k.to(dtype)) * scale  # (b, h, q, k)
    allowed = visible_keys(
        q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=key_padding_mask, device=q.device
    )
    scores = scores.masked_fill(~allowed, float("-inf"))
    logp = torch.log_softmax(scores, dim=-1)  # NaN on fully masked rows, masked out below
    return _entropy(logp.exp(), logp, allowed)


def pattern_entropy(
    pattern: torch.Tensor, visible: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy per (batch, head, query) of a stored (batch, head, n_query, n_key) pattern.

    ``visible`` (bool, broadcastable to the pattern) marks the keys each query may
    see and gives their count; default: the keys with p > 0. Returns
    (entropy, normalized) as :func:`attention_entropy` does.
    """
    p = pattern.detach().to(_compute_dtype(pattern))
    allowed = (p > 0) if visible is None else visible.to(torch.bool)
    positive = p > 0
    logp = torch.where(positive, torch.log(torch.where(positive, p, torch.ones((), dtype=p.dtype))), 0.0)
    return _entropy(p, logp, allowed)


def _entropy(p: torch.Tensor, logp: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-Σ p log p over the allowed keys, and that divided by log(count); 0 on rows without a choice."""
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    entropy = -torch.where(allowed & (p > 0), p * logp, zero).sum(-1)  # (b, h, q)
    n_visible = allowed.expand_as(p).sum(-1).to(p.dtype)
    entropy = torch.where(n_visible > 0, entropy, torch.zeros_like(entropy))
    normalized = torch.where(
        n_visible > 1, entropy / n_visible.clamp_min(2).log(), torch.zeros_like(entropy)
    )
    return entropy, normalized
