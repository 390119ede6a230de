"""Numbers read off a surface: sharpness and curvature along each axis.

* Sharpness: max_{‖(a, b)‖₂ ≤ r} f(a, b) − f(0, 0) over the grid's cells
  (a grid version of Keskar et al. 2017's ε-sharpness), also relative to 1 + f(0, 0).
* Curvature along axis k: least-squares quadratic c₀ + c₁t + c₂t² through the
  2m + 1 cells nearest the centre on that axis; f''(0) = 2c₂ = d_kᵀHd_k for an
  exact quadratic. Compared as a Rayleigh quotient f''(0)/‖d_k‖² with the
  Hessian's d_kᵀHd_k / d_kᵀd_k from a Hessian-vector product.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from normlens.landscape.directions import Directions
from normlens.landscape.hessian import hessian_operator, rayleigh_quotient
from normlens.landscape.movable import excluded_parameters
from normlens.hygiene import eval_mode
from normlens.landscape.objective import Objective, check_eval_items
from normlens.landscape.params import parameters_of
from normlens.landscape.results import AxisCurvature, LandscapeMetrics, LandscapeResult, Sharpness


CURVATURE_NOTE = (
    "Curvature: second derivative of a quadratic fit through the 3 cells at the centre of each axis, "
    "divided by ‖d‖², next to the Hessian's dᵀHd/dᵀd from a Hessian-vector product; a coarse grid "
    "makes the fit a secant estimate, so the two agree only roughly."
)


def sharpness(result: LandscapeResult, radius: float) -> Sharpness:
    """Largest loss increase over cells within Euclidean ``radius`` of the origin (coefficient units)."""
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    mesh = np.meshgrid(*result.coords, indexing="ij")
    dist = np.sqrt(sum(m ** 2 for m in mesh))
    inside = dist <= radius * (1 + 1e-12)
    values = np.asarray(result.loss)[inside]
    points = np.stack([m[inside] for m in mesh], axis=1)  # (n_inside, n_axes)
    finite = np.isfinite(values)
    n_bad = int((~finite).sum())
    f0 = result.center_loss
    if n_bad or not np.isfinite(f0):
        at = tuple(points[np.flatnonzero(~finite)[0]]) if n_bad else tuple(0.0 for _ in result.coords)
        return Sharpness(float(radius), float("inf"), float("inf"), tuple(map(float, at)), int(inside.sum()), n_bad)
    best = int(np.argmax(values))
    increase = float(values[best] - f0)
    return Sharpness(float(radius), increase, increase / (1.0 + f0), tuple(map(float, points[best])),
                     int(inside.sum()), 0)


def fit_axis_curvature(result: LandscapeResult, axis: int, n_side: int = 2) -> tuple[float, int, float]:
    """(f''(0), number of points used, half-width) from a quadratic fit along ``axis`` at the centre."""
    if not 0 <= axis < result.ndim:
        raise ValueError(f"axis must be in [0, {result.ndim}), got {axis}")
    origin = result.origin_index
    coords = np.asarray(result.coords[axis])
    index = [slice(None) if k == axis else origin[k] for k in range(result.ndim)]
    line = np.asarray(result.loss)[tuple(index)]  # (n_axis,)
    lo, hi = max(0, origin[axis] - n_side), min(len(coords), origin[axis] + n_side + 1)
    t, y = coords[lo:hi], line[lo:hi]
    if len(t) < 3:
        raise ValueError(f"need at least 3 points on axis {axis} for a quadratic fit, got {len(t)}")
    if not np.isfinite(y).all():
        return float("nan"), len(t), float(np.abs(t).max())
    c2, _, _ = np.polyfit(t, y, 2)
    return float(2.0 * c2), len(t), float(np.abs(t).max())


def compute_metrics(result: LandscapeResult, *, radii: Sequence[float] = (0.5, 1.0), n_side: int = 2,
                    model: Optional[nn.Module] = None, directions: Optional[Directions] = None,
                    eval_items: Optional[torch.Tensor] = None, objective: Optional[Objective] = None,
                    items_per_batch: Optional[int] = None) -> LandscapeMetrics:
    """Sharpness at each radius and per-axis curvature; with ``model``, ``directions`` and
    ``eval_items`` also the Hessian's dᵀHd/dᵀd along each axis (one HVP per axis), over the
    parameters the landscape moves (trainable, used by the forward, nonzero in a direction).

    The model is left untouched (HVPs run on copies of the weights).
    """
    sharp = tuple(sharpness(result, r) for r in radii)
    hessian: list[Optional[float]] = [None] * result.ndim
    if model is not None and directions is not None and eval_items is not None:
        check_eval_items(eval_items)
        directions.check_fits(model)
        params = parameters_of(model)
        excluded = excluded_parameters(model, eval_items, objective).names
        names = [n for n in params  # the parameters a landscape moves (normlens.landscape.movable)
                 if n not in excluded and any(bool((axis[n] != 0).any()) for axis in directions.axes)]
        if names and all(torch.isfinite(p).all() for p in params.values()):
            with eval_mode(model):
                try:
                    op = hessian_operator(model, eval_items, names, objective, items_per_batch)
                except FloatingPointError:  # a finite model whose loss is NaN/inf: no curvature
                    op = None
                if op is not None:
                    hessian = [rayleigh_quotient(op, model, axis) for axis in directions.axes]
    curvature = []
    norms = result.direction_norms
    for k in range(result.ndim):
        second, n_pts, half = fit_axis_curvature(result, k, n_side)
        rayleigh = second / norms[k] ** 2 if norms[k] > 0 else float("nan")
        curvature.append(AxisCurvature(k, second, rayleigh, hessian[k], n_pts, half))
    return LandscapeMetrics(result.center_loss, sharp, tuple(curvature), result.n_nonfinite)
