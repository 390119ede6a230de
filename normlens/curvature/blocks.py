"""Per-block Hessian spectra: the top eigenvalue of the Hessian restricted to each block.

The restriction of H to a block B is the sub-matrix H_BB (the Hessian with the
other parameters held fixed); its top eigenvalue measures the curvature seen by
that block alone, so attention, MLP and norm parameters of normalized and
norm-free models can be compared side by side.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch.nn as nn

from normlens.curvature.lanczos import compute_eigenpairs
from normlens.curvature.operators import HessianOperator, LossFn, _as_batches
from normlens.curvature.results import BlockSpectrumResult
from normlens.parameters import check_finite_weights, describe_exclusion, find_unused_parameters, select_parameters
from normlens.sites import block_param_groups


def transformer_blocks(n_layers: int) -> dict[str, str]:
    """Block label -> regex over TransformerLens parameter names (attn, mlp, norms per layer)."""
    return block_param_groups(n_layers)


def compute_block_spectra(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    blocks: dict[str, str] | None = None,
    n_steps: int = 20,
    seed: int = 0,
    name: str = "",
) -> BlockSpectrumResult:
    """Top eigenvalue of H_BB for every block B (NaN for blocks without parameters).

    Args:
        blocks: label -> parameter-name regex; default :func:`transformer_blocks`
            from ``model.cfg.n_layers``.
        n_steps: Lanczos steps per block (fixed; the top eigenvalue converges
            first, and the residual is reported to judge it).

    Parameters the forward does not use are found once and left out of every
    block (a block with no used parameter gets NaN); ``result.excluded`` says so.
    """
    if blocks is None:
        n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
        if n_layers is None:
            raise ValueError("pass blocks={label: regex}; the model has no cfg.n_layers")
        blocks = transformer_blocks(n_layers)
    check_finite_weights(model)
    unused = find_unused_parameters(model, _as_batches(data)[0], loss_fn)
    unused_keys = {info.key for info in unused}
    labels, sizes, tops, residuals = [], [], [], []
    for label, pattern in blocks.items():
        size = sum(math.prod(i.shape) for i in select_parameters(model, pattern, allow_empty=True)
                   if i.key not in unused_keys)
        labels.append(label)
        sizes.append(size)
        if size == 0:
            tops.append(math.nan)
            residuals.append(math.nan)
            continue
        op = HessianOperator(model, data, loss_fn, params=pattern, unused=unused)
        steps = min(n_steps, size)
        result = compute_eigenpairs(op, 1, n_steps=steps, max_steps=steps, seed=seed, warn=False)
        tops.append(float(result.eigenvalues[0]))
        residuals.append(float(result.residuals[0]))
    return BlockSpectrumResult(
        model=name,
        blocks=tuple(labels),
        n_params=np.array(sizes, dtype=np.int64),
        top_eigenvalues=np.array(tops),
        residuals=np.array(residuals),
        n_steps=n_steps,
        excluded=describe_exclusion(unused),
    )
