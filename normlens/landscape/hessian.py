"""Hessian-vector products and top eigenpairs, local to the landscape package.

Hv = ∇_θ (∇_θ L · v), by double backward through a functional call (parameters swapped in)
on detached copies of the parameters, so the model's weights and ``.grad``
are never touched. Top eigenpairs by :func:`normlens.curvature.lanczos.compute_eigenpairs`
(Lanczos with full reorthogonalization, a fixed ≥ 2k + 20 steps; without
reorthogonalization ghost copies of the top eigenvalue appear).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from normlens.curvature.lanczos import compute_eigenpairs
from normlens.landscape.objective import Objective, eval_mode, next_token_objective
from normlens.landscape.params import Params, flatten, functional_forward, parameter_slots, unflatten

LossClosure = Callable[[Params], torch.Tensor]


def loss_closure(model: nn.Module, eval_items: torch.Tensor, objective: Objective | None = None,
                 items_per_batch: int | None = None) -> LossClosure:
    """``params -> mean loss over eval_items`` (differentiable), evaluated with ``params``."""
    objective = objective or next_token_objective
    step = items_per_batch or eval_items.shape[0]
    slots = parameter_slots(model)

    def closure(params: Params) -> torch.Tensor:
        total, count = 0.0, 0
        for start in range(0, eval_items.shape[0], step):
            batch = eval_items[start:start + step]
            losses, _ = objective(functional_forward(model, slots, params, batch), batch)
            total = total + losses.sum()
            count += losses.numel()
        return total / count

    return closure


class HessianVectorProduct:
    """The operator v -> Hv at ``params`` for ``closure``; the gradient graph is built once.

    Only ``names`` (default: all) are differentiated; vectors are dicts over those names.
    Use inside ``eval_mode(model)``.
    """

    def __init__(self, closure: LossClosure, params: Params, names: Optional[list[str]] = None):
        self.names = list(names or params)
        self._leaves = {n: params[n].detach().clone().requires_grad_(n in self.names) for n in params}
        inputs = [self._leaves[n] for n in self.names]
        loss = closure(self._leaves)
        self.loss = float(loss.detach())
        grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
        # parameters the loss does not reach have zero gradient and zero Hessian rows
        self._used = [(n, leaf, g) for n, leaf, g in zip(self.names, inputs, grads)
                      if g is not None and g.requires_grad]

    def __call__(self, vector: Params) -> Params:
        out = {n: torch.zeros_like(self._leaves[n]) for n in self.names}
        if not self._used:
            return out
        dot = sum((g * vector[n].to(device=g.device, dtype=g.dtype)).sum() for n, _, g in self._used)
        hv = torch.autograd.grad(dot, [leaf for _, leaf, _ in self._used], retain_graph=True, allow_unused=True)
        for (n, _, _), h in zip(self._used, hv):
            if h is not None:
                out[n] = h.detach()
        return out


def rayleigh_quotient(hvp: HessianVectorProduct, direction: Params) -> float:
    """dᵀHd / dᵀd over ``hvp.names`` (float64 accumulation)."""
    hd = hvp(direction)
    num = sum(float((hd[n].double() * direction[n].to(hd[n].device).double()).sum()) for n in hvp.names)
    den = sum(float(direction[n].double().pow(2).sum()) for n in hvp.names)
    if den == 0.0:
        raise ValueError("the direction is zero on every parameter; dᵀHd/dᵀd is undefined")
    return num / den


class _FlatHessian:
    """``H @ v`` on flat float64 CPU vectors over ``names``: the operator :func:`compute_eigenpairs` takes."""

    dtype = torch.float64
    device = torch.device("cpu")

    def __init__(self, hvp: HessianVectorProduct, like: Params, names: list[str]):
        self.hvp, self.like, self.names = hvp, like, names
        dim = sum(like[n].numel() for n in names)
        self.shape = (dim, dim)

    def __matmul__(self, vector: torch.Tensor) -> torch.Tensor:
        return flatten(self.hvp(unflatten(vector, self.like, self.names)), self.names).double().cpu()


def top_hessian_eigenpairs(model: nn.Module, params: Params, eval_items: torch.Tensor, names: list[str],
                           *, k: int = 2, n_steps: int | None = None, seed: int = 0,
                           objective: Objective | None = None,
                           items_per_batch: int | None = None) -> tuple[np.ndarray, list[Params]]:
    """Top-``k`` eigenpairs of the loss Hessian restricted to the parameters ``names``.

    Parameters outside ``names`` are held fixed (their eigenvector entries are zero).
    """
    closure = loss_closure(model, eval_items, objective, items_per_batch)
    with eval_mode(model):
        hvp = HessianVectorProduct(closure, params, names)
        like = {n: params[n] for n in names}
        steps = n_steps if n_steps is not None else max(2 * k + 20, 30)
        eigen = compute_eigenpairs(_FlatHessian(hvp, like, names), k, num_steps=steps, max_steps=steps,
                                   seed=seed, exact_residuals=False, warn=False)
    values = eigen.eigenvalues
    eigvecs = []
    for row in torch.tensor(eigen.eigenvectors.T):  # (k, dim), a copy (the result is read-only)
        vec = {n: torch.zeros_like(params[n]) for n in params}
        vec.update({n: t.to(params[n].device) for n, t in unflatten(row, like, names).items()})
        eigvecs.append(vec)
    return values, eigvecs
