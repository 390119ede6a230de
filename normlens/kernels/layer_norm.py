"""Fused LayerNorm (and the RMSNorm kernels it shares): kernel, launcher, Function, module.

Forward, per row of x (N features), accumulated in fp32:

    mean = Σx / N,   rstd = 1 / sqrt(Σ(x - mean)² / N + eps)     (RMSNorm: mean := 0)
    y    = (x - mean) · rstd · w + b

and mean, rstd are stored as fp32 side outputs (the probes' ``hook_scale`` is
1/rstd). Rows up to ``MAX_ONE_PASS_N`` features (backward: ``MAX_ONE_PASS_N_BWD``)
sit in registers; wider rows are read twice in column chunks, the variance merged from per-lane Welford
accumulators with Chan's formula (no E[x²] - E[x]² cancellation).

Backward, with x̂ = (x - mean)·rstd and g = w·dy:

    dx = rstd · (g - x̂·mean(x̂·g) - mean(g))          (RMSNorm: without the last term)
    dw = Σ_rows dy·x̂,   db = Σ_rows dy

dw and db are reduced deterministically: a grid of (row group, column chunk)
programs, each writing the partial sum of its rows, then one fixed-order sum
over the groups. No atomics.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import triton
import triton.language as tl

from normlens.kernels import reference
from normlens.kernels._autograd import needs_reference_backward, reference_backward
from normlens.kernels._launch import (
    MAX_ONE_PASS_N,
    MAX_ONE_PASS_N_BWD,
    as_rows,
    check_param,
    check_rows_input,
    check_runnable,
    row_tiling,
)

# ---------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------


@triton.jit
def _norm_fwd_kernel(
    X,  # (M, N) any strides
    Y,  # (M, N) contiguous, x.dtype
    W,  # (N,)
    B,  # (N,) or dummy
    Mean,  # (M,) fp32 or dummy (RMSNorm)
    Rstd,  # (M,) fp32
    M,
    N,
    stride_xm,
    stride_xn,
    eps,
    IS_RMS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STORE_STATS: tl.constexpr,
    ONE_PASS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    x_rows = X + rows64[:, None] * stride_xm  # (BLOCK_M, 1) pointers
    y_rows = Y + rows64[:, None] * N
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    if ONE_PASS:
        col_ok = cols < N
        ok = row_ok[:, None] & col_ok[None, :]  # (BLOCK_M, BLOCK_N)
        x = tl.load(x_rows + cols[None, :] * stride_xn, mask=ok, other=0.0).to(tl.float32)
        if IS_RMS:
            xc = x
        else:
            mean = tl.sum(x, axis=1) / N  # (BLOCK_M,)
            xc = tl.where(ok, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt_rn(tl.sum(xc * xc, axis=1) / N + eps)  # (BLOCK_M,)
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :]
        if HAS_BIAS:
            y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_rows + cols[None, :], y.to(Y.dtype.element_ty), mask=ok)
    else:
        # pass 1: per-lane Welford (lane j sees columns j, j + BLOCK_N, ...), then Chan's merge
        lane_n = tl.zeros([BLOCK_N], dtype=tl.float32)  # values seen per lane, same for all rows
        lane_mean = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        lane_m2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            c = start + cols
            col_ok = c < N
            ok = row_ok[:, None] & col_ok[None, :]
            x = tl.load(x_rows + c[None, :] * stride_xn, mask=ok, other=0.0).to(tl.float32)
            if IS_RMS:
                lane_m2 += x * x
            else:
                lane_n += col_ok.to(tl.float32)
                inv_n = tl.where(col_ok, 1.0 / tl.maximum(lane_n, 1.0), 0.0)
                delta = x - lane_mean
                lane_mean += delta * inv_n[None, :]
                lane_m2 += tl.where(ok, delta * (x - lane_mean), 0.0)
        if IS_RMS:
            mean = tl.zeros([BLOCK_M], dtype=tl.float32)
            var = tl.sum(lane_m2, axis=1) / N
        else:
            mean = tl.sum(lane_mean * lane_n[None, :], axis=1) / N  # (BLOCK_M,)
            spread = lane_mean - mean[:, None]
            var = (tl.sum(lane_m2, axis=1) + tl.sum(lane_n[None, :] * spread * spread, axis=1)) / N
        rstd = 1.0 / tl.sqrt_rn(var + eps)
        # pass 2: normalize
        for start in range(0, N, BLOCK_N):
            c = start + cols
            col_ok = c < N
            ok = row_ok[:, None] & col_ok[None, :]
            x = tl.load(x_rows + c[None, :] * stride_xn, mask=ok, other=0.0).to(tl.float32)
            w = tl.load(W + c, mask=col_ok, other=0.0).to(tl.float32)
            y = (x - mean[:, None]) * rstd[:, None] * w[None, :]
            if HAS_BIAS:
                y += tl.load(B + c, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(y_rows + c[None, :], y.to(Y.dtype.element_ty), mask=ok)
    if STORE_STATS:
        if not IS_RMS:
            tl.store(Mean + rows, mean, mask=row_ok)
        tl.store(Rstd + rows, rstd, mask=row_ok)


@triton.jit
def _norm_bwd_row_terms_kernel(
    X,  # (M, N) any strides
    DY,  # (M, N) any strides
    W,  # (N,)
    Mean,  # (M,) fp32 or dummy
    Rstd,  # (M,) fp32
    C1,  # (M,) fp32 out: mean(x̂·w·dy)
    C2,  # (M,) fp32 out: mean(w·dy) (LayerNorm only)
    M,
    N,
    stride_xm,
    stride_xn,
    stride_dym,
    stride_dyn,
    IS_RMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row terms of dx for rows too wide for one block (one program per row)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    rstd = tl.load(Rstd + row)
    if IS_RMS:
        mean = 0.0
    else:
        mean = tl.load(Mean + row)
    acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        c = start + cols
        ok = c < N
        x = tl.load(X + row * stride_xm + c * stride_xn, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dym + c * stride_dyn, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(W + c, mask=ok, other=0.0).to(tl.float32)
        g = w * dy
        acc1 += tl.where(ok, (x - mean) * rstd * g, 0.0)
        acc2 += g
    tl.store(C1 + row, tl.sum(acc1, axis=0) / N)
    if not IS_RMS:
        tl.store(C2 + row, tl.sum(acc2, axis=0) / N)


@triton.jit
def _norm_bwd_kernel(
    X,  # (M, N) any strides
    DY,  # (M, N) any strides
    W,  # (N,)
    Mean,  # (M,) fp32 or dummy
    Rstd,  # (M,) fp32
    C1,  # (M,) fp32, read when not ONE_PASS
    C2,  # (M,) fp32, read when not ONE_PASS and not IS_RMS
    DX,  # (M, N) contiguous, x.dtype
    DW_PART,  # (G, N) fp32: per row group partial Σ dy·x̂
    DB_PART,  # (G, N) fp32: per row group partial Σ dy, or dummy
    M,
    N,
    stride_xm,
    stride_xn,
    stride_dym,
    stride_dyn,
    rows_per_group,
    IS_RMS: tl.constexpr,
    HAS_DB: tl.constexpr,
    ONE_PASS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    group = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    col_ok = cols < N
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_begin = group * rows_per_group
    row_end = tl.minimum(row_begin + rows_per_group, M)
    for r0 in range(row_begin, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        row_ok = rows < row_end
        rows64 = rows.to(tl.int64)
        ok = row_ok[:, None] & col_ok[None, :]  # (BLOCK_M, BLOCK_N)
        x = tl.load(
            X + rows64[:, None] * stride_xm + cols[None, :] * stride_xn, mask=ok, other=0.0
        ).to(tl.float32)
        dy = tl.load(
            DY + rows64[:, None] * stride_dym + cols[None, :] * stride_dyn, mask=ok, other=0.0
        ).to(tl.float32)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        if IS_RMS:
            xhat = x * rstd[:, None]
        else:
            mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
            xhat = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = w[None, :] * dy
        if ONE_PASS:
            c1 = tl.sum(xhat * g, axis=1) / N  # (BLOCK_M,)
            if not IS_RMS:
                c2 = tl.sum(g, axis=1) / N
        else:
            c1 = tl.load(C1 + rows, mask=row_ok, other=0.0)
            if not IS_RMS:
                c2 = tl.load(C2 + rows, mask=row_ok, other=0.0)
        if IS_RMS:
            dx = (g - xhat * c1[:, None]) * rstd[:, None]
        else:
            dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(DX + rows64[:, None] * N + cols[None, :], dx.to(DX.dtype.element_ty), mask=ok)
        dw_acc += tl.sum(dy * xhat, axis=0)
        if HAS_DB:
            db_acc += tl.sum(dy, axis=0)
    part = group.to(tl.int64) * N + cols
    tl.store(DW_PART + part, dw_acc, mask=col_ok)
    if HAS_DB:
        tl.store(DB_PART + part, db_acc, mask=col_ok)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def norm_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    *,
    rms: bool,
    store_stats: bool = True,
    max_one_pass: int = MAX_ONE_PASS_N,
    chunk: int | None = None,
    block_m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the forward. x: (..., N).

    Returns:
        y (..., N) in x.dtype; mean (...,) fp32 (None for RMSNorm) and rstd (...,)
        fp32, both None when ``store_stats`` is off (inference without probes).
    """
    n = x.shape[-1]
    x2 = as_rows(x)  # (M, N), strided
    m = x2.shape[0]
    weight = weight.contiguous()  # (N,)
    bias = bias.contiguous() if bias is not None else None  # (N,)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    rstd = torch.empty(m if store_stats else 1, dtype=torch.float32, device=x.device)
    mean = None if rms or not store_stats else torch.empty(m, dtype=torch.float32, device=x.device)
    if m > 0 and n > 0:
        t = row_tiling(m, n, x.device, max_one_pass=max_one_pass, chunk=chunk, block_m=block_m)
        grid = (triton.cdiv(m, t.block_m),)
        _norm_fwd_kernel[grid](
            x2, y, weight, bias if bias is not None else weight,
            mean if mean is not None else rstd, rstd,
            m, n, x2.stride(0), x2.stride(1), eps,
            IS_RMS=rms, HAS_BIAS=bias is not None, STORE_STATS=store_stats, ONE_PASS=t.one_pass,
            BLOCK_M=t.block_m, BLOCK_N=t.block_n, num_warps=t.num_warps,
        )
    if not store_stats:
        return y.view(x.shape), None, None
    lead = x.shape[:-1]
    return y.view(x.shape), (mean.view(lead) if mean is not None else None), rstd.view(lead)


def norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
    *,
    rms: bool,
    need_bias_grad: bool,
    max_one_pass: int = MAX_ONE_PASS_N_BWD,
    chunk: int | None = None,
    block_m: int | None = None,
    n_row_groups: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward. Returns dx (x.shape, x.dtype), dw (weight.dtype), db (weight.dtype or None)."""
    n = x.shape[-1]
    x2 = as_rows(x)  # (M, N)
    dy2 = as_rows(dy)  # (M, N)
    m = x2.shape[0]
    weight = weight.contiguous()  # (N,)
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    rstd1 = rstd.reshape(m)
    mean1 = mean.reshape(m) if mean is not None else rstd1
    if m == 0 or n == 0:
        dw = torch.zeros_like(weight)
        return dx.view(x.shape), dw, (torch.zeros_like(weight) if need_bias_grad else None)
    t = row_tiling(
        m, n, x.device, max_one_pass=max_one_pass, chunk=chunk,
        block_m=block_m, n_row_groups=n_row_groups, backward=True,
    )
    if t.one_pass:
        c1 = c2 = rstd1  # unused
    else:
        c1 = torch.empty(m, dtype=torch.float32, device=x.device)
        c2 = torch.empty(m, dtype=torch.float32, device=x.device) if not rms else c1
        _norm_bwd_row_terms_kernel[(m,)](
            x2, dy2, weight, mean1, rstd1, c1, c2,
            m, n, x2.stride(0), x2.stride(1), dy2.stride(0), dy2.stride(1),
            IS_RMS=rms, BLOCK_N=t.block_n, num_warps=t.num_warps,
        )
    dw_part = torch.empty((t.n_row_groups, n), dtype=torch.float32, device=x.device)
    db_part = torch.empty_like(dw_part) if need_bias_grad else dw_part
    grid = (t.n_row_groups, t.n_col_chunks(n))
    _norm_bwd_kernel[grid](
        x2, dy2, weight, mean1, rstd1, c1, c2, dx, dw_part, db_part,
        m, n, x2.stride(0), x2.stride(1), dy2.stride(0), dy2.stride(1), t.rows_per_group,
        IS_RMS=rms, HAS_DB=need_bias_grad, ONE_PASS=t.one_pass,
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, num_warps=t.num_warps,
    )
    # second, fixed-order reduction over the row groups: (G, N) -> (N,)
    dw = dw_part.sum(0).to(weight.dtype)
    db = db_part.sum(0).to(weight.dtype) if need_bias_grad else None
    return dx.view(x.shape), dw, db


# ---------------------------------------------------------------------------
# autograd.Function
# ---------------------------------------------------------------------------


class FusedLayerNormFunction(torch.autograd.Function):
    """y, mean, rstd = LayerNorm(x; weight, bias, eps), fused.

    mean and rstd (fp32, shaped x.shape[:-1]) are differentiable side outputs.
    The Triton backward runs for ordinary first derivatives; when a second
    derivative is asked for (``create_graph=True``) or a statistic receives a
    gradient, the backward runs through the torch reference instead, so it
    stays exact and differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # noqa: D102 - documented on the class
        check_runnable(x)
        y, mean, rstd = norm_forward(x, weight, bias, eps, rms=False)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return y, mean, rstd

    @staticmethod
    def backward(ctx, dy, dmean, drstd):  # noqa: D102
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if needs_reference_backward(dmean, drstd):
            grads = reference_backward(
                lambda x_, w_, b_: reference.layer_norm(x_, w_, b_, ctx.eps),
                (x, weight, bias), ctx.needs_input_grad[:3], (dy, dmean, drstd),
            )
            return (*grads, None)
        if dy is None:
            return None, None, None, None
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx, dw, db = norm_backward(
            dy, x, weight, mean, rstd, rms=False, need_bias_grad=bias is not None and need_b
        )
        return (dx if need_x else None), (dw if need_w else None), db, None


def fused_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dim with the fused kernels.

    Args:
        x: (..., N), float32/bfloat16/float16, any strides.
        weight: (N,); bias: (N,) or None.
        eps: added to the variance.
        return_stats: also return mean and rstd, fp32, shaped x.shape[:-1].

    Returns:
        y (x.shape, x.dtype), or (y, mean, rstd).
    """
    check_rows_input("x", x)
    n = x.shape[-1]
    check_param("weight", weight, n, x.device, required_by="fused_layer_norm")
    check_param("bias", bias, n, x.device)
    y, mean, rstd = FusedLayerNormFunction.apply(x, weight, bias, float(eps))
    return (y, mean, rstd) if return_stats else y


class FusedLayerNorm(nn.Module):
    """Drop-in for ``nn.LayerNorm(d_model)`` over the last dim, on the fused kernels.

    ``forward`` returns y; ``forward_with_stats`` returns (y, mean, rstd).
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_layer_norm(x, self.weight, self.bias, self.eps)

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return fused_layer_norm(x, self.weight, self.bias, self.eps, return_stats=True)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, eps={self.eps}, bias={self.bias is not None}"
