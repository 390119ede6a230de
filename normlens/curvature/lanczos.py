"""Extreme eigenpairs by Lanczos with full reorthogonalization.

Lanczos builds an orthonormal basis Q_m of the Krylov space span{v, Av, ...,
A^{m-1} v} and the tridiagonal T_m = Q_m^T A Q_m; the eigenpairs (theta, s) of
T_m give Ritz pairs (theta, Q_m s) that converge first at the ends of the
spectrum. Without reorthogonalization rounding makes Q_m lose orthogonality and
converged eigenvalues reappear as "ghost" copies, so every new vector is
orthogonalized against all previous ones, twice ("twice is enough", Parlett).
Too few steps give wrong values silently: the default is at least 2k + 20 steps,
extended until every wanted pair's residual ||A y - theta y|| is below ``tol``.

Any square tensor or object with ``shape`` and ``@`` works as the operator.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from normlens.curvature.operators import as_operator
from normlens.curvature.results import EigenResult

WHICH = ("largest", "smallest", "both")


@dataclass
class LanczosRun:
    """The raw output of :func:`lanczos`: T's diagonal/off-diagonal and the basis."""

    alpha: torch.Tensor  # (m,) float64
    beta: torch.Tensor  # (m,) float64; beta[j] links q_j and q_{j+1}; beta[m-1] is the residual norm
    basis: torch.Tensor  # (n, m) float64, orthonormal columns
    residual: torch.Tensor  # (n,) float64, A q_m - alpha_m q_m - beta_{m-1} q_{m-1}, orthogonalized
    breakdown: bool  # beta[m-1] ~ 0: the basis spans an invariant subspace
    n_matvecs: int

    @property
    def n_steps(self) -> int:
        return int(self.alpha.numel())

    def tridiagonal(self) -> torch.Tensor:
        """T_m = Q_m^T A Q_m, (m, m)."""
        m = self.n_steps
        off = self.beta[: m - 1]
        return torch.diag(self.alpha) + torch.diag(off, 1) + torch.diag(off, -1)


def _op_dtype(op: Any) -> torch.dtype:
    return op.dtype if isinstance(getattr(op, "dtype", None), torch.dtype) else torch.float64


def _op_device(op: Any) -> torch.device:
    return getattr(op, "device", None) or torch.device("cpu")


def apply(op: Any, vector: torch.Tensor) -> torch.Tensor:
    """op @ vector in the operator's dtype, returned as float64."""
    out = op @ vector.to(_op_dtype(op))
    if not torch.isfinite(out).all():
        raise FloatingPointError("the operator returned NaN/inf; check the model and data for NaN")
    return out.to(torch.float64)


def apply_columns(op: Any, columns: torch.Tensor, block_elements: int = 1 << 27) -> torch.Tensor:
    """A @ each column, (n, m) -> (n, m), float64.

    Dense matrices and operators with ``accepts_blocks`` (ours) take blocks of columns (up to
    ``block_elements`` entries each) in one call: a curvature operator then runs
    each batch's forward once per block, not once per column. Any other
    operator is applied column by column, since it may accept only vectors.
    """
    n, m = columns.shape
    if isinstance(op, torch.Tensor) or getattr(op, "accepts_blocks", False):
        width = max(1, min(m, block_elements // max(n, 1)))
        return torch.cat([apply(op, columns[:, j:j + width]) for j in range(0, m, width)], 1)
    return torch.stack([apply(op, columns[:, j]) for j in range(m)], 1)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w minus its projection on the columns of basis, done twice (full reorthogonalization)."""
    for _ in range(2):
        w = w - basis @ (basis.T @ w)  # (n, j) @ (j,) -> (n,)
    return w


def lanczos(
    op: Any,
    n_steps: int,
    *,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    previous: LanczosRun | None = None,
) -> LanczosRun:
    """Run (or continue ``previous`` up to) ``n_steps`` Lanczos steps with full reorthogonalization.

    Args:
        start: the first vector (normalized here); default: Gaussian from ``generator``.
        previous: a run to extend; its basis and coefficients are kept.

    On breakdown (beta ~ 0: an invariant subspace was found) the run continues
    from a fresh random vector orthogonal to the basis, with beta = 0, so T
    stays exact and block-diagonal.
    """
    op = as_operator(op)
    n = op.shape[0]
    device = _op_device(op)
    n_steps = min(int(n_steps), n)
    generator = generator or torch.Generator().manual_seed(0)

    def fresh_vector(basis: torch.Tensor) -> torch.Tensor:
        for _ in range(10):
            v = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
            v = _orthogonalize(v, basis)
            if v.norm() > 1e-8:
                return v / v.norm()
        raise RuntimeError("could not extend the Krylov basis; the space is exhausted")

    if previous is None:
        q = start if start is not None else torch.randn(n, generator=generator, dtype=torch.float64)
        q = q.to(device, torch.float64)
        if q.shape != (n,) or not q.norm() > 0:
            raise ValueError(f"start vector must be a non-zero ({n},) tensor, got shape {tuple(q.shape)}")
        basis = torch.empty(n, n_steps, dtype=torch.float64, device=device)
        alpha = torch.empty(n_steps, dtype=torch.float64, device=device)
        beta = torch.zeros(n_steps, dtype=torch.float64, device=device)
        basis[:, 0] = q / q.norm()
        first, matvecs = 0, 0
        residual, breakdown = None, False
    else:
        first = previous.n_steps
        extra = max(n_steps - first, 0)
        basis = torch.cat([previous.basis, previous.basis.new_empty(n, extra)], 1)
        alpha = torch.cat([previous.alpha, previous.alpha.new_empty(extra)])
        beta = torch.cat([previous.beta, previous.beta.new_zeros(extra)])
        matvecs, residual, breakdown = previous.n_matvecs, previous.residual, previous.breakdown

    for j in range(first, n_steps):
        if j > 0:
            if breakdown:
                beta[j - 1] = 0.0
                basis[:, j] = fresh_vector(basis[:, :j])
            else:
                basis[:, j] = residual / beta[j - 1]
        q = basis[:, j]
        w = apply(op, q)
        matvecs += 1
        alpha[j] = q @ w
        w = _orthogonalize(w, basis[:, : j + 1])
        beta[j] = w.norm()
        scale = max(float(alpha[: j + 1].abs().max()), float(beta[: j + 1].abs().max()), 1e-300)
        breakdown = bool(beta[j] <= 1e-10 * scale)
        residual = w
    return LanczosRun(alpha, beta, basis, residual, breakdown, matvecs)


def _wanted(order_count: int, k: int, which: str) -> tuple[list[int], list[str]]:
    """Indices into ascending Ritz values for the wanted ends, in output order."""
    if which == "largest":
        return list(range(order_count - 1, order_count - 1 - k, -1)), ["largest"] * k
    if which == "smallest":
        return list(range(k)), ["smallest"] * k
    return (
        list(range(order_count - 1, order_count - 1 - k, -1)) + list(range(k)),
        ["largest"] * k + ["smallest"] * k,
    )


def compute_eigenpairs(
    op: Any,
    k: int = 5,
    *,
    which: str = "largest",
    n_steps: int | None = None,
    max_steps: int | None = None,
    tol: float | None = None,
    seed: int = 0,
    exact_residuals: bool = True,
    warn: bool = True,
) -> EigenResult:
    """The k extreme eigenpairs of a symmetric operator by Lanczos.

    Args:
        op: a symmetric (n, n) tensor or an operator with ``shape``/``@``.
        k: pairs per end wanted.
        which: "largest", "smallest" or "both" (k of each).
        n_steps: first Lanczos run length; default max(2 k_total + 20, 30),
            at most n (k_total = 2k for "both").
        max_steps: extend the run (by half its length at a time) until every
            wanted pair converges or this many steps; default min(n, 4 * n_steps).
            Pass ``max_steps=n_steps`` for a fixed cost.
        tol: a pair is converged when ||A y - theta y|| <= tol * max|theta|;
            default 1e-6 for float64 operators and 1e-4 otherwise.
        exact_residuals: compute ||A y - theta y|| with one more product per
            pair (default) instead of the Lanczos estimate |beta_m s_m|.
        warn: warn when a pair did not converge.

    Returns:
        :class:`EigenResult` (eigenvectors also as parameter-shaped tensors via
        ``eigenvector_params`` when ``op`` is a curvature operator).

    >>> A = torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64))
    >>> compute_eigenpairs(A, k=2).eigenvalues.round(8)
    array([40., 39.])
    """
    op = as_operator(op)
    n = op.shape[0]
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k_total = 2 * k if which == "both" else k
    if k_total > n:
        raise ValueError(
            f"asked for {k_total} eigenpairs (k={k}, which={which!r}) of an operator of size {n}; "
            f"use k <= {n // 2 if which == 'both' else n}"
        )
    default_steps = max(2 * k_total + 20, 30)
    n_steps = min(n, default_steps if n_steps is None else int(n_steps))
    if n_steps < k_total:
        raise ValueError(f"n_steps={n_steps} is below the {k_total} pairs wanted")
    max_steps = min(n, max(n_steps, 4 * n_steps if max_steps is None else int(max_steps)))
    if tol is None:
        tol = 1e-6 if _op_dtype(op) == torch.float64 else 1e-4

    generator = torch.Generator().manual_seed(seed)
    run = lanczos(op, n_steps, generator=generator)
    while True:
        theta, s = torch.linalg.eigh(run.tridiagonal())  # ascending
        idx, ends = _wanted(run.n_steps, k, which)
        scale = float(theta.abs().max()) or 1.0
        estimates = (run.beta[-1] * s[-1, idx]).abs()  # |beta_m s_{m,i}|
        if run.n_steps >= max_steps or bool((estimates <= tol * scale).all()):
            break
        run = lanczos(op, min(max_steps, run.n_steps + max(run.n_steps // 2, 10)),
                      generator=generator, previous=run)

    vectors = run.basis @ s[:, idx]  # (n, k_total) Ritz vectors
    vectors = vectors / vectors.norm(dim=0, keepdim=True)
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)  # largest entry > 0
    values = theta[idx]
    matvecs = run.n_matvecs
    if exact_residuals:
        residuals = (apply_columns(op, vectors) - vectors * values).norm(dim=0)
        matvecs += len(idx)
    else:
        residuals = estimates  # the Lanczos estimates of the final run, from the loop above
    converged = residuals <= tol * scale
    if warn and not bool(converged.all()):
        bad = [f"{float(values[i]):.6g} (residual {float(residuals[i]):.2e})"
               for i in range(len(idx)) if not converged[i]]
        warnings.warn(
            f"Lanczos did not converge after {run.n_steps} steps for {len(bad)} of {len(idx)} "
            f"eigenpairs: {', '.join(bad)}; tolerance {tol:.1e} x {scale:.3g}. "
            "Raise n_steps/max_steps (or tol) for reliable values.",
            RuntimeWarning,
            stacklevel=2,
        )
    return EigenResult(
        eigenvalues=values.cpu().numpy(),
        eigenvectors=vectors.cpu().numpy(),
        residuals=residuals.cpu().numpy(),
        converged=converged.cpu().numpy(),
        ends=tuple(ends),
        n_steps=run.n_steps,
        n_matvecs=matvecs,
        tol=float(tol),
        seed=seed,
        param_names=tuple(getattr(op, "param_names", ())),
        param_shapes=tuple(tuple(s) for s in getattr(op, "param_shapes", ())),
    )


def ritz_values_and_weights(run: LanczosRun) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature from one run: Ritz values (nodes) and squared first components (weights)."""
    theta, s = torch.linalg.eigh(run.tridiagonal())
    weights = s[0].pow(2)
    return theta.cpu().numpy(), (weights / weights.sum()).cpu().numpy()


__all__ = ["LanczosRun", "lanczos", "compute_eigenpairs", "ritz_values_and_weights", "apply", "WHICH"]

