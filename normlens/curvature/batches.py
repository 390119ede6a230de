"""Curvature summaries per batch and for the average over batches, with their spread.

Top Hessian eigenvalues and the LLA criteria re and Kh (see
:mod:`normlens.curvature.density`) computed on one small batch depend on that
batch and, for Kh, on the random SLQ probe: 1 probe x 14 Lanczos steps on 4 x 32
tokens gave Kh from 0.23 to 1.68 for one model over 5 seeds. This module
computes every summary on each batch (its own probe seed) and on the operator of
the weighted average loss over all batches, and reports the standard error of
the per-batch values, s / sqrt(B) (Efron & Tibshirani 1993 for the bootstrap
intervals of :meth:`BatchCurvatureResult.summary`).

The two answer different questions: the averaged operator's eigenvalue is the
curvature of the loss over all the data; the per-batch values show how much a
one-batch estimate moves. By convexity of lambda_max, the mean of the per-batch
top eigenvalues is at least the top eigenvalue of the averaged Hessian.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch.nn as nn

from normlens.curvature.density import estimate_density
from normlens.curvature.lanczos import compute_eigenpairs
from normlens.curvature.operators import HessianOperator, LossFn, _as_batches, _batch_weights
from normlens.curvature.results import BatchCurvatureResult
from normlens.parameters import ParamSelector, check_finite_weights, find_unused_parameters
from normlens.uncertainty import standard_error


def _spread_warnings(result_arrays: dict[str, np.ndarray], max_relative_error: float) -> list[str]:
    """One phrase per metric whose standard error across batches exceeds the allowed share of its mean."""
    notes = []
    for name, values in result_arrays.items():
        finite = values[np.isfinite(values)]
        if finite.size < 2:
            continue
        se, mean = standard_error(finite), float(finite.mean())
        relative = se / abs(mean) if mean != 0 else (math.inf if se > 0 else 0.0)
        if relative > max_relative_error:
            notes.append(f"{name} = {mean:.4g} ± {se:.2g} (range {finite.min():.4g} to {finite.max():.4g})")
    return notes


def estimate_batch_curvature(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    k: int = 3,
    which: str = "largest",
    n_steps: int | None = None,
    max_steps: int | None = None,
    tol: float | None = None,
    density_probes: int = 1,
    density_steps: int = 14,
    params: ParamSelector = None,
    weights: Sequence[float] | None = None,
    include_average: bool = True,
    max_relative_error: float = 0.1,
    method: str = "auto",
    seed: int = 0,
    max_basis_bytes: int | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> BatchCurvatureResult:
    """Top eigenvalues, re and Kh on every batch and on the average over batches, with their spread.

    Args:
        model, data, loss_fn, params, weights, method: as :class:`HessianOperator`;
            ``data`` is a list or loader of batches (read once). Parameters the
            forward does not use are found once and left out everywhere.
        k, which, n_steps, max_steps, tol: as :func:`compute_eigenpairs`
            ("largest" = algebraically largest).
        density_probes, density_steps: SLQ probes and Lanczos steps per density,
            from which re and Kh are taken (:func:`estimate_density`).
        include_average: also compute everything on the operator of the weighted
            average loss over all batches (one more set of products per batch).
        max_relative_error: the standard error across batches, as a share of
            the mean, above which the result warns that a metric is not stable.
        seed: the average uses ``seed``, batch b uses ``seed + 1 + b`` (so the
            per-batch spread includes the SLQ probe's randomness, as a one-batch
            estimate would).

    Returns:
        :class:`BatchCurvatureResult`: per-batch arrays, the averaged operator's
        values, ``converged`` (every eigenpair met its residual tolerance) and
        ``warning`` (non-convergence, too few batches, unstable metrics; "" when
        none). ``summary()`` gives means, standard errors and bootstrap intervals.
    """
    if not 0 < max_relative_error:
        raise ValueError(f"max_relative_error must be positive, got {max_relative_error!r}")
    batches = _as_batches(data)
    batch_weights = _batch_weights(batches, weights)
    check_finite_weights(model)
    unused = find_unused_parameters(model, batches[0], loss_fn)
    common = dict(params=params, method=method, unused=unused)
    eigen_kw = dict(k=k, which=which, n_steps=n_steps, max_steps=max_steps, tol=tol, warn=False,
                    max_basis_bytes=max_basis_bytes, spill_dir=spill_dir)
    density_kw = dict(n_probes=density_probes, n_steps=density_steps, max_basis_bytes=max_basis_bytes,
                      spill_dir=spill_dir)

    def summaries(op: HessianOperator, run_seed: int):
        eigen = compute_eigenpairs(op, seed=run_seed, **eigen_kw)
        density = estimate_density(op, seed=run_seed, **density_kw)
        return eigen, density

    per_batch, excluded = [], ""
    for b, batch in enumerate(batches):
        op = HessianOperator(model, batch, loss_fn, **common)
        excluded = op.excluded
        per_batch.append(summaries(op, seed + 1 + b))
        del op  # frees its kept graph before the next batch
    average = None
    if include_average:
        average = summaries(HessianOperator(model, batches, loss_fn, weights=batch_weights, **common), seed)

    eigen0 = per_batch[0][0]
    k_total = len(eigen0.eigenvalues)
    nan_k = np.full(k_total, np.nan)
    eigenvalues = np.stack([e.eigenvalues for e, _ in per_batch])  # (B, k_total)
    residuals = np.stack([e.residuals for e, _ in per_batch])
    eigen_converged = np.stack([e.converged for e, _ in per_batch])
    re = np.array([d.re for _, d in per_batch])
    kh = np.array([d.kh for _, d in per_batch])
    avg_converged = average[0].converged if average else np.ones(k_total, dtype=bool)

    notes = []
    n_bad = int((~eigen_converged.all(1)).sum())
    if n_bad:
        notes.append(
            f"eigenpairs did not converge on {n_bad} of {len(batches)} batches (largest residual "
            f"{float(residuals.max()):.2e}; raise n_steps/max_steps)"
        )
    if average and not average[0].all_converged:
        notes.append(f"eigenpairs of the averaged operator did not converge ({average[0].warning})")
    if len(batches) < 2:
        notes.append("one batch: no standard error across batches; pass a list or loader of several batches")
    labels = BatchCurvatureResult.eigenvalue_labels(eigen0.ends)
    arrays = {label: eigenvalues[:, i] for i, label in enumerate(labels)}
    arrays.update(re=re, kh=kh)
    unstable = _spread_warnings(arrays, max_relative_error)
    if unstable:
        notes.append(
            f"unstable across batches (standard error > {max_relative_error:.0%} of the mean): "
            + "; ".join(unstable) + "; use more or larger batches, more probes or steps"
        )
    return BatchCurvatureResult(
        eigenvalues=eigenvalues,
        residuals=residuals,
        eigen_converged=eigen_converged,
        re=re,
        kh=kh,
        batch_weights=np.array(batch_weights),
        average_eigenvalues=average[0].eigenvalues if average else nan_k,
        average_residuals=average[0].residuals if average else nan_k,
        average_converged=avg_converged,
        average_re=float(average[1].re) if average else math.nan,
        average_kh=float(average[1].kh) if average else math.nan,
        ends=tuple(eigen0.ends),
        which=which,
        n_steps=max(e.n_steps for e, _ in per_batch + ([average] if average else [])),
        density_probes=int(density_probes),
        density_steps=int(per_batch[0][1].n_steps),
        seed=int(seed),
        max_relative_error=float(max_relative_error),
        converged=bool(eigen_converged.all() and avg_converged.all()),
        warning="; ".join(notes),
        excluded=excluded,
    )
