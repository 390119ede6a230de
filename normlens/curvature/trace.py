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

from normlens.curvature.lanczos import _op_device, apply_columns
from normlens.curvature.operators import as_operator
from normlens.curvature.results import TraceResult

TRACE_METHODS = ("hutchinson", "hutch++")


def _rademacher(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(n, count) of +-1, float64."""
    return torch.randint(0, 2, (n, count), generator=generator, dtype=torch.float64) * 2 - 1


def estimate_trace(
    op: Any, n_matvecs: int = 60, *, method: str = "hutch++", seed: int = 0
) -> TraceResult:
    """Estimate tr(A) of a symmetric operator with ``n_matvecs`` products.

    Args:
        op: an (n, n) tensor or operator with ``shape``/``@``.
        n_matvecs: products to spend (Hutch++ needs at least 3 and uses a
            multiple of 3: m/3 for the sketch, m/3 to project, m/3 for the rest).
        method: "hutch++" (default) or "hutchinson".
        seed: seeds the random probes.

    Returns:
        :class:`TraceResult` with ``estimate`` and ``std_error``.

    >>> r = estimate_trace(torch.diag(torch.arange(1.0, 7.0)), 18, method="hutch++")
    >>> round(r.estimate, 6)
    21.0
    """
    op = as_operator(op)
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    n = op.shape[0]
    generator = torch.Generator().manual_seed(seed)
    device = _op_device(op)
    if method == "hutchinson":
        if n_matvecs < 2:
            raise ValueError(f"Hutchinson needs n_matvecs >= 2 for a standard error, got {n_matvecs}")
        probes = _rademacher(n, n_matvecs, generator).to(device)
        samples = (probes * apply_columns(op, probes)).sum(0).cpu().numpy()  # v_i^T A v_i
        return TraceResult(
            estimate=float(samples.mean()),
            std_error=float(samples.std(ddof=1) / math.sqrt(len(samples))),
            method=method, n_matvecs=n_matvecs, n=n, seed=seed, samples=samples,
        )

    third = n_matvecs // 3
    if third < 1:
        raise ValueError(f"Hutch++ needs n_matvecs >= 3, got {n_matvecs}")
    sketch = min(third, n)
    S = _rademacher(n, sketch, generator).to(device)  # (n, sketch)
    Q, _ = torch.linalg.qr(apply_columns(op, S))  # (n, sketch) orthonormal basis of range(A S)
    exact = float(torch.trace(Q.T @ apply_columns(op, Q)))  # tr(Q^T A Q)
    used = 2 * sketch
    remaining = n_matvecs - used
    if sketch >= n or remaining < 2:
        # Q spans the whole space (or no products left): the exact part is the trace.
        return TraceResult(
            estimate=exact, std_error=0.0 if sketch >= n else math.nan, method=method,
            n_matvecs=used, n=n, seed=seed, samples=np.zeros(0), exact_part=exact,
        )
    G = _rademacher(n, remaining, generator).to(device)
    G = G - Q @ (Q.T @ G)  # (I - QQ^T) G, (n, remaining)
    samples = (G * apply_columns(op, G)).sum(0).cpu().numpy()
    return TraceResult(
        estimate=exact + float(samples.mean()),
        std_error=float(samples.std(ddof=1) / math.sqrt(len(samples))),
        method=method, n_matvecs=n_matvecs, n=n, seed=seed, samples=samples, exact_part=exact,
    )
