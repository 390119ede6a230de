"""Spectral density by stochastic Lanczos quadrature (SLQ), Gaussian-smoothed.

For a random unit vector v, m Lanczos steps give T_m = S diag(theta) S^T; the
Gauss quadrature rule with nodes theta_j and weights tau_j = S_{1j}^2
approximates the spectral measure seen from v,
    v^T f(A) v = sum_i (v^T u_i)^2 f(lambda_i) ~ sum_j tau_j f(theta_j),
whose average over v is (1/n) sum_i f(lambda_i) (Lin, Saad, Yang 2016; Ghorbani,
Krishnan, Xiao 2019). With f a Gaussian kernel of width sigma this gives the
smoothed density
    rho(t) = (1/P) sum_p sum_j tau_{p,j} N(t; theta_{p,j}, sigma^2),
which integrates to 1 (each probe's weights sum to 1) and whose mean,
(1/P) sum_p v_p^T A v_p, estimates tr(A)/n.

LLA criteria from the quadrature ("Investigating generalization ... by means of loss
landscapes and Hessian analysis", the LLA paper): re = |lambda_min/lambda_max|
and Kh = sum_{theta<0} w |theta|^1/2 / sum_{theta>0} w theta^1/2, available as
``DensityResult.re`` and ``DensityResult.kh`` (and per probe, ``kh_per_probe``:
with one probe and a few steps Kh varies a lot between probes, so estimate it
over several probes and batches, see :func:`normlens.curvature.batches.estimate_batch_curvature`).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from normlens.curvature.lanczos import _op_device, _op_dtype, lanczos, make_generator, ritz_values_and_weights
from normlens.curvature.memory import basis_dtype, check_plan, plan_basis
from normlens.curvature.operators import as_operator
from normlens.curvature.results import DensityResult


def gaussian_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float
) -> np.ndarray:
    """sum_j w_j N(grid; nodes_j, sigma^2) for nodes/weights of any shape (weights summing to 1)."""
    nodes, weights = np.ravel(nodes), np.ravel(weights)
    z = (grid[:, None] - nodes[None, :]) / sigma  # (G, J)
    return (np.exp(-0.5 * z**2) @ weights) / (sigma * np.sqrt(2 * np.pi))


def estimate_density(
    op: Any,
    *,
    n_probes: int = 4,
    n_steps: int = 40,
    sigma: float | None = None,
    relative_sigma: float = 0.01,
    n_grid: int = 1000,
    seed: int = 0,
    max_basis_bytes: int | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> DensityResult:
    """Estimate the eigenvalue density of a symmetric operator by SLQ.

    Args:
        op: an (n, n) tensor or operator with ``shape``/``@``.
        n_probes: random starting vectors (Gaussian, normalized).
        n_steps: Lanczos steps per probe (at most n), full reorthogonalization.
        sigma: kernel width; default ``relative_sigma * (lambda_max - lambda_min)``.
        n_grid: grid points, spanning [lambda_min - 5 sigma, lambda_max + 5 sigma]
            so that the grid integral of the density is 1 to ~1e-6.
        seed: seeds the probes (drawn on the operator's device).
        max_basis_bytes, spill_dir: as :func:`~normlens.curvature.lanczos.compute_eigenpairs`
            (one probe's basis is held at a time).

    Returns:
        :class:`DensityResult` (``integral``, ``mean``, ``re``, ``kh``).
    """
    op = as_operator(op)
    n = op.shape[0]
    for name, value in (("n_probes", n_probes), ("n_steps", n_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    steps = min(int(n_steps), n)
    device = _op_device(op)
    check_plan(plan_basis(n, steps, dtype=basis_dtype(_op_dtype(op)), device=device,
                          max_basis_bytes=max_basis_bytes, spill_dir=spill_dir))
    generator = make_generator(device, seed)
    nodes = np.empty((n_probes, steps))
    weights = np.empty((n_probes, steps))
    for p in range(n_probes):
        run = lanczos(op, steps, generator=generator, max_basis_bytes=max_basis_bytes, spill_dir=spill_dir)
        nodes[p], weights[p] = ritz_values_and_weights(run)
        del run
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = relative_sigma * (hi - lo) if hi > lo else relative_sigma * max(abs(hi), 1.0)
    # at least 4 points per sigma, so the trapezoid integral is accurate (capped)
    n_grid = int(min(max(n_grid, np.ceil(4 * (hi - lo + 10 * sigma) / sigma)), 200_000))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, n_grid)
    density = gaussian_density(nodes, weights / n_probes, grid, sigma)
    return DensityResult(
        grid=grid, density=density, nodes=nodes, weights=weights, sigma=float(sigma),
        n=n, n_probes=n_probes, n_steps=steps, seed=seed, excluded=str(getattr(op, "excluded", "")),
    )
