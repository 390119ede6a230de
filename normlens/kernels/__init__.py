"""Fused Triton kernels for the zoo's norms and for attention entropy.

Per op, four pieces under one name (Liger-Kernel's layout): the Triton
kernel(s), a launcher, a ``torch.autograd.Function`` and a drop-in
``nn.Module``; plain-torch references live in :mod:`normlens.kernels.reference`.

* LayerNorm / RMSNorm forward and backward, mean and rstd returned as fp32
  side outputs (:mod:`normlens.kernels.layer_norm`, :mod:`normlens.kernels.rms_norm`);
* DyT forward and backward, dx, dgamma, dbeta, dalpha (:mod:`normlens.kernels.dyt`);
* attention entropy from q and k with online (m, l, t) accumulators, never
  storing the N x N matrix (:mod:`normlens.kernels.attention_entropy`).

This package imports without triton and never needs a GPU: the Triton modules
are imported only on first use, and every kernel also runs on CPU tensors under
the Triton interpreter (``TRITON_INTERPRET=1``, set before the kernels are
imported). The zoo's norm modules take the fused path only on CUDA and only
when it is switched on (:func:`use_fused` or ``NORMLENS_FUSED=1``).
"""
from __future__ import annotations

import importlib
from typing import Any

from normlens.kernels.config import fused_enabled, interpreting, is_available, use_fused

_LAZY = {
    "FusedLayerNorm": "layer_norm",
    "FusedLayerNormFunction": "layer_norm",
    "fused_layer_norm": "layer_norm",
    "FusedRMSNorm": "rms_norm",
    "FusedRMSNormFunction": "rms_norm",
    "fused_rms_norm": "rms_norm",
    "FusedDyT": "dyt",
    "FusedDyTFunction": "dyt",
    "fused_dyt": "dyt",
    "AttentionEntropy": "attention_entropy",
    "attention_entropy": "attention_entropy",
}

__all__ = ["fused_enabled", "interpreting", "is_available", "use_fused", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the Triton-backed pieces on first use (they need triton)."""
    if name in _LAZY:
        if not is_available():
            raise ImportError(
                f"normlens.kernels.{name} needs triton, which is not installed; "
                "install it with `pip install triton` (or normlens[kernels])"
            )
        module = importlib.import_module(f"normlens.kernels.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'normlens.kernels' has no attribute {name!r}")
