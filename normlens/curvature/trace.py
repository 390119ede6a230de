"""Stochastic trace estimates with a standard error.

* Hutchinson (1989): tr(A) = E[v^T A v] for Rademacher v; the estimate is the
  mean of N samples and its standard error std / sqrt(N).
* Hutch++ (Meyer, Musco, Musco, Woodruff 2021): with m products, take
  Q = orth(A S) for m/3 random S, compute tr(Q^T A Q) exactly and estimate the
  rest, tr((I - QQ^T) A (I - QQ^T)), by Hutchinson with the last m/3 products.
  The top of the spectrum is captured exactly, so the variance drops sharply
  when a few eigenvalues dominate (as in neural-network Hessians). The standard
  error is that of the Hutchinson part (the exact part is fixed given Q).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from normlens.curvature.basis import dot64
from normlens.curvature.lanczos import _op_device, _op_dtype, apply_columns, make_generator
from normlens.curvature.memory import basis_dtype, check_plan, plan_basis
from normlens.curvature.operators import as_operator
from normlens.curvature.results import TraceResult

TRACE_METHODS = ("hutchinson", "hutch++")
NO_ERROR_ESTIMATE = "no error estimate (need >= 2 probes)"


def _rademacher(n: int, count: int, generator: torch.Generator, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """(n, count) of +-1 drawn by ``generator`` on its device, returned on ``device``."""
    signs = torch.randint(0, 2, (n, count), generator=generator, device=generator.device).to(device, dtype)
    return signs.mul_(2).sub_(1)


def _quadratic_forms(probes: torch.Tensor, products: torch.Tensor) -> np.ndarray:
    """v_i^T A v_i for each column, accumulated in float64: (count,)."""
    return np.array([dot64(probes[:, i], products[:, i]) for i in range(probes.shape[1])])


def _hutchinson(op: Any, n: int, count: int, generator, dtype, device, block: int) -> np.ndarray:
    """Quadratic forms of ``count`` Rademacher probes, ``block`` at a time (bounded memory)."""
    samples = []
    for start in range(0, count, block):
        probes = _rademacher(n, min(block, count - start), generator, dtype, device)
        samples.append(_quadratic_forms(probes, apply_columns(op, probes)))
    return np.concatenate(samples)


def _check_count(n_matvecs: Any, least: int, method: str) -> int:
    if isinstance(n_matvecs, bool) or not isinstance(n_matvecs, (int, np.integer)) or n_matvecs < least:
        raise ValueError(f"{method} needs an integer n_matvecs >= {least}, got {n_matvecs!r}")
    return int(n_matvecs)


def estimate_trace(
    op: Any, n_matvecs: int = 60, *, method: str = "hutch++", seed: int = 0, block: int = 8
) -> TraceResult:
    """Estimate tr(A) of a symmetric operator with ``n_matvecs`` products.

    Args:
        op: an (n, n) tensor or operator with ``shape``/``@``.
        n_matvecs: products to spend. Hutchinson: at least 1. Hutch++: at least
            3, used as m/3 for the sketch, m/3 to project, the rest for the
            Hutchinson part. A standard error needs at least 2 Hutchinson probes
            (Hutch++: n_matvecs >= 4, or a sketch spanning the whole space);
            with fewer the result says so (``has_std_error`` False, ``note``).
        method: "hutch++" (default) or "hutchinson".
        seed: seeds the random probes (drawn on the operator's device, in its dtype).
        block: Hutchinson probes multiplied at a time (memory: 2 x block vectors).

    Returns:
        :class:`TraceResult` with ``estimate``, ``std_error`` and ``describe()``.

    >>> r = estimate_trace(torch.diag(torch.arange(1.0, 7.0)), 18, method="hutch++")
    >>> round(r.estimate, 6)
    21.0
    """
    op = as_operator(op)
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    n = op.shape[0]
    device, dtype = _op_device(op), basis_dtype(_op_dtype(op))
    generator = make_generator(device, seed)

    def result(estimate: float, samples: np.ndarray, used: int, exact: float = 0.0,
               spans: bool = False) -> TraceResult:
        if spans:
            std_error, note = 0.0, "exact (the sketch spans the whole space)"
        elif len(samples) >= 2:
            std_error, note = float(samples.std(ddof=1) / math.sqrt(len(samples))), ""
        else:
            std_error, note = math.nan, NO_ERROR_ESTIMATE
        return TraceResult(estimate=float(estimate), std_error=std_error, method=method, n_matvecs=used,
                           n=n, seed=seed, samples=samples, exact_part=exact, note=note)

    if method == "hutchinson":
        n_matvecs = _check_count(n_matvecs, 1, method)
        check_plan(plan_basis(n, 0, dtype=dtype, device=device, work_vectors=2 * min(block, n_matvecs),
                              label="Hutchinson probes"))
        samples = _hutchinson(op, n, n_matvecs, generator, dtype, device, block)
        return result(samples.mean(), samples, n_matvecs)

    n_matvecs = _check_count(n_matvecs, 3, method)
    sketch = min(n_matvecs // 3, n)
    check_plan(plan_basis(n, 0, dtype=dtype, device=device, work_vectors=3 * sketch, label="Hutch++ sketch"))
    S = _rademacher(n, sketch, generator, dtype, device)  # (n, sketch)
    Q, _ = torch.linalg.qr(apply_columns(op, S))  # (n, sketch) orthonormal basis of range(A S)
    del S
    exact = float(sum(_quadratic_forms(Q, apply_columns(op, Q))))  # tr(Q^T A Q)
    used = 2 * sketch
    remaining = n_matvecs - used
    if sketch >= n or remaining < 1:
        # Q spans the whole space (the exact part is the trace) or no products are left
        return result(exact, np.zeros(0), used, exact, spans=sketch >= n)
    samples = []
    for start in range(0, remaining, block):
        G = _rademacher(n, min(block, remaining - start), generator, dtype, device)
        G -= Q @ (Q.T @ G)  # (I - QQ^T) G, (n, count)
        samples.append(_quadratic_forms(G, apply_columns(op, G)))
    samples = np.concatenate(samples)
    return result(exact + float(samples.mean()), samples, n_matvecs, exact)
