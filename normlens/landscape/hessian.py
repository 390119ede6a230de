"""The landscape's view of the loss Hessian: :class:`normlens.curvature.HessianOperator`
over the evaluation set, with vectors as landscape ``Params`` (name -> tensor).

Hv = ∇_θ (∇_θ L · v) by double backward on copies of the weights (the model's
weights and ``.grad`` are never touched); L is the mean of the objective's
per-element losses over ``eval_items``. Top eigenpairs by
:func:`normlens.curvature.lanczos.compute_eigenpairs` (Lanczos with full
reorthogonalization, a fixed ≥ 2k + 20 steps).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from normlens.curvature.lanczos import compute_eigenpairs
from normlens.curvature.operators import HessianOperator
from normlens.hygiene import eval_mode
from normlens.landscape.objective import Objective, next_token_objective
from normlens.landscape.params import Params


def hessian_operator(model: nn.Module, eval_items: torch.Tensor, names: list[str] | None = None,
                     objective: Objective | None = None, items_per_batch: int | None = None) -> HessianOperator:
    """The Hessian of the mean per-element loss over ``eval_items`` w.r.t. the parameters ``names``.

    Batches of ``items_per_batch`` items are weighted by their sizes, so the loss is the mean
    over every element whatever the batching. Build it inside ``eval_mode(model)``.
    """
    objective = objective or next_token_objective
    step = items_per_batch or eval_items.shape[0]
    batches = [eval_items[start:start + step] for start in range(0, eval_items.shape[0], step)]
    by_name = dict(model.named_parameters())
    wanted = {id(by_name[n]) for n in (names if names is not None else by_name)}
    return HessianOperator(model, batches, loss_fn=lambda m, batch: objective(m(batch), batch)[0].mean(),
                           params=lambda _, p: id(p) in wanted, method="double_backward")


def _keys(op: HessianOperator, model: nn.Module) -> list[str]:
    """The landscape name (``named_parameters`` key) of each of the operator's parameters, in its order."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    by_key = dict(model.named_parameters())
    return [name_of[id(by_key[info.key])] for info in op.selected]


def rayleigh_quotient(op: HessianOperator, model: nn.Module, direction: Params) -> float:
    """dᵀHd / dᵀd over the operator's parameters (float64 accumulation)."""
    flat = torch.cat([direction[n].reshape(-1).to(device=op.device, dtype=torch.float64)
                      for n in _keys(op, model)])
    den = float(flat @ flat)
    if den == 0.0:
        raise ValueError("the direction is zero on every parameter; dᵀHd/dᵀd is undefined")
    return float(flat @ (op @ flat.to(op.dtype)).double()) / den


def top_hessian_eigenpairs(model: nn.Module, params: Params, eval_items: torch.Tensor, names: list[str],
                           *, k: int = 2, n_steps: int | None = None, seed: int = 0,
                           objective: Objective | None = None,
                           items_per_batch: int | None = None) -> tuple[np.ndarray, list[Params]]:
    """Top-``k`` eigenpairs of the loss Hessian restricted to the parameters ``names``.

    Parameters outside ``names`` are held fixed (their eigenvector entries are zero).
    """
    with eval_mode(model):
        op = hessian_operator(model, eval_items, names, objective, items_per_batch)
        steps = n_steps if n_steps is not None else max(2 * k + 20, 30)
        eigen = compute_eigenpairs(op, k, n_steps=steps, max_steps=steps, seed=seed,
                                   exact_residuals=False, warn=False)
    keys = _keys(op, model)
    eigvecs = []
    for column in torch.tensor(eigen.eigenvectors).T:  # (k, dim), a copy (the result is read-only)
        vec = {n: torch.zeros_like(params[n]) for n in params}
        for n, piece in zip(keys, column.split([params[n].numel() for n in keys])):
            vec[n] = piece.view(params[n].shape).to(device=params[n].device, dtype=params[n].dtype)
        eigvecs.append(vec)
    return eigen.eigenvalues, eigvecs
