"""Empirical spectral densities (ESD) of weight matrices and their heavy-tail exponent.

For a weight matrix W oriented N x M with N >= M, the ESD is the set of M
eigenvalues of X = W^T W / N (the squared singular values over N; Martin &
Mahoney 2021). Its tail is fitted by a power law p(x) ~ x^-alpha for x >= xmin
with the maximum-likelihood estimate
    alpha = 1 + n_tail / sum_{x_i >= xmin} ln(x_i / xmin),
choosing xmin to minimize the Kolmogorov-Smirnov distance between the tail's
empirical CDF and the fitted one, 1 - (x / xmin)^(1 - alpha) (Clauset, Shalizi,
Newman 2009).

FARMS (*Eigenspectrum Analysis of Neural Networks without Aspect Ratio Bias*):
the ESD's shape, and so alpha, depends on the aspect ratio N/M. With
``farms=True`` every matrix is cut into submatrices of one fixed aspect ratio
(rows/cols = ``aspect_ratio``, windows spread evenly, overlapping where the
sizes do not divide), each submatrix's ESD (B^T B / rows) is computed and the
pooled eigenvalues are fitted, so matrices of different shapes are compared on
the same footing.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from normlens.parameters import ParamSelector, select_parameters
from normlens.curvature.results import WeightSpectraResult


def esd(matrix: torch.Tensor) -> np.ndarray:
    """Ascending eigenvalues of W^T W / N (N the larger dimension), via singular values."""
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(matrix.shape)}")
    w = matrix.detach().to(torch.float64)
    n = max(w.shape)
    values = torch.linalg.svdvals(w).pow(2) / n  # (min(N, M),)
    return np.sort(values.cpu().numpy())


def farms_esd(matrix: torch.Tensor, aspect_ratio: float = 1.0) -> np.ndarray:
    """Pooled ascending eigenvalues of fixed-aspect-ratio submatrices (FARMS)."""
    if aspect_ratio < 1:
        raise ValueError(f"aspect_ratio (rows/cols, >= 1) must be at least 1, got {aspect_ratio}")
    w = matrix.detach().to(torch.float64)
    if w.shape[0] < w.shape[1]:
        w = w.T  # (N, M), N >= M
    n_rows, n_cols = w.shape
    cols = min(n_cols, max(1, int(n_rows / aspect_ratio)))
    rows = min(n_rows, max(1, round(aspect_ratio * cols)))
    row_starts = np.linspace(0, n_rows - rows, math.ceil(n_rows / rows)).round().astype(int)
    col_starts = np.linspace(0, n_cols - cols, math.ceil(n_cols / cols)).round().astype(int)
    pooled = []
    for r in row_starts:
        for c in col_starts:
            block = w[r : r + rows, c : c + cols]  # (rows, cols)
            pooled.append(torch.linalg.svdvals(block).pow(2) / rows)
    return np.sort(torch.cat(pooled).cpu().numpy())


def fit_power_law(eigenvalues: np.ndarray, *, min_tail: int = 5) -> tuple[float, float, float, int]:
    """MLE power-law tail fit with xmin minimizing the KS distance.

    Returns:
        (alpha, xmin, ks_distance, n_tail); NaNs and 0 when fewer than
        ``min_tail`` positive eigenvalues exist.

    >>> x = (1 - np.linspace(0, 0.999, 2000)) ** (-1 / 2.0)  # Pareto quantiles, alpha = 3
    >>> round(fit_power_law(x)[0], 1)
    3.0
    """
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[np.isfinite(x)]
    x = x[x > x.max(initial=0.0) * 1e-12] if x.size else x
    if x.size < min_tail:
        return math.nan, math.nan, math.nan, 0
    n = x.size
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum_{j >= i} ln x_j
    best = (math.inf, math.nan, math.nan, 0)
    for i in range(n - min_tail + 1):
        n_tail = n - i
        denom = suffix[i] - n_tail * logs[i]
        if denom <= 0:
            continue
        alpha = 1.0 + n_tail / denom
        tail = x[i:]
        fitted = 1.0 - (tail / x[i]) ** (1.0 - alpha)  # (n_tail,) model CDF
        ranks = np.arange(n_tail)
        ks = max(np.abs(ranks / n_tail - fitted).max(), np.abs((ranks + 1) / n_tail - fitted).max())
        if ks < best[0]:
            best = (ks, alpha, float(x[i]), n_tail)
    ks, alpha, xmin, n_tail = best
    if not math.isfinite(ks):
        return math.nan, math.nan, math.nan, 0
    return float(alpha), xmin, float(ks), int(n_tail)


def compute_weight_spectra(
    model: nn.Module,
    *,
    params: ParamSelector = "weights",
    farms: bool = False,
    aspect_ratio: float = 1.0,
    min_tail: int = 5,
) -> WeightSpectraResult:
    """ESD and power-law alpha of every selected weight matrix (2-D parameters only).

    Args:
        params: parameter subset (see ``select_parameters``); default every
            matrix ("weights"). 1-D parameters are skipped.
        farms: pool fixed-aspect-ratio submatrices (FARMS) instead of the whole matrix.
        aspect_ratio: rows/cols of the FARMS submatrices.
        min_tail: fewest eigenvalues a tail fit may use.

    Matrices with NaN/inf entries (a diverged model) get an empty ESD and alpha NaN.
    """
    by_key = dict(model.named_parameters())
    infos = [info for info in select_parameters(model, params) if len(info.shape) == 2]
    if not infos:
        raise ValueError(f"params={params!r} selects no 2-D weight matrix")
    names, shapes, chunks, fits = [], [], [], []
    for info in infos:
        weight = by_key[info.key].detach()
        if torch.isfinite(weight).all():
            values = farms_esd(weight, aspect_ratio) if farms else esd(weight)
        else:
            values = np.zeros(0)
        names.append(info.name)
        shapes.append(info.shape)
        chunks.append(values)
        fits.append(fit_power_law(values, min_tail=min_tail))
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    return WeightSpectraResult(
        names=tuple(names),
        shapes=tuple(shapes),
        eigenvalues=np.concatenate(chunks),  # never empty: infos is checked above
        offsets=offsets,
        alphas=np.array([f[0] for f in fits]),
        xmins=np.array([f[1] for f in fits]),
        ks_distances=np.array([f[2] for f in fits]),
        n_tail=np.array([f[3] for f in fits], dtype=np.int64),
        farms=farms,
        aspect_ratio=float(aspect_ratio) if farms else 0.0,
    )
