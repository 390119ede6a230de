"""Which parameters a landscape may move.

One rule for every landscape routine, the same as the curvature operators':
a parameter moves only if it is trainable (``requires_grad=True``, as
:func:`normlens.parameters.describe_parameters` lists them) and the forward
uses it (it receives a gradient on one evaluation item,
:func:`normlens.parameters.find_unused_parameters`). Frozen parameters are
never moved; parameters the forward never reads (a TransformerLens bridge's
fused ``qkv`` copies of Hugging Face GPT-2) would change nothing but the
direction's norm and the cost, so they are left out and reported. A parameter
reached only through non-differentiable steps (an argmax) counts as unused; an
objective with no gradient at all (a 0-1 loss) leaves usage undecided and every
trainable parameter movable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from normlens.landscape.objective import Objective, next_token_loss_only
from normlens.parameters import describe_exclusion, find_unused_parameters
from normlens.sites import clean_name


class _NotDifferentiable(Exception):
    """The objective's loss carries no gradient at all."""


@dataclass(frozen=True)
class Exclusion:
    """Parameters (``named_parameters`` names) a landscape leaves where they are, and one line saying so."""

    frozen: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    note: str = ""

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.frozen) | frozenset(self.unused)


def excluded_parameters(model: nn.Module, eval_items: Optional[torch.Tensor] = None,
                        objective: Optional[Objective] = None) -> Exclusion:
    """The frozen parameters of ``model`` and, given ``eval_items``, those its forward does not use.

    Usage is decided by one forward and backward on the first evaluation item with
    ``objective`` (default: next-token cross-entropy); the model is left as found.
    """
    named = dict(model.named_parameters())
    frozen = tuple(n for n, p in named.items() if not p.requires_grad)
    unused_infos = []
    if eval_items is not None and len(frozen) < len(named):
        objective = objective or next_token_loss_only

        def loss_fn(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
            loss = objective(m(batch), batch)[0].mean()
            if not loss.requires_grad:
                raise _NotDifferentiable
            return loss

        try:
            unused_infos = find_unused_parameters(model, eval_items[:1], loss_fn)
        except _NotDifferentiable:  # e.g. a 0-1 loss: usage cannot be read off gradients; move every trainable one
            unused_infos = []
    parts = []
    line = describe_exclusion(unused_infos)
    if line:
        parts.append(line)
    if frozen:
        count = sum(named[n].numel() for n in frozen)
        size = f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count}"
        parts.append(f"kept {size} frozen (requires_grad=False) parameters fixed "
                     f"({', '.join(clean_name(n) for n in frozen[:3])}{', ...' if len(frozen) > 3 else ''})")
    return Exclusion(frozen, tuple(info.key for info in unused_infos), "; ".join(parts))

