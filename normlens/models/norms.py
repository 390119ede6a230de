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

On CUDA, LayerNorm, RMSNorm and DyT run the fused Triton kernels when they are
switched on (``normlens.kernels.use_fused(True)`` or ``NORMLENS_FUSED=1``) and
no hook needs a tensor the kernels do not produce (see
``normlens.kernels.dispatch``); CPU inputs always take the torch code below.

``output_scale`` multiplies the output (LayerNorm Scaling, "The Curse of Depth
in LLMs": 1/sqrt(layer index)); it is 1 everywhere else.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformer_lens.hook_points import HookPoint

from normlens.kernels.dispatch import fused_forward

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


class _FusableNorm(_Norm):
    """A norm with a fused Triton path on CUDA and the torch code of :meth:`_normalize`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # fused Triton kernels when switched on (normlens.kernels.use_fused)
            fused = fused_forward(self, x)
            if fused is not None:
                return fused
        return self._finish(self._normalize(_upcast(x)), x.dtype)

    def _normalize(self, xf: torch.Tensor) -> torch.Tensor:
        """The affine output before ``output_scale``, from float32/64 input ``xf``."""
        raise NotImplementedError


class LayerNorm(_FusableNorm):
    """LayerNorm with ``hook_scale`` = sqrt(var + eps), shape (..., 1)."""

    kind = "ln"

    def __init__(self, d_model: int, eps: float = 1e-5, output_scale: float = 1.0):
        super().__init__(d_model, eps, output_scale)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # (..., 1)
        self.hook_normalized = HookPoint()  # (..., d_model), before the affine step

    def _normalize(self, xf: torch.Tensor) -> torch.Tensor:
        centred = xf - xf.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized(centred / scale)
        return normalized * self.weight + self.bias


class RMSNorm(_FusableNorm):
    """RMSNorm with ``hook_scale`` = sqrt(mean(x^2) + eps), shape (..., 1)."""

    kind = "rms"

    def __init__(self, d_model: int, eps: float = 1e-5, output_scale: float = 1.0):
        super().__init__(d_model, eps, output_scale)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def _normalize(self, xf: torch.Tensor) -> torch.Tensor:
        scale = self.hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(xf / scale) * self.weight


class DyT(_FusableNorm):
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

    def _normalize(self, xf: torch.Tensor) -> torch.Tensor:
        squashed = self.hook_normalized(torch.tanh(self.hook_pre_tanh(self.alpha * xf)))
        return squashed * self.weight + self.bias


class NoNorm(_Norm):
    """The identity, standing where a norm would be (the norm-free model)."""

    kind = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, x.dtype)


class FrozenStdLayerNorm(_Norm):
    """LayerNorm whose per-token std is replaced by a stored average (the "fake LN").

    y = (x - mean(x)) / sigma * g + b, sigma a stored average of the per-token
    std (Baroni, Heimersheim et al. 2025). Buffers:

    * ``std`` / ``live``: the divisor of the module's output (for an
      attention-input norm: the query/key path) and whether it is still the
      token's own std (a real LayerNorm).
    * ``std_value`` / ``live_value``: the same for the attention's value path.
      The paper freezes an attention-input LN for queries and keys before
      values, so the two paths divide by different numbers for a while, and
      the value divisor stays its own after. The value path is applied by a
      forward pre-hook on the attention's value projection
      (:func:`attach_value_path`), which rescales this module's output for
      that projection: y_v = (y - s*b) * sigma / sigma_v + s*b.
    * ``std_first`` / ``live_first``: position 0's tracked std, and whether
      position 0 still divides by its own std after the rest is frozen (the
      paper treats the first position last). When it is frozen it divides by
      the same ``std`` / ``std_value`` as every other position.
    * ``separate_first_position``: models saved before position 0 joined the
      common divisor keep dividing it by ``std_first``.

    Live paths track their divisor in training mode as an exponential moving
    average (momentum 0.9) of the mean per-token std over positions >= 1;
    ``std_first`` tracks position 0 while it is live. ``hook_scale`` fires
    with the divisor of the output (query/key path), shape (..., 1).
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
        self.register_buffer("std_value", torch.tensor(float(std)))
        self.register_buffer("std_first", torch.tensor(float(std)))
        self.register_buffer("live", torch.tensor(bool(live)))
        self.register_buffer("live_value", torch.tensor(bool(live)))
        self.register_buffer("live_first", torch.tensor(False))
        self.register_buffer("separate_first_position", torch.tensor(bool(separate_first_position)))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()
        self.feeds_value_path = False  # set by attach_value_path
        self._value_ratio: torch.Tensor | None = None

    @property
    def is_live(self) -> bool:
        return bool(self.live)

    @property
    def divides_by_token_std(self) -> bool:
        """True while any position of any path is still normalized by its own std."""
        return bool(self.live) or bool(self.live_value) or bool(self.live_first)

    @property
    def value_path_differs(self) -> bool:
        """True when the value path divides by something else than the output."""
        if bool(self.live) or bool(self.live_value):
            return bool(self.live) != bool(self.live_value)
        return bool(self.std != self.std_value)

    def freeze(self, keep_first_position_live: bool = False, *, path: str = "both") -> None:
        """Divide positions >= 1 of ``path`` ("qk", "value" or "both") by its tracked average.

        With ``keep_first_position_live`` position 0 stays a real LayerNorm (and
        keeps tracking ``std_first``) until :meth:`freeze_first_position`.
        """
        if path not in ("qk", "value", "both"):
            raise ValueError(f"path must be 'qk', 'value' or 'both', got {path!r}")
        if path in ("qk", "both"):
            self.live.fill_(False)
        if path in ("value", "both"):
            self.live_value.fill_(False)
        self.live_first.fill_(bool(keep_first_position_live))
        self.separate_first_position.fill_(False)

    def freeze_first_position(self) -> None:
        """Divide position 0 by the same frozen divisors as every other position.

        The LN-removal paper's last step: the first position's special case
        ends, so the model is a plain LayerNorm-free model (one divisor per
        path), as the released eps = 1e12 checkpoints are.
        """
        self.live_first.fill_(False)
        self.separate_first_position.fill_(False)

    def _ema(self, buffer: torch.Tensor, value: torch.Tensor) -> None:
        buffer.mul_(self.momentum).add_((1 - self.momentum) * value.to(buffer.dtype))

    def _divisor(self, token_std: torch.Tensor, live: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Per-position divisor (..., pos, 1) of one path."""
        if bool(live):
            return token_std
        divisor = std.to(token_std.dtype).expand_as(token_std)
        if token_std.dim() >= 2 and (bool(self.live_first) or bool(self.separate_first_position)):
            first = (token_std[..., :1, :] if bool(self.live_first)
                     else self.std_first.to(token_std.dtype).expand_as(token_std[..., :1, :]))
            divisor = torch.cat([first, divisor[..., 1:, :]], dim=-2)
        return divisor

    @torch.no_grad()
    def _track(self, token_std: torch.Tensor) -> None:
        later = token_std[..., 1:, :] if token_std.dim() >= 2 and token_std.shape[-2] > 1 else token_std
        if bool(self.live):
            self._ema(self.std, later.mean())
        if bool(self.live_value):
            self._ema(self.std_value, later.mean())
        if bool(self.live) or bool(self.live_value) or bool(self.live_first):
            self._ema(self.std_first, token_std[..., :1, :].mean())

    def normalize_with_hooks(self, x: torch.Tensor, hook_scale: nn.Module, hook_normalized: nn.Module
                             ) -> torch.Tensor:
        """The forward pass firing the given hook points (a bridge may pass its own)."""
        xf = _upcast(x)  # (..., pos, d_model)
        centred = xf - xf.mean(-1, keepdim=True)
        token_std = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # (..., pos, 1)
        divisor = self._divisor(token_std, self.live, self.std)
        if self.training:
            self._track(token_std)
        scale = hook_scale(divisor)
        normalized = hook_normalized(centred / scale)
        if self.feeds_value_path and self.value_path_differs:
            self._value_ratio = scale / self._divisor(token_std, self.live_value, self.std_value)
        else:
            self._value_ratio = None
        return self._finish(normalized * self.weight + self.bias, x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize_with_hooks(x, self.hook_scale, self.hook_normalized)

    def value_input_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook for the value projection: rescale this norm's output to the value path."""
        ratio, self._value_ratio = self._value_ratio, None
        if ratio is None or not args:
            return None
        y = args[0]  # (..., pos, d_model), this norm's output
        if y.shape[:-1] != ratio.shape[:-1]:
            raise RuntimeError(
                f"the value projection got an input of shape {tuple(y.shape)}, not the attention-input "
                f"norm's output {tuple(ratio.shape[:-1])}; the value path needs them to be the same")
        offset = (self.bias * self.output_scale).to(y.dtype)
        return ((y - offset) * ratio.to(y.dtype) + offset,) + tuple(args[1:])


def attach_value_path(norm: FrozenStdLayerNorm, value_projection: nn.Module) -> None:
    """Let ``norm`` (an attention-input norm) feed ``value_projection`` with its value divisor."""
    if not norm.feeds_value_path:
        value_projection.register_forward_pre_hook(norm.value_input_hook)
        norm.feeds_value_path = True


def _has_later_positions(x: torch.Tensor) -> bool:
    return x.dim() >= 2 and x.shape[-2] > 1


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
