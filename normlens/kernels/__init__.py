"""Fused Triton kernels for the zoo's norms and for attention entropy.

Per op, four pieces under one name (Liger-Kernel's layout): the Triton
kernel(s), a launcher, a ``torch.autograd.Function`` and a drop-in
``nn.Module``; plain-torch references live in :mod:`normlens.kernels.reference`.

* LayerNorm / RMSNorm forward and backward, mean and rstd returned as fp32
  side outputs (:mod:`normlens.kernels.layer_norm`, :mod:`normlens.kernels.rms_norm`);
* DyT forward and backward, dx, dgamma, dbeta, dalpha (:mod:`normlens.kernels.dyt`);
* attention entropy from q and k with online-softmax accumulators, never
  storing the N x N matrix: the algebra, the torch path and the dispatch in
  :mod:`normlens.kernels.online_entropy` (:func:`compute_attention_entropy`
  takes the Triton kernel :func:`fused_attention_entropy` of
  :mod:`normlens.kernels.attention_entropy` on CUDA, the torch block loop elsewhere).

Each submodule's name is kept for the submodule: no function is exported under
a submodule's name (``normlens.kernels.attention_entropy`` is always the module).

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
    "fused_attention_entropy": "attention_entropy",
}
# needing no triton
_LAZY_PLAIN = {
    "AttentionEntropy": "online_entropy",
    "compute_attention_entropy": "online_entropy",
    "entropy_backend": "online_entropy",
}

__all__ = ["fused_enabled", "interpreting", "is_available", "use_fused", *_LAZY, *_LAZY_PLAIN]


def __getattr__(name: str) -> Any:
    """Import the Triton-backed pieces on first use (they need triton)."""
    if name in _LAZY_PLAIN:
        return getattr(importlib.import_module(f"normlens.kernels.{_LAZY_PLAIN[name]}"), name)
    if name in _LAZY:
        if not is_available():
            raise ImportError(
                f"normlens.kernels.{name} needs triton, which is not installed; "
                "install it with `pip install triton` (or normlens[kernels])"
            )
        module = importlib.import_module(f"normlens.kernels.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'normlens.kernels' has no attribute {name!r}")
