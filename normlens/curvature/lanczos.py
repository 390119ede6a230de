"""Extreme eigenpairs by Lanczos with full reorthogonalization.

Lanczos builds an orthonormal basis Q_m of the Krylov space span{v, Av, ...,
A^{m-1} v} and the tridiagonal T_m = Q_m^T A Q_m; the eigenpairs (theta, s) of
T_m give Ritz pairs (theta, Q_m s) that converge first at the ends of the
spectrum. Without reorthogonalization rounding makes Q_m lose orthogonality and
converged eigenvalues reappear as "ghost" copies, so every new vector is
orthogonalized against all previous ones (a second pass when the first cancels
much of it: "twice is enough", Parlett 1980).
Too few steps give wrong values silently: the default is at least 2k + 20 steps,
extended until every wanted pair's residual ||A y - theta y|| is below ``tol``.

Memory: the basis is kept in the operator's dtype (at least float32) on its
device; the tridiagonal coefficients are float64. Its size (steps x n entries)
is planned and checked against the free memory before anything is allocated
(:mod:`normlens.curvature.memory`); with ``max_basis_bytes`` the vectors beyond
that budget go to a memory-mapped file (:class:`~normlens.curvature.basis.LanczosBasis`),
so reorthogonalization stays full and exact.

Any square tensor or object with ``shape`` and ``@`` works as the operator.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from normlens.curvature.basis import LanczosBasis, dot64, norm64
from normlens.curvature.memory import BasisPlan, basis_dtype, check_plan, max_vectors, plan_basis
from normlens.curvature.operators import as_operator
from normlens.curvature.results import EigenResult

WHICH = ("largest", "smallest", "both", "magnitude")
logger = logging.getLogger("normlens.curvature")


@dataclass
class LanczosRun:
    """The raw output of :func:`lanczos`: T's diagonal/off-diagonal and the basis."""

    alpha: torch.Tensor  # (m,) float64, CPU
    beta: torch.Tensor  # (m,) float64; beta[j] links q_j and q_{j+1}; beta[m-1] is the residual norm
    basis: LanczosBasis  # m orthonormal vectors (``basis.matrix()`` gives them as (n, m))
    residual: torch.Tensor  # (n,) A q_m - alpha_m q_m - beta_{m-1} q_{m-1}, orthogonalized (basis dtype)
    breakdown: bool  # beta[m-1] ~ 0: the basis spans an invariant subspace
    n_matvecs: int

    @property
    def n_steps(self) -> int:
        return int(self.alpha.numel())

    def tridiagonal(self) -> torch.Tensor:
        """T_m = Q_m^T A Q_m, (m, m) float64."""
        m = self.n_steps
        off = self.beta[: m - 1]
        return torch.diag(self.alpha) + torch.diag(off, 1) + torch.diag(off, -1)


def _op_dtype(op: Any) -> torch.dtype:
    return op.dtype if isinstance(getattr(op, "dtype", None), torch.dtype) else torch.float64


def _op_device(op: Any) -> torch.device:
    return torch.device(getattr(op, "device", None) or "cpu")


def apply(op: Any, vector: torch.Tensor) -> torch.Tensor:
    """op @ vector in the operator's dtype, returned in the vector's dtype."""
    out = op @ vector.to(_op_dtype(op))
    if not torch.isfinite(out).all():
        raise FloatingPointError("the operator returned NaN/inf; check the model and data for NaN")
    return out.to(vector.dtype)


def apply_columns(op: Any, columns: torch.Tensor, block_elements: int = 1 << 27) -> torch.Tensor:
    """A @ each column, (n, m) -> (n, m), in the columns' dtype.

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


def random_vector(n: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Gaussian (n,) drawn by ``generator`` (on its own device), returned on ``device`` in ``dtype``."""
    return torch.randn(n, generator=generator, dtype=dtype, device=generator.device).to(device)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator on ``device``, so random vectors are drawn where they are used."""
    return torch.Generator(device=device).manual_seed(int(seed))


def lanczos(
    op: Any,
    n_steps: int,
    *,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    previous: LanczosRun | None = None,
    max_basis_bytes: int | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> LanczosRun:
    """Run (or continue ``previous`` up to) ``n_steps`` Lanczos steps with full reorthogonalization.

    Args:
        start: the first vector (normalized here); default: Gaussian from ``generator``.
        previous: a run to extend; its basis is extended in place (do not reuse
            ``previous`` afterwards).
        max_basis_bytes: bytes of basis kept in memory; later vectors are spilled
            to a memory-mapped file in ``spill_dir`` (default: all in memory).

    The basis is planned and checked before allocation (raises
    :class:`~normlens.curvature.memory.MemoryBudgetError` when it will not fit).
    On breakdown (beta ~ 0: an invariant subspace was found) the run continues
    from a fresh random vector orthogonal to the basis, with beta = 0, so T
    stays exact and block-diagonal.
    """
    op = as_operator(op)
    n = op.shape[0]
    device = _op_device(op)
    dtype = basis_dtype(_op_dtype(op))
    n_steps = min(int(n_steps), n)
    generator = generator or make_generator(device, 0)

    def fresh_vector(basis: LanczosBasis) -> torch.Tensor:
        for _ in range(10):
            v = basis.orthogonalize(random_vector(n, generator, dtype, device))
            if norm64(v) > 1e-6:
                return v / norm64(v)
        raise RuntimeError("could not extend the Krylov basis; the space is exhausted")

    if previous is None:
        check_plan(plan_basis(n, n_steps, dtype=dtype, device=device, max_basis_bytes=max_basis_bytes,
                              spill_dir=spill_dir))
        q = start if start is not None else random_vector(n, generator, dtype, device)
        q = q.to(device, dtype)
        if q.shape != (n,) or not norm64(q) > 0:
            raise ValueError(f"start vector must be a non-zero ({n},) tensor, got shape {tuple(q.shape)}")
        basis = LanczosBasis(n, dtype, device, max_bytes=max_basis_bytes, spill_dir=spill_dir)
        q_prev = None
        q = basis.append(q / norm64(q))
        alpha: list[float] = []
        beta: list[float] = []
        first, matvecs, residual, breakdown = 0, 0, None, False
    else:
        basis = previous.basis
        alpha, beta = previous.alpha.tolist(), previous.beta.tolist()
        first, matvecs = previous.n_steps, previous.n_matvecs
        residual, breakdown = previous.residual, previous.breakdown
        q_prev = basis.vector(first - 1)

    for j in range(first, n_steps):
        if j > 0:
            if breakdown:
                beta[j - 1] = 0.0
                q = basis.append(fresh_vector(basis))
            else:
                q = basis.append(residual.div_(beta[j - 1]))  # in place: no extra vector
        w = apply(op, q)  # A q_j
        matvecs += 1
        if j > 0 and beta[j - 1] != 0.0:
            w.sub_(q_prev, alpha=beta[j - 1])  # three-term recurrence: - beta_{j-1} q_{j-1}
        alpha.append(dot64(q, w))
        w.sub_(q, alpha=alpha[j])  # - alpha_j q_j
        w = basis.orthogonalize(w)  # full reorthogonalization against q_0 .. q_j
        beta.append(norm64(w))
        scale = max(max(abs(a) for a in alpha), max(abs(b) for b in beta), 1e-300)
        breakdown = beta[j] <= (1e-10 if dtype == torch.float64 else 1e-5) * scale
        residual, q_prev = w, q
    return LanczosRun(torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64),
                      basis, residual, breakdown, matvecs)


def _wanted(theta: torch.Tensor, k: int, which: str) -> tuple[list[int], list[str]]:
    """Indices into the ascending Ritz values ``theta`` for the wanted pairs, in output order."""
    m = theta.numel()
    largest = list(range(m - 1, m - 1 - k, -1))
    smallest = list(range(k))
    if which == "largest":
        return largest, ["largest"] * k
    if which == "smallest":
        return smallest, ["smallest"] * k
    if which == "both":
        return largest + smallest, ["largest"] * k + ["smallest"] * k
    order = torch.argsort(theta.abs(), descending=True, stable=True)[:k].tolist()  # "magnitude"
    return order, ["magnitude"] * k


def _check_k(k: Any, which: str, n: int) -> int:
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k_total = 2 * int(k) if which == "both" else int(k)
    if k_total >= n:
        limit = (n - 1) // 2 if which == "both" else n - 1
        raise ValueError(
            f"asked for {k_total} eigenpairs (k={k}, which={which!r}) of an operator of size {n}; "
            f"Lanczos gives at most k={limit} here (k must stay below the size n={n}); "
            "for every eigenvalue of a small operator use torch.linalg.eigh on the dense matrix"
        )
    return k_total


def _step_counts(n: int, k_total: int, n_steps: Any, max_steps: Any) -> tuple[int, int]:
    """(first run length, most steps): defaults max(2 k + 20, 30) and 4x that, at most n."""
    for name, value in (("n_steps", n_steps), ("max_steps", max_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    first = min(n, max(2 * k_total + 20, 30) if n_steps is None else int(n_steps))
    if first < k_total:
        raise ValueError(f"n_steps={first} is below the {k_total} pairs wanted")
    return first, min(n, max(first, 4 * first if max_steps is None else int(max_steps)))


def plan_eigenpairs(
    n: int,
    k: int = 5,
    *,
    which: str = "largest",
    n_steps: int | None = None,
    max_steps: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_basis_bytes: int | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> BasisPlan:
    """The memory :func:`compute_eigenpairs` will plan for its first run on an operator of size ``n``.

    Validates k (below n) and the step counts as ``compute_eigenpairs`` does, so a
    caller can refuse a request before building a model or an operator:
    ``check_plan(plan_eigenpairs(n, k, dtype=torch.float32))`` raises
    :class:`~normlens.curvature.memory.MemoryBudgetError` with the numbers; the
    plan's ``describe()`` is the one-line estimate.
    """
    k_total = _check_k(k, which, n)
    first, _ = _step_counts(n, k_total, n_steps, max_steps)
    # besides the basis: the operator's product buffers (2), then the larger of the Lanczos
    # working vectors (4) and the Ritz vectors with one product and one column (k_total + 2)
    return plan_basis(n, first, dtype=dtype, device=device, max_basis_bytes=max_basis_bytes,
                      spill_dir=spill_dir, work_vectors=2 + max(4, k_total + 2))


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
    max_basis_bytes: int | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> EigenResult:
    """The k extreme eigenpairs of a symmetric operator by Lanczos.

    "Top-k" here means the algebraically largest eigenvalues (``which="largest"``,
    the default): a Hessian's large negative eigenvalues are not among them.
    PyHessian's top-k are the largest in magnitude; ``which="magnitude"`` gives
    those, for comparisons.

    Args:
        op: a symmetric (n, n) tensor or an operator with ``shape``/``@``.
        k: pairs wanted (per end for "both"); k (2k for "both") must be below n.
        which: "largest" (algebraically largest, descending), "smallest"
            (ascending), "both" (k of each) or "magnitude" (largest |lambda|,
            by descending |lambda|).
        n_steps: first Lanczos run length; default max(2 k_total + 20, 30),
            at most n (k_total = 2k for "both").
        max_steps: extend the run (by half its length at a time) until every
            wanted pair converges or this many steps; default min(n, 4 * n_steps),
            lowered to what the memory (and ``max_basis_bytes`` spill space)
            allows. Pass ``max_steps=n_steps`` for a fixed cost.
        tol: a pair is converged when ||A y - theta y|| <= tol * max|theta|;
            default 1e-6 for float64 operators and 1e-4 otherwise.
        exact_residuals: compute ||A y - theta y|| with one more product per
            pair (default) instead of the Lanczos estimate |beta_m s_m|.
        warn: warn when a pair did not converge (the text is also ``result.warning``).
        max_basis_bytes: keep at most this many bytes of the basis in memory and
            spill the rest to a memory-mapped file in ``spill_dir``; default: all
            in memory. The plan is logged (logger "normlens.curvature") and
            checked before allocating: a basis that will not fit raises
            :class:`~normlens.curvature.memory.MemoryBudgetError` with the numbers.

    Returns:
        :class:`EigenResult`. Eigenvectors are unit vectors whose entry of largest
        magnitude is positive (a fixed sign, so runs can be compared); also as
        parameter-shaped tensors via ``eigenvector_params`` when ``op`` is a
        curvature operator.

    >>> A = torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64))
    >>> compute_eigenpairs(A, k=2).eigenvalues.round(8)
    array([40., 39.])
    """
    op = as_operator(op)
    n = op.shape[0]
    n_steps, max_steps = _step_counts(n, _check_k(k, which, n), n_steps, max_steps)
    if tol is None:
        tol = 1e-6 if _op_dtype(op) == torch.float64 else 1e-4
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    device, dtype = _op_device(op), basis_dtype(_op_dtype(op))

    # Plan the basis before allocating: the first run must fit; extensions stop where memory ends.
    plan = plan_eigenpairs(n, k, which=which, n_steps=n_steps, max_steps=max_steps, dtype=dtype,
                           device=device, max_basis_bytes=max_basis_bytes, spill_dir=spill_dir)
    check_plan(plan)
    room = max_vectors(dataclasses.replace(plan, n_vectors=max_steps))
    capped = room is not None and room < max_steps
    if capped:
        logger.info("Lanczos extensions capped at %d steps (memory for the basis)", max(room, n_steps))
        max_steps = max(room, n_steps)

    generator = make_generator(device, seed)
    run = lanczos(op, n_steps, generator=generator, max_basis_bytes=max_basis_bytes, spill_dir=spill_dir)
    while True:
        theta, s = torch.linalg.eigh(run.tridiagonal())  # ascending
        idx, ends = _wanted(theta, int(k), which)
        scale = float(theta.abs().max()) or 1.0
        estimates = (run.beta[-1] * s[-1, idx]).abs()  # |beta_m s_{m,i}|
        if run.n_steps >= max_steps or bool((estimates <= tol * scale).all()):
            break
        run = lanczos(op, min(max_steps, run.n_steps + max(run.n_steps // 2, 10)),
                      generator=generator, previous=run)

    # Ritz vectors, written straight into the result's host array when the basis is on the CPU
    host = np.empty((n, len(idx)), dtype=np.float32 if dtype == torch.float32 else np.float64)
    vectors = run.basis.combine(s[:, idx], out=torch.from_numpy(host) if device.type == "cpu" else None)
    n_steps_taken, matvecs = run.n_steps, run.n_matvecs
    del run  # the basis is no longer needed: free it before the residual products
    vectors /= torch.linalg.vector_norm(vectors, dim=0, keepdim=True, dtype=torch.float64).to(vectors.dtype)
    # sign convention: the entry of largest magnitude is positive
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    vectors *= torch.where(signs == 0, torch.ones_like(signs), signs)
    values = theta[idx]
    if exact_residuals:  # ||A y - theta y||, one column at a time (one extra vector of memory)
        norms = []
        for i in range(len(idx)):
            product = apply(op, vectors[:, i])
            product.sub_(vectors[:, i], alpha=float(values[i]))
            norms.append(norm64(product))
            del product
        residuals = torch.tensor(norms, dtype=torch.float64)
        matvecs += len(idx)
    else:
        residuals = estimates  # the Lanczos estimates of the final run, from the loop above
    if device.type != "cpu":
        torch.from_numpy(host).copy_(vectors)
    del vectors
    host.flags.writeable = False  # handed to the result without a copy
    converged = residuals <= tol * scale
    warning = ""
    if not bool(converged.all()):
        bad = [f"{float(values[i]):.6g} (residual {float(residuals[i]):.2e})"
               for i in range(len(idx)) if not converged[i]]
        warning = (
            f"Lanczos did not converge after {n_steps_taken} steps for {len(bad)} of {len(idx)} "
            f"eigenpairs: {', '.join(bad)}; tolerance {tol:.1e} x {scale:.3g}. "
            + ("The basis memory allowed no more steps; pass max_basis_bytes to spill to disk. "
               if capped and n_steps_taken >= max_steps else "")
            + "Raise n_steps/max_steps (or tol) for reliable values."
        )
        if warn:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
    return EigenResult(
        eigenvalues=values.cpu().numpy(),
        eigenvectors=host,
        residuals=residuals.cpu().numpy(),
        converged=converged.cpu().numpy(),
        ends=tuple(ends),
        n_steps=n_steps_taken,
        n_matvecs=matvecs,
        tol=float(tol),
        seed=seed,
        param_names=tuple(getattr(op, "param_names", ())),
        param_shapes=tuple(tuple(s) for s in getattr(op, "param_shapes", ())),
        which=which,
        warning=warning,
        excluded=str(getattr(op, "excluded", "")),
    )


def ritz_values_and_weights(run: LanczosRun) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature from one run: Ritz values (nodes) and squared first components (weights)."""
    theta, s = torch.linalg.eigh(run.tridiagonal())
    weights = s[0].pow(2)
    return theta.cpu().numpy(), (weights / weights.sum()).cpu().numpy()


__all__ = ["LanczosRun", "lanczos", "compute_eigenpairs", "plan_eigenpairs", "ritz_values_and_weights", "apply",
           "WHICH"]
