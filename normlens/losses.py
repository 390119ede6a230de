"""The language-model loss shared by training, probes, curvature and landscapes.

One name for the model-level loss (:func:`next_token_loss`) and one for the same
loss from logits already computed (:func:`logits_loss`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_tokens(tokens: object) -> None:
    """Raise ValueError unless ``tokens`` is a (batch, pos) integer tensor with pos >= 2."""
    if (not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] < 2
            or tokens.is_floating_point() or tokens.is_complex()):
        got = (f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor)
               else type(tokens).__name__)
        raise ValueError(f"the language-model loss needs (batch, pos) int64 tokens with pos >= 2, "
                         f"got {got}; pass loss_fn=... for other data")


def model_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(batch, pos, d_vocab) next-token logits of ``model`` on checked (batch, pos) tokens."""
    check_tokens(tokens)
    return model(tokens)


def next_token_loss(model: nn.Module, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``.

    Args:
        model: maps (batch, pos) int64 tokens to (batch, pos, d_vocab) logits.
        tokens: (batch, pos) int64, pos >= 2.
        reduction: "mean" (a scalar) or "none" ((batch, pos - 1) per-token losses).
    """
    return logits_loss(model_logits(model, tokens), tokens, reduction)


def logits_loss(logits: torch.Tensor, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy from precomputed (batch, pos, d_vocab) logits.

    Half-precision logits are upcast to float32; float64 stays float64 (exact tests).
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    targets = tokens[:, 1:]  # (batch, pos - 1)
    flat = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction
    )
    return flat if reduction != "none" else flat.view(targets.shape)
