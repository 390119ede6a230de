"""A zoo model's forward pass for P parameter points at once, one ``bmm`` per linear layer.

The generic path (``vmap`` over the bridge) evaluates the same function but
pays for the bridge's per-op batching, its boolean-mask attention and its
copies: on a 2-core CPU, 8 × 64 tokens, about 3 ms per grid point against
1.6 ms here. The maths is the zoo model's own, step by step:

    h₀ = E[tokens] + P_pos[:T]
    block (Pre-LN):  h = h + attn(ln1(h)),  h = h + mlp(ln2(h))
    block (Post-LN): h = ln1(h + attn(h)),  h = ln2(h + mlp(h))
    attn(x) = softmax(q kᵀ / √d_head, causal) v, then W_O
    logits = ln_out(h) W_U

Each linear layer whose weight moves is a batched matmul over the P points
(``baddbmm`` with the bias); fixed ones are one ``linear`` broadcast over P.
The norms are the model's own modules (LayerNorm, RMSNorm, DyT, the frozen-std
LN of LN-free models) run on (P, B, T, d) activations with their moving
parameters viewed as (P, 1, 1, d), so there is no second norm implementation.

:func:`build` returns None for anything that is not a zoo model; the landscape
evaluator also compares this path with the generic one at construction and
uses it only when they agree.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from normlens.landscape.objective import Objective
from normlens.landscape.params import Params
from normlens.parameters import swapped_parameters


def _inner(module: nn.Module) -> nn.Module:
    """The module a TransformerLens bridge component wraps (or the module itself)."""
    while getattr(module, "original_component", None) is not None:
        module = module.original_component
    return module


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x (P, N, d_in) @ weightᵀ + bias; weight (P, d_out, d_in) per point or (d_out, d_in) shared."""
    if weight.dim() == 3:
        weight_t = weight.transpose(1, 2)
        if bias is None:
            return torch.bmm(x, weight_t)
        return torch.baddbmm(bias.unsqueeze(-2) if bias.dim() == 2 else bias, x, weight_t)
    if bias is not None and bias.dim() == 2:
        return F.linear(x, weight) + bias.unsqueeze(-2)
    return F.linear(x, weight, bias)


class BatchedZooForward:
    """``(moving params (P, ...), batch (B, T)) -> (loss sums (P,), hit sums (P,))`` for a zoo model."""

    def __init__(self, model: nn.Module, objective: Objective, accuracy: bool):
        self.objective = objective
        self.accuracy = accuracy
        self.name_of = {id(p): name for name, p in model.named_parameters()}
        self.native = model.original_model  # the bridged TransformerLens native model
        self.blocks = [_inner(block) for block in self.native.layers]

    def _param(self, moving: Params, tensor: torch.Tensor) -> torch.Tensor:
        """The point-batched value of a model parameter if it moves, else the parameter itself."""
        name = self.name_of.get(id(tensor))  # None for buffers (e.g. the bridge's zero unembed bias)
        return moving[name] if name in moving else tensor.detach()

    def _module_linear(self, moving: Params, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        linear = _inner(module)
        bias = None if linear.bias is None else self._param(moving, linear.bias)
        return _linear(x, self._param(moving, linear.weight), bias)

    def _norm(self, moving: Params, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's own norm on x (P, B, T, d), moving parameters viewed to broadcast over (B, T)."""
        norm = _inner(module)
        n_points = x.shape[0]
        swaps, slots = {}, {}
        for attr, p in norm.named_parameters(recurse=False):
            name = self.name_of[id(p)]
            if name in moving:
                swaps[name] = moving[name].view(n_points, *([1] * (3 - p.dim())), *p.shape)
                slots[name] = [(norm, attr)]
        with swapped_parameters(slots, swaps):
            return norm(x)

    def _attention(self, moving: Params, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Causal multi-head attention of x (P, B, T, d) -> (P, B, T, d).

        ``scaled_dot_product_attention`` with ``is_causal``: the same softmax(q kᵀ / scale) v
        as the model's masked-fill attention (which never has a fully masked row here).
        """
        n_points, batch, n_pos, d_model = x.shape
        heads, d_head = attn.n_heads, attn.d_head
        flat = x.view(n_points, batch * n_pos, d_model)
        q, k, v = (self._module_linear(moving, module, flat).view(n_points * batch, n_pos, heads, d_head)
                   .transpose(1, 2) for module in (attn.q, attn.k, attn.v))  # (P·B, H, T, d_head)
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / attn.scale)
        mixed = mixed.transpose(1, 2).reshape(n_points, batch * n_pos, heads * d_head)
        return self._module_linear(moving, attn.o, mixed).view(n_points, batch, n_pos, d_model)

    def _mlp(self, moving: Params, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        n_points, batch, n_pos, d_model = x.shape
        hidden = mlp.act(self._module_linear(moving, mlp.fc_in, x.view(n_points, batch * n_pos, d_model)))
        return self._module_linear(moving, mlp.fc_out, hidden).view(n_points, batch, n_pos, d_model)

    def logits(self, moving: Params, tokens: torch.Tensor, n_points: int) -> torch.Tensor:
        """(P, B, T, d_vocab) logits of the P points on tokens (B, T)."""
        native = self.native
        batch, n_pos = tokens.shape
        embed = self._param(moving, _inner(native.tok_embed).weight)
        pos = self._param(moving, _inner(native.pos).weight)
        h = embed[:, tokens] if embed.dim() == 3 else F.embedding(tokens, embed)  # (P, B, T, d) or (B, T, d)
        h = h + (pos[:, None, :n_pos] if pos.dim() == 3 else pos[:n_pos])
        h = h.expand(n_points, batch, n_pos, h.shape[-1]).contiguous()
        for block in self.blocks:
            attn, mlp = _inner(block.attn), _inner(block.mlp)
            if block.placement == "pre":
                h = h + self._attention(moving, attn, self._norm(moving, block.ln1, h))
                h = h + self._mlp(moving, mlp, self._norm(moving, block.ln2, h))
            else:
                h = self._norm(moving, block.ln1, h + self._attention(moving, attn, h))
                h = self._norm(moving, block.ln2, h + self._mlp(moving, mlp, h))
        h = self._norm(moving, native.ln_out, h)
        d_model = h.shape[-1]
        logits = self._module_linear(moving, native.head, h.view(n_points, batch * n_pos, d_model))
        return logits.view(n_points, batch, n_pos, -1)

    def __call__(self, moving: Params, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_points = next(iter(moving.values())).shape[0]
        logits = self.logits(moving, batch, n_points)
        flat = logits.view(n_points * batch.shape[0], *logits.shape[2:])
        losses, correct = self.objective(flat, batch.repeat(n_points, *([1] * (batch.dim() - 1))))
        if losses.shape[0] != flat.shape[0]:
            raise ValueError("the objective's losses are not per evaluation item")
        loss_sums = losses.reshape(n_points, -1).double().sum(1)
        if correct is None or not self.accuracy:
            return loss_sums, torch.zeros_like(loss_sums)
        return loss_sums, correct.reshape(n_points, -1).double().sum(1)


def build(model: nn.Module, objective: Objective, accuracy: bool) -> Optional[BatchedZooForward]:
    """A :class:`BatchedZooForward` for a normlens zoo model, else None.

    Zoo models are built by :func:`normlens.models.build_model` (learned positions, plain
    causal attention and MLP); anything this forward does not reproduce, such as a hook that
    changes an activation, is caught by the evaluator's comparison with the generic path.
    """
    from normlens.models.config import ZooConfig
    from normlens.models.zoo import ZooBlock

    native = getattr(model, "original_model", None)
    if not isinstance(getattr(model, "normlens_config", None), ZooConfig) or native is None:
        return None
    if not all(isinstance(_inner(block), ZooBlock) for block in native.layers):
        return None
    return BatchedZooForward(model, objective, accuracy)
