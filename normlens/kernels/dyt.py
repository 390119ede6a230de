"""Fused Dynamic Tanh (Zhu et al. 2025, *Transformers without Normalization*).

Forward, elementwise with a learnable scalar alpha, fp32 math:
    t = tanh(alpha·x),   y = w·t + b
Backward, with u = dy·w·(1 - t²):
    dx = alpha·u,   dw = Σ_rows dy·t,   db = Σ_rows dy,   dalpha = Σ_all u·x
The parameter gradients are reduced deterministically: each (row group,
column chunk) program writes partial sums per column, then one fixed-order sum
over the row groups (and over the columns, for dalpha). No atomics.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import triton
import triton.language as tl

from normlens.kernels import reference
from normlens.kernels._autograd import needs_reference_backward, reference_backward
from normlens.kernels._launch import (
    as_rows,
    check_param,
    check_rows_input,
    check_runnable,
    default_chunk,
    next_power_of_2,
    num_warps_for,
    row_tiling,
    tile_elements,
)
from normlens.kernels._math import tanh

# ---------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------


@triton.jit
def _dyt_fwd_kernel(
    X,  # (M, N) any strides
    Y,  # (M, N) contiguous, x.dtype
    Alpha,  # () scalar
    W,  # (N,)
    B,  # (N,) or dummy
    M,
    N,
    stride_xm,
    stride_xn,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    col_ok = cols < N
    ok = (rows < M)[:, None] & col_ok[None, :]  # (BLOCK_M, BLOCK_N)
    rows64 = rows.to(tl.int64)
    alpha = tl.load(Alpha).to(tl.float32)
    x = tl.load(
        X + rows64[:, None] * stride_xm + cols[None, :] * stride_xn, mask=ok, other=0.0
    ).to(tl.float32)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = tanh(alpha * x) * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _dyt_bwd_kernel(
    X,  # (M, N) any strides
    DY,  # (M, N) any strides
    Alpha,  # () scalar
    W,  # (N,)
    DX,  # (M, N) contiguous, x.dtype
    DW_PART,  # (G, N) fp32: partial Σ dy·t
    DB_PART,  # (G, N) fp32: partial Σ dy, or dummy
    DA_PART,  # (G, N) fp32: partial Σ dy·w·(1-t²)·x
    M,
    N,
    stride_xm,
    stride_xn,
    stride_dym,
    stride_dyn,
    rows_per_group,
    HAS_DB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    group = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    col_ok = cols < N
    alpha = tl.load(Alpha).to(tl.float32)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    da_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_begin = group * rows_per_group
    row_end = tl.minimum(row_begin + rows_per_group, M)
    for r0 in range(row_begin, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        rows64 = rows.to(tl.int64)
        ok = (rows < row_end)[:, None] & col_ok[None, :]  # (BLOCK_M, BLOCK_N)
        x = tl.load(
            X + rows64[:, None] * stride_xm + cols[None, :] * stride_xn, mask=ok, other=0.0
        ).to(tl.float32)
        dy = tl.load(
            DY + rows64[:, None] * stride_dym + cols[None, :] * stride_dyn, mask=ok, other=0.0
        ).to(tl.float32)
        t = tanh(alpha * x)
        u = dy * w[None, :] * (1.0 - t * t)
        tl.store(
            DX + rows64[:, None] * N + cols[None, :], (alpha * u).to(DX.dtype.element_ty), mask=ok
        )
        dw_acc += tl.sum(dy * t, axis=0)
        da_acc += tl.sum(u * x, axis=0)
        if HAS_DB:
            db_acc += tl.sum(dy, axis=0)
    part = group.to(tl.int64) * N + cols
    tl.store(DW_PART + part, dw_acc, mask=col_ok)
    tl.store(DA_PART + part, da_acc, mask=col_ok)
    if HAS_DB:
        tl.store(DB_PART + part, db_acc, mask=col_ok)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def _blocks(m: int, n: int, chunk: int | None, block_m: int | None) -> tuple[int, int]:
    block_n = min(next_power_of_2(n), next_power_of_2(chunk or default_chunk()))
    if block_m is None:
        block_m = max(1, min(next_power_of_2(m), tile_elements() // block_n))
    return next_power_of_2(block_m), block_n


def dyt_forward(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    chunk: int | None = None,
    block_m: int | None = None,
) -> torch.Tensor:
    """Launch the DyT forward. x: (..., N). Returns y (x.shape, x.dtype)."""
    n = x.shape[-1]
    x2 = as_rows(x)  # (M, N)
    m = x2.shape[0]
    weight = weight.contiguous()  # (N,)
    bias = bias.contiguous() if bias is not None else None  # (N,)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m > 0 and n > 0:
        bm, bn = _blocks(m, n, chunk, block_m)
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        _dyt_fwd_kernel[grid](
            x2, y, alpha, weight, bias if bias is not None else weight,
            m, n, x2.stride(0), x2.stride(1),
            HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, num_warps=num_warps_for(bm * bn),
        )
    return y.view(x.shape)


def dyt_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    *,
    need_bias_grad: bool,
    chunk: int | None = None,
    block_m: int | None = None,
    n_row_groups: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the DyT backward.

    Returns:
        dx (x.shape, x.dtype), dalpha (alpha's shape and dtype), dw and db
        (weight.dtype; db is None unless ``need_bias_grad``).
    """
    n = x.shape[-1]
    x2 = as_rows(x)  # (M, N)
    dy2 = as_rows(dy)  # (M, N)
    m = x2.shape[0]
    weight = weight.contiguous()  # (N,)
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        db = torch.zeros_like(weight) if need_bias_grad else None
        return dx.view(x.shape), torch.zeros_like(alpha), torch.zeros_like(weight), db
    bm, bn = _blocks(m, n, chunk, block_m)
    # DyT's own tiles (no one-pass limit), row groups as for LN/RMS
    tiling = row_tiling(m, n, x.device, max_one_pass=bn, chunk=bn, block_m=bm,
                        n_row_groups=n_row_groups, backward=True)
    groups, rows_per_group, n_chunks = tiling.n_row_groups, tiling.rows_per_group, tiling.n_col_chunks(n)
    dw_part = torch.empty((groups, n), dtype=torch.float32, device=x.device)
    da_part = torch.empty_like(dw_part)
    db_part = torch.empty_like(dw_part) if need_bias_grad else dw_part
    _dyt_bwd_kernel[(groups, n_chunks)](
        x2, dy2, alpha, weight, dx, dw_part, db_part, da_part,
        m, n, x2.stride(0), x2.stride(1), dy2.stride(0), dy2.stride(1), rows_per_group,
        HAS_DB=need_bias_grad, BLOCK_M=bm, BLOCK_N=bn, num_warps=tiling.num_warps,
    )
    # second, fixed-order reduction over the row groups (and the columns for alpha)
    dw = dw_part.sum(0).to(weight.dtype)
    db = db_part.sum(0).to(weight.dtype) if need_bias_grad else None
    dalpha = da_part.sum().to(alpha.dtype).reshape(alpha.shape)
    return dx.view(x.shape), dalpha, dw, db


# ---------------------------------------------------------------------------
# autograd.Function and module
# ---------------------------------------------------------------------------


class FusedDyTFunction(torch.autograd.Function):
    """y = DyT(x; alpha, weight, bias), fused; second derivatives go through the torch reference."""

    @staticmethod
    def forward(ctx, x, alpha, weight, bias):  # noqa: D102 - documented on the class
        check_runnable(x)
        y = dyt_forward(x, alpha, weight, bias)
        ctx.save_for_backward(x, alpha, weight, bias)
        ctx.set_materialize_grads(False)
        return y

    @staticmethod
    def backward(ctx, dy):  # noqa: D102
        x, alpha, weight, bias = ctx.saved_tensors
        if dy is None:
            return None, None, None, None
        if needs_reference_backward():
            return tuple(
                reference_backward(
                    lambda x_, a_, w_, b_: (reference.dyt(x_, a_, w_, b_),),
                    (x, alpha, weight, bias), ctx.needs_input_grad[:4], (dy,),
                )
            )
        need_x, need_a, need_w, need_b = ctx.needs_input_grad[:4]
        dx, dalpha, dw, db = dyt_backward(
            dy, x, alpha, weight, need_bias_grad=bias is not None and need_b
        )
        return (
            dx if need_x else None,
            dalpha if need_a else None,
            dw if need_w else None,
            db,
        )


def fused_dyt(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dynamic Tanh y = weight·tanh(alpha·x) + bias over the last dim, fused.

    Args:
        x: (..., N), float32/bfloat16/float16, any strides.
        alpha: a one-element tensor (the learnable scalar).
        weight: (N,); bias: (N,) or None.

    Returns:
        y, shaped and typed like x.
    """
    check_rows_input("x", x)
    n = x.shape[-1]
    if not isinstance(alpha, torch.Tensor) or alpha.numel() != 1:
        got = tuple(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__
        raise ValueError(f"alpha must be a one-element tensor, got {got}")
    if alpha.device != x.device:
        raise ValueError(f"alpha is on {alpha.device} but the input is on {x.device}")
    check_param("weight", weight, n, x.device, required_by="fused_dyt")
    check_param("bias", bias, n, x.device)
    return FusedDyTFunction.apply(x, alpha, weight, bias)


class FusedDyT(nn.Module):
    """Drop-in DyT layer (learnable scalar alpha, initial value ``alpha0``) on the fused kernels."""

    def __init__(self, d_model: int, alpha0: float = 0.5, bias: bool = True):
        super().__init__()
        self.d_model = d_model
        self.alpha = nn.Parameter(torch.tensor(float(alpha0)))
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_dyt(x, self.alpha, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, bias={self.bias is not None}"
