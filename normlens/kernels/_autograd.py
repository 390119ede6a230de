"""The exact, differentiable fallback backward shared by the fused autograd Functions.

The Triton backward kernels compute first derivatives only. When autograd asks
for more (``create_graph=True``, i.e. Hessian-vector products by double
backward) or when a side output (mean, rstd) receives a gradient, the
Functions recompute their op with the torch reference and differentiate that,
so results stay exact and further differentiable.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def needs_reference_backward(*side_grads: torch.Tensor | None) -> bool:
    """True when the backward must run through the torch reference."""
    return torch.is_grad_enabled() or any(g is not None for g in side_grads)


def reference_backward(
    reference_fn: Callable[..., Sequence[torch.Tensor | None]],
    inputs: Sequence[torch.Tensor | None],
    needs_grad: Sequence[bool],
    grad_outputs: Sequence[torch.Tensor | None],
) -> list[torch.Tensor | None]:
    """Gradients of ``reference_fn(*inputs)`` w.r.t. the inputs that need them.

    Args:
        reference_fn: the torch reference, returning one tensor per forward output.
        inputs: the tensors the forward received (None for absent optional ones).
        needs_grad: ``ctx.needs_input_grad`` for those inputs.
        grad_outputs: the incoming gradients, None where an output got none.

    Returns:
        One entry per input: its gradient, or None.
    """
    create_graph = torch.is_grad_enabled()
    if create_graph:
        leaves = list(inputs)  # keep the graph to the original inputs: double backward
    else:
        leaves = [
            t.detach().requires_grad_(need) if t is not None else None
            for t, need in zip(inputs, needs_grad)
        ]
    with torch.enable_grad():
        outs = reference_fn(*leaves)
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o is not None and g is not None]
    wanted = [i for i, (t, need) in enumerate(zip(leaves, needs_grad)) if need and t is not None]
    result: list[torch.Tensor | None] = [None] * len(inputs)
    if not pairs or not wanted:
        return result
    grads = torch.autograd.grad(
        [o for o, _ in pairs],
        [leaves[i] for i in wanted],
        [g for _, g in pairs],
        create_graph=create_graph,
        allow_unused=True,
    )
    for i, g in zip(wanted, grads):
        result[i] = g
    return result
