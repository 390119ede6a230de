"""Loss planes and directional curvature measured batch by batch, so a comparison gets an interval.

* :func:`compute_batch_planes`: the plane f(a, b) = L(θ + a·d₁ + b·d₂) (Li et al. 2018) on each
  of B equal-size batches, the pooled plane (the mean of the per-batch planes, which is the loss
  over all B batches because every batch holds the same number of predicted tokens) and the
  sharpness of each batch's plane (:func:`normlens.landscape.sharpness`).
* :func:`compute_axis_rayleigh`: dᵀH_b d / dᵀd for every direction d and batch b, the curvature a
  landscape axis sees (one Hessian-vector product each), to set against the batch's λmax.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from normlens.landscape.directions import Directions
from normlens.landscape.grid import compute_landscape
from normlens.landscape.hessian import hessian_operator, rayleigh_quotient
from normlens.landscape.metrics import sharpness
from normlens.hygiene import eval_mode
from normlens.landscape.params import Params
from normlens.landscape.results import LandscapeResult


class BatchShapeError(ValueError):
    """Batches that cannot be pooled by a plain mean (none given, or of different shapes)."""


def check_batches(batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``batches`` as a list of equal-shape (n_seq, n_ctx) token tensors, or a one-line error."""
    batches = list(batches)
    if not batches:
        raise BatchShapeError("no batches given; pass at least one (n_seq, n_ctx) token tensor")
    shapes = {tuple(b.shape) for b in batches}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise BatchShapeError(f"batches must all be (n_seq, n_ctx) of one shape to be pooled by a mean, got "
                              f"shapes {sorted(shapes)}; cut the evaluation tokens into equal batches")
    return batches


@dataclass(frozen=True)
class BatchPlanes:
    """A plane on every batch: the pooled surface and each batch's sharpness.

    Attributes:
        pooled: the mean of the per-batch surfaces (the loss over all batches).
        sharpness: (B, R) largest loss increase within ``radii[r]`` on batch b's surface.
        radii: the radii, in coefficient units.
        center_losses: (B,) each batch's loss at the model itself.
    """

    pooled: LandscapeResult
    sharpness: np.ndarray
    radii: tuple[float, ...]
    center_losses: np.ndarray


def compute_batch_planes(model: nn.Module, directions: Directions, batches: Sequence[torch.Tensor], *,
                         span: float = 1.0, resolution: int = 11, radii: Sequence[float] = (0.5, 1.0),
                         model_name: str = "") -> BatchPlanes:
    """The plane spanned by ``directions`` on every batch, pooled, with per-batch sharpness.

    Args:
        model: left untouched (the landscape works on copies of the weights).
        directions: two axes (:mod:`normlens.landscape.directions`).
        batches: equal-shape (n_seq, n_ctx) token tensors.
        span, resolution: the grid, [−span, span]² with ``resolution`` points per axis (odd).
        radii: where sharpness is read, in coefficient units.
    """
    batches = check_batches(batches)
    results = [compute_landscape(model, directions, batch, span=span, resolution=resolution,
                                 model_name=model_name, eval_name=f"batch {i + 1} of {len(batches)}")
               for i, batch in enumerate(batches)]
    loss = np.mean(np.stack([r.loss for r in results]), axis=0)  # (resolution, resolution)
    centers = np.array([r.center_loss for r in results])
    digest = hashlib.sha256(":".join(r.fingerprint for r in results).encode()).hexdigest()[:32]
    n_seq, n_ctx = batches[0].shape
    pooled = dataclasses.replace(
        results[0], loss=loss, accuracy=None, center_loss=float(centers.mean()), n_eval_items=n_seq * len(batches),
        eval_name=f"{len(batches)} batches of {n_seq}×{n_ctx} held-out tokens (mean of the batches' surfaces)",
        fingerprint=digest)
    table = np.array([[sharpness(r, radius).increase for radius in radii] for r in results])  # (B, R)
    return BatchPlanes(pooled, table, tuple(float(r) for r in radii), centers)


def compute_axis_rayleigh(model: nn.Module, axes: Sequence[Params], batches: Sequence[torch.Tensor]) -> np.ndarray:
    """(B, J) Rayleigh quotients dⱼᵀH_b dⱼ / dⱼᵀdⱼ of the next-token loss Hessian on each batch.

    One Hessian-vector product per (batch, direction), by double backward on copies of the
    weights; every parameter of the model is in the operator (a direction that is zero on a
    parameter simply does not move it).
    """
    batches = check_batches(batches)
    if not axes:
        raise ValueError("no directions given; pass at least one parameter-shaped direction")
    out = np.empty((len(batches), len(axes)))
    with eval_mode(model):
        for b, batch in enumerate(batches):
            op = hessian_operator(model, batch)
            out[b] = [rayleigh_quotient(op, model, axis) for axis in axes]
            del op  # frees its kept graph before the next batch
    return out


__all__ = ["BatchPlanes", "BatchShapeError", "check_batches", "compute_axis_rayleigh", "compute_batch_planes"]
