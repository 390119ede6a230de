"""Triton kernel for attention entropy per (batch, head, query), never storing the scores.

The online-softmax algebra (accumulators m, l, u = Σ exp(s - m)(s - m), H = log l - u/l)
is derived in :mod:`normlens.kernels.online_entropy`, which also holds the torch
path and the dispatch (:func:`normlens.kernels.online_entropy.compute_attention_entropy`).
Here the same update runs per (query tile, key tile) in registers, with scores
in base 2 (s·log2 e) so the exponentials are exp2; H and the log-sum-exp are
converted back to nats. This is a measurement: no gradient is defined.
"""
from __future__ import annotations

import math
import torch
import triton
import triton.language as tl

from normlens.kernels._launch import SUPPORTED_DTYPES, check_runnable, next_power_of_2
from normlens.kernels.config import interpreting
from normlens.kernels.online_entropy import AttentionEntropy

_LOG2E = 1.4426950408889634


@triton.jit
def _attention_entropy_kernel(
    Q,  # (B, H, Nq, D) any strides
    K,  # (B, H, Nk, D) any strides
    KEEP,  # (B, Nk) int8, 1 = real key; dummy unless HAS_MASK
    ENT,  # (B, H, Nq) fp32 out, contiguous
    NORM_ENT,  # (B, H, Nq) fp32 out, contiguous
    LSE,  # (B, H, Nq) fp32 out, contiguous: log Σ exp(s) in nats, -inf without a visible key
    n_heads,
    n_q,
    n_k,
    d_head,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_mb,
    stride_mn,
    scale_log2,  # scale · log2(e)
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,  # fp32 tl.dot inputs (the interpreter's bf16 dot is wrong)
    DOT_PRECISION: tl.constexpr,  # "ieee" interpreted, "tf32x3" for fp32 on a GPU (exact FMA dots spill)
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    q_ok = offs_q < n_q
    d_ok = offs_d < d_head
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    q = tl.load(
        q_base + offs_q[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=q_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # (BLOCK_Q, BLOCK_D)
    if UPCAST:
        q = q.to(tl.float32)
    m = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)  # running max, base-2 units
    l = tl.zeros([BLOCK_Q], dtype=tl.float32)  # Σ 2^(s - m)
    t = tl.zeros([BLOCK_Q], dtype=tl.float32)  # Σ 2^(s - m)·(s - m)
    n_visible = tl.zeros([BLOCK_Q], dtype=tl.float32)
    if CAUSAL:
        k_end = tl.minimum(n_k, (pid_q + 1) * BLOCK_Q)  # keys j <= i only
    else:
        k_end = n_k
    for k0 in range(0, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        k_ok = offs_k < n_k
        kt = tl.load(
            k_base + offs_k[None, :] * stride_kn + offs_d[:, None] * stride_kd,
            mask=k_ok[None, :] & d_ok[:, None],
            other=0.0,
        )  # (BLOCK_D, BLOCK_K): kᵀ
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * scale_log2  # (BLOCK_Q, BLOCK_K)
        visible = q_ok[:, None] & k_ok[None, :]
        if CAUSAL:
            visible = visible & (offs_k[None, :] <= offs_q[:, None])
        if HAS_MASK:
            keep = tl.load(KEEP + b.to(tl.int64) * stride_mb + offs_k * stride_mn, mask=k_ok, other=0)
            visible = visible & (keep != 0)[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf)
        shift = tl.where(l > 0.0, m - m_ref, 0.0)  # m finite whenever l > 0
        rescale = tl.exp2(shift)
        z = tl.where(visible, s - m_ref[:, None], 0.0)
        p = tl.where(visible, tl.exp2(z), 0.0)
        t = rescale * (t + shift * l) + tl.sum(p * z, axis=1)
        l = rescale * l + tl.sum(p, axis=1)
        m = m_new
        n_visible += tl.sum(visible.to(tl.float32), axis=1)
    l_safe = tl.where(l > 0.0, l, 1.0)
    ent = (tl.log2(l_safe) - t / l_safe) * 0.6931471805599453  # bits -> nats
    ent = tl.where(l > 0.0, tl.maximum(ent, 0.0), 0.0)
    norm = tl.where(n_visible > 1.5, ent / tl.log(tl.maximum(n_visible, 2.0)), 0.0)
    out = pid_bh.to(tl.int64) * n_q + offs_q
    tl.store(ENT + out, ent, mask=q_ok)
    tl.store(NORM_ENT + out, norm, mask=q_ok)
    lse = tl.where(l > 0.0, (m + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + out, lse, mask=q_ok)


def _check(q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be (batch, head, pos, d_head), got {got}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; expected float32, bfloat16 or float16")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch, head and d_head"
        )
    if q.device != k.device:
        raise ValueError(f"q is on {q.device} but k is on {k.device}")
    if key_padding_mask is not None:
        expected = (k.shape[0], k.shape[2])
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, "
                f"expected (batch, n_key) = {expected}"
            )
        if key_padding_mask.device != k.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device}, k on {k.device}")


def fused_attention_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> AttentionEntropy:
    """Entropy of softmax(scale · q kᵀ) per (batch, head, query), never storing the scores.

    Args:
        q: (batch, head, n_query, d_head); k: (batch, head, n_key, d_head);
            float32/bfloat16/float16, any strides.
        causal: query i sees keys j <= i (positions aligned at 0).
        key_padding_mask: (batch, n_key) bool or 0/1, True where the key is a real token.
        scale: score scale, default 1/sqrt(d_head).
        block_q, block_k: tile sizes (powers of two, >= 16); defaults suit the device.

    Returns:
        :class:`~normlens.kernels.online_entropy.AttentionEntropy` with fp32 (batch, head, n_query) tensors.
    """
    _check(q, k, key_padding_mask)
    check_runnable(q)
    batch, n_heads, n_q, d_head = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(d_head) if scale is None else float(scale)
    ent = torch.zeros((batch, n_heads, n_q), dtype=torch.float32, device=q.device)
    norm = torch.zeros_like(ent)
    lse = torch.full_like(ent, float("-inf"))
    if ent.numel() == 0 or n_k == 0:
        return AttentionEntropy(ent, norm, lse)
    interp = interpreting()
    block_d = max(16, next_power_of_2(d_head))
    if block_q is None:
        block_q = min(128 if interp else 64, max(16, next_power_of_2(n_q)))
    if block_k is None:
        block_k = (128 if interp else 64) if n_k > 64 else max(16, next_power_of_2(n_k))
    if key_padding_mask is not None:
        keep = key_padding_mask.to(torch.int8)  # (B, Nk)
        stride_mb, stride_mn = keep.stride()
    else:
        keep, stride_mb, stride_mn = ent, 0, 0  # dummy pointer, never read
    grid = (triton.cdiv(n_q, block_q), batch * n_heads)
    with torch.no_grad():
        _attention_entropy_kernel[grid](
            q, k, keep, ent, norm, lse,
            n_heads, n_q, n_k, d_head,
            *q.stride(), *k.stride(), stride_mb, stride_mn,
            scale * _LOG2E,
            CAUSAL=bool(causal), HAS_MASK=key_padding_mask is not None, UPCAST=interp,
            DOT_PRECISION="ieee" if interp else "tf32x3",
            BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_D=block_d,
            num_warps=4 if block_d <= 64 else 8,
        )
    return AttentionEntropy(ent, norm, lse)
