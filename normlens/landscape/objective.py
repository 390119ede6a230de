"""What a landscape measures at a point: a loss (and optionally accuracy) over an evaluation set.

An objective maps the model's output on a batch of evaluation items, and the
batch itself, to per-element losses and per-element correctness (or None). The
surface value is the mean over every element of the whole evaluation set, so
it does not depend on how the set is cut into batches.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from normlens.losses import logits_loss

# (outputs, batch) -> (per-element losses, per-element correct in {0, 1} or None)
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Optional[torch.Tensor]]]


def next_token_objective(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy (:func:`normlens.losses.logits_loss`) and top-1 accuracy.

    logits: (batch, pos, d_vocab); tokens: (batch, pos) int64.
    """
    losses = logits_loss(logits, tokens, reduction="none")  # (batch, pos - 1)
    correct = (logits[:, :-1].argmax(-1) == tokens[:, 1:]).to(losses.dtype)
    return losses, correct


def next_token_loss_only(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Next-token cross-entropy as :func:`next_token_objective`, without the accuracy (no argmax)."""
    return logits_loss(logits, tokens, reduction="none"), None


def check_eval_items(items: torch.Tensor) -> torch.Tensor:
    """The evaluation set: a non-empty tensor whose first dimension indexes items."""
    if not isinstance(items, torch.Tensor):
        raise TypeError(f"the evaluation set must be a tensor, got {type(items).__name__}")
    if items.dim() == 0 or items.shape[0] == 0:
        raise ValueError(
            f"the evaluation set is empty (shape {tuple(items.shape)}); "
            "pass at least one item, e.g. tokens of shape (n_seq, n_ctx) with n_seq >= 1"
        )
    return items
