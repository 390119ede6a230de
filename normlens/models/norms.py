"""The zoo's normalization layers, each with TransformerLens-style hook points.

Every module maps ``x: (..., d_model) -> (..., d_model)`` and fires its hooks
with the names TransformerLens uses (``hook_scale``, ``hook_normalized``), so a
bridge exposes them as ``blocks.{l}.ln1.hook_scale`` and so on.

* LayerNorm (Ba et al. 2016):  y = (x - mean(x)) / sqrt(var(x) + eps) * g + b
* RMSNorm (Zhang & Sennrich 2019):  y = x / sqrt(mean(x^2) + eps) * g
* DyT (Zhu et al. 2025):  y = g * tanh(alpha * x) + b, alpha a learnable scalar
* NoNorm:  y = x (the norm-free model)
* FrozenStdLayerNorm (Baroni, Heimersheim et al. 2025, the "fake LN"):
  y = (x - mean(x)) / sigma * g + b with sigma a stored average std, not the
  token's own. While ``live`` it normalizes like LayerNorm and, in training,
  tracks sigma as an exponential moving average of the mean per-token std.

``output_scale`` multiplies the output (LayerNorm Scaling, "The Curse of Depth
in LLMs": 1/sqrt(layer index)); it is 1 everywhere else.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformer_lens.hook_points import HookPoint

NORM_KINDS = ("ln", "rms", "dyt", "none", "lnfree")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Statistics in float32 at least, as TransformerLens and HF do for half inputs."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _Norm(nn.Module):
    """Shared plumbing: the output scale and a readable repr."""

    kind: str = ""

    def __init__(self, d_model: int, eps: float = 1e-5, output_scale: float = 1.0):
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.output_scale = output_scale

    def _finish(self, y: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
        if self.output_scale != 1.0:
            y = y * self.output_scale
        return y.to(input_dtype)

    def extra_repr(self) -> str:
        extra = f", output_scale={self.output_scale:.4g}" if self.output_scale != 1.0 else ""
        return f"d_model={self.d_model}, eps={self.eps}{extra}"


class LayerNorm(_Norm):
    """LayerNorm with ``hook_scale`` = sqrt(var + eps), shape (..., 1)."""

    kind = "ln"

    def __init__(self, d_model: int, eps: float = 1e-5, output_scale: float = 1.0):
        super().__init__(d_model, eps, output_scale)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # (..., 1)
        self.hook_normalized = HookPoint()  # (..., d_model), before the affine step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _upcast(x)
        centred = xf - xf.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized(centred / scale)
        return self._finish(normalized * self.weight + self.bias, x.dtype)


class RMSNorm(_Norm):
    """RMSNorm with ``hook_scale`` = sqrt(mean(x^2) + eps), shape (..., 1)."""

    kind = "rms"

    def __init__(self, d_model: int, eps: float = 1e-5, output_scale: float = 1.0):
        super().__init__(d_model, eps, output_scale)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _upcast(x)
        scale = self.hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized(xf / scale)
        return self._finish(normalized * self.weight, x.dtype)


class DyT(_Norm):
    """Dynamic Tanh: ``hook_pre_tanh`` = alpha*x, ``hook_normalized`` = tanh(alpha*x)."""

    kind = "dyt"

    def __init__(
        self, d_model: int, eps: float = 1e-5, output_scale: float = 1.0, alpha0: float = 0.5
    ):
        super().__init__(d_model, eps, output_scale)
        self.alpha = nn.Parameter(torch.tensor(float(alpha0)))
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.hook_pre_tanh = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _upcast(x)
        squashed = self.hook_normalized(torch.tanh(self.hook_pre_tanh(self.alpha * xf)))
        return self._finish(squashed * self.weight + self.bias, x.dtype)


class NoNorm(_Norm):
    """The identity, standing where a norm would be (the norm-free model)."""

    kind = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, x.dtype)


class FrozenStdLayerNorm(_Norm):
    """LayerNorm whose per-token std is replaced by a stored average (the "fake LN").

    Buffers: ``std`` (positions >= 1, or all positions when
    ``separate_first_position`` is off), ``std_first`` (position 0), ``live``
    (1 = still a real LayerNorm that tracks ``std`` in training mode).
    ``hook_scale`` fires with the divisor actually used, shape (..., 1).
    """

    kind = "lnfree"
    momentum = 0.9

    def __init__(
        self,
        d_model: int,
        eps: float = 1e-5,
        output_scale: float = 1.0,
        std: float = 1.0,
        live: bool = False,
        separate_first_position: bool = False,
    ):
        super().__init__(d_model, eps, output_scale)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("std", torch.tensor(float(std)))
        self.register_buffer("std_first", torch.tensor(float(std)))
        self.register_buffer("live", torch.tensor(bool(live)))
        self.register_buffer("separate_first_position", torch.tensor(bool(separate_first_position)))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    @property
    def is_live(self) -> bool:
        return bool(self.live)

    def freeze(self, separate_first_position: bool | None = None) -> None:
        """Stop dividing by the per-token std; divide by the tracked average from now on."""
        self.live.fill_(False)
        if separate_first_position is not None:
            self.separate_first_position.fill_(bool(separate_first_position))

    def _track(self, token_std: torch.Tensor) -> None:
        """EMA (momentum 0.9) of the mean per-token std; position 0 kept apart."""
        with torch.no_grad():
            token_std = token_std.detach().to(self.std.dtype)
            if token_std.dim() >= 2 and token_std.shape[-2] > 1:
                rest = token_std[..., 1:, :].mean()
                first = token_std[..., :1, :].mean()
            else:
                rest = first = token_std.mean()
            self.std.mul_(self.momentum).add_((1 - self.momentum) * rest)
            self.std_first.mul_(self.momentum).add_((1 - self.momentum) * first)

    def _frozen_divisor(self, xf: torch.Tensor) -> torch.Tensor:
        divisor = self.std.to(xf.dtype).expand(*xf.shape[:-1], 1)
        if bool(self.separate_first_position) and xf.dim() >= 2:
            divisor = divisor.clone()
            divisor[..., :1, :] = self.std_first.to(xf.dtype)
        return divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _upcast(x)
        centred = xf - xf.mean(-1, keepdim=True)
        if self.is_live:
            divisor = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
            if self.training:
                self._track(divisor)
        else:
            divisor = self._frozen_divisor(xf)
        scale = self.hook_scale(divisor)
        normalized = self.hook_normalized(centred / scale)
        return self._finish(normalized * self.weight + self.bias, x.dtype)


def build_norm(
    kind: str,
    d_model: int,
    *,
    eps: float = 1e-5,
    output_scale: float = 1.0,
    dyt_alpha0: float = 0.5,
    frozen_std: float = 1.0,
) -> _Norm:
    """Build one norm module of ``kind`` (one of :data:`NORM_KINDS`)."""
    if kind == "ln":
        return LayerNorm(d_model, eps, output_scale)
    if kind == "rms":
        return RMSNorm(d_model, eps, output_scale)
    if kind == "dyt":
        return DyT(d_model, eps, output_scale, alpha0=dyt_alpha0)
    if kind == "none":
        return NoNorm(d_model, eps, output_scale)
    if kind == "lnfree":
        return FrozenStdLayerNorm(d_model, eps, output_scale, std=frozen_std)
    raise ValueError(f"unknown norm kind {kind!r}; expected one of {', '.join(NORM_KINDS)}")
