"""Language-model losses shared by training, curvature and landscapes."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def next_token_loss(model: nn.Module, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``.

    Args:
        model: maps (batch, pos) int64 tokens to (batch, pos, d_vocab) logits.
        tokens: (batch, pos) int64, pos >= 2.
        reduction: "mean" (a scalar) or "none" ((batch, pos - 1) per-token losses).
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(
            f"tokens must be (batch, pos) with pos >= 2, got shape {tuple(tokens.shape)}"
        )
    logits = model(tokens)  # (batch, pos, d_vocab)
    return logits_loss(logits, tokens, reduction)


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
