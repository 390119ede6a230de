"""Fused RMSNorm: launcher wrappers, Function and module over the shared norm kernels.

Forward (Zhang & Sennrich 2019), fp32 accumulation:
    rstd = 1 / sqrt(Σx² / N + eps),   y = x · rstd · w
rstd is a fp32 side output (``hook_scale`` = 1/rstd). Backward, x̂ = x·rstd, g = w·dy:
    dx = rstd · (g - x̂·mean(x̂·g)),   dw = Σ_rows dy·x̂   (deterministic partial sums)
The Triton kernels live in :mod:`normlens.kernels.layer_norm` (``IS_RMS=True``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from normlens.kernels import reference
from normlens.kernels._autograd import needs_reference_backward, reference_backward
from normlens.kernels._launch import check_param, check_rows_input, check_runnable
from normlens.kernels.layer_norm import norm_backward, norm_forward


def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, **tiling: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the RMSNorm forward. Returns y (x.shape, x.dtype) and rstd (x.shape[:-1], fp32)."""
    y, _, rstd = norm_forward(x, weight, None, eps, rms=True, **tiling)
    return y, rstd


def rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, **tiling: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the RMSNorm backward. Returns dx (x.shape, x.dtype) and dw (weight.dtype)."""
    dx, dw, _ = norm_backward(dy, x, weight, None, rstd, rms=True, need_bias_grad=False, **tiling)
    return dx, dw


class FusedRMSNormFunction(torch.autograd.Function):
    """y, rstd = RMSNorm(x; weight, eps), fused; rstd a differentiable fp32 side output.

    Second derivatives and gradients reaching rstd go through the torch reference.
    """

    @staticmethod
    def forward(ctx, x, weight, eps):  # noqa: D102 - documented on the class
        check_runnable(x)
        y, rstd = rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return y, rstd

    @staticmethod
    def backward(ctx, dy, drstd):  # noqa: D102
        x, weight, rstd = ctx.saved_tensors
        if needs_reference_backward(drstd):
            grads = reference_backward(
                lambda x_, w_: reference.rms_norm(x_, w_, ctx.eps),
                (x, weight), ctx.needs_input_grad[:2], (dy, drstd),
            )
            return (*grads, None)
        if dy is None:
            return None, None, None
        dx, dw = rms_norm_backward(dy, x, weight, rstd)
        need_x, need_w = ctx.needs_input_grad[:2]
        return (dx if need_x else None), (dw if need_w else None), None


def fused_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, *, return_stats: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim with the fused kernels.

    Args:
        x: (..., N), float32/bfloat16/float16, any strides.
        weight: (N,).
        eps: added to the mean square.
        return_stats: also return rstd, fp32, shaped x.shape[:-1].

    Returns:
        y (x.shape, x.dtype), or (y, rstd).
    """
    check_rows_input("x", x)
    check_param("weight", weight, x.shape[-1], x.device, required_by="fused_rms_norm")
    y, rstd = FusedRMSNormFunction.apply(x, weight, float(eps))
    return (y, rstd) if return_stats else y


class FusedRMSNorm(nn.Module):
    """Drop-in RMSNorm over the last dim on the fused kernels (``forward_with_stats`` adds rstd)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_rms_norm(x, self.weight, self.eps)

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fused_rms_norm(x, self.weight, self.eps, return_stats=True)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, eps={self.eps}"
