"""Empirical spectral densities (ESD) of weight matrices and their heavy-tail exponent.

For a weight matrix W oriented N x M with N >= M, the ESD is the set of M
eigenvalues of X = W^T W / N (the squared singular values over N; Martin &
Mahoney 2021). Its tail is fitted by a power law p(x) ~ x^-alpha for x >= xmin
with the maximum-likelihood estimate
    alpha = 1 + n_tail / sum_{x_i >= xmin} ln(x_i / xmin).
xmin is chosen one of two ways:
* "ks": the xmin minimizing the Kolmogorov-Smirnov distance between the tail's
  empirical CDF and 1 - (x / xmin)^(1 - alpha) (Clauset, Shalizi, Newman 2009);
* "median": xmin fixed at the median eigenvalue (the ``xmin_mid`` rule of the
  FARMS authors' code), so the upper half of the spectrum is the tail.

FARMS (*Eigenspectrum Analysis of Neural Networks without Aspect Ratio Bias*):
the ESD's shape, and so alpha, depends on the matrix's aspect ratio. As the
authors compute it, fixed-size windows (100 rows x 200 columns by default, of
the weight as ``nn.Linear`` stores it, out x in) are taken on a regular grid of
at most 10 x 10 positions (row step (rows - 100) // 9, column step
(cols - 200) // 9, the last window flush with the edge), the eigenvalues of all
windows are pooled, and alpha is fitted with xmin at the median ("median").
Matrices of any shape are then compared on the same footing: i.i.d. entries give
the same alpha for a square and a tall matrix, while the plain ESD's alpha moves
with the aspect ratio. A matrix smaller than the window (where the authors' code
would slice from negative offsets) gets the largest window of the same aspect
ratio that fits; ``window_shapes`` in the result records it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from normlens.parameters import ParamSelector, select_parameters
from normlens.curvature.results import WeightSpectraResult

METHODS = ("esd", "farms")
XMIN_RULES = ("median", "ks")
FARMS_WINDOW = (100, 200)  # rows x cols of each window (the authors' num_row_samples=100, Q_ratio=2)
FARMS_MAX_WINDOWS = 10  # positions per dimension (the authors' sampling_ops_per_dim)


def esd(matrix: torch.Tensor) -> np.ndarray:
    """Ascending eigenvalues of W^T W / N (N the larger dimension), via singular values."""
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(matrix.shape)}")
    w = matrix.detach().to(torch.float64)
    n = max(w.shape)
    values = torch.linalg.svdvals(w).pow(2) / n  # (min(N, M),)
    return np.sort(values.cpu().numpy())


def _check_window(window: tuple[int, int], max_windows: int) -> tuple[int, int]:
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in window)):
        raise ValueError(f"window must be (rows, cols) of positive integers, got {window!r}")
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
        raise ValueError(f"max_windows must be a positive integer, got {max_windows!r}")
    return int(window[0]), int(window[1])


def farms_window_shape(shape: tuple[int, int], window: tuple[int, int] = FARMS_WINDOW) -> tuple[int, int]:
    """The window used on a matrix of ``shape``: ``window`` if it fits, else the largest
    window with the same aspect ratio that does (at least 1 x 1)."""
    rows, cols = shape
    win_rows, win_cols = window
    scale = min(1.0, rows / win_rows, cols / win_cols)
    if scale == 1.0:
        return win_rows, win_cols
    fit_rows = max(1, math.floor(win_rows * scale))
    return fit_rows, max(1, min(cols, math.floor(fit_rows * win_cols / win_rows)))


def farms_window_starts(size: int, window: int, max_windows: int = FARMS_MAX_WINDOWS) -> list[int]:
    """Start offsets along one dimension: step (size - window) // (max_windows - 1), at most
    ``max_windows`` positions, each window inside the matrix."""
    if max_windows == 1 or size <= window:
        return [0]
    step = max(1, (size - window) // (max_windows - 1))
    count = min(max_windows, (size - window) // step + 1)
    return [min(i * step, size - window) for i in range(count)]


def farms_esd(matrix: torch.Tensor, *, window: tuple[int, int] = FARMS_WINDOW,
              max_windows: int = FARMS_MAX_WINDOWS) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Pooled eigenvalues of the FARMS windows of ``matrix`` (rows x cols as ``nn.Linear`` stores it).

    Each window B (r x c) contributes the squared singular values of B over max(r, c)
    (the ESD convention of :func:`esd`; alpha does not depend on the scale).

    Returns:
        (ascending pooled eigenvalues, number of windows, window shape used).
    """
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(matrix.shape)}")
    window = _check_window(window, max_windows)
    w = matrix.detach().to(torch.float64)
    win_rows, win_cols = farms_window_shape(tuple(w.shape), window)
    pooled = []
    for r in farms_window_starts(w.shape[0], win_rows, max_windows):
        for c in farms_window_starts(w.shape[1], win_cols, max_windows):
            block = w[r:r + win_rows, c:c + win_cols]  # (win_rows, win_cols)
            pooled.append(torch.linalg.svdvals(block).pow(2) / max(win_rows, win_cols))
    return np.sort(torch.cat(pooled).cpu().numpy()), len(pooled), (win_rows, win_cols)


def _ks_distance(tail: np.ndarray, alpha: float) -> float:
    """Two-sided KS distance between the sorted tail's empirical CDF and the fitted power law."""
    n_tail = tail.size
    fitted = 1.0 - (tail / tail[0]) ** (1.0 - alpha)  # (n_tail,) model CDF
    ranks = np.arange(n_tail)
    return float(max(np.abs(ranks / n_tail - fitted).max(), np.abs((ranks + 1) / n_tail - fitted).max()))


def fit_power_law(eigenvalues: np.ndarray, *, xmin: str = "ks",
                  min_tail: int = 5) -> tuple[float, float, float, int]:
    """MLE power-law tail fit, alpha = 1 + n / sum ln(x_i / xmin) over the x_i >= xmin.

    Args:
        xmin: "ks" (the xmin minimizing the KS distance, Clauset et al. 2009) or
            "median" (the eigenvalue at index floor(N / 2) of the ascending
            spectrum, the FARMS authors' ``xmin_mid``).
        min_tail: fewest eigenvalues a tail may hold.

    Returns:
        (alpha, xmin, ks_distance, n_tail); NaNs and 0 when too few positive
        eigenvalues exist.

    >>> x = (1 - np.linspace(0, 0.999, 2000)) ** (-1 / 2.0)  # Pareto quantiles, alpha = 3
    >>> round(fit_power_law(x)[0], 1)
    3.0
    """
    if xmin not in XMIN_RULES:
        raise ValueError(f"xmin must be one of {XMIN_RULES}, got {xmin!r}")
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[np.isfinite(x)]
    x = x[x > x.max(initial=0.0) * 1e-12] if x.size else x
    if x.size < min_tail:
        return math.nan, math.nan, math.nan, 0
    n = x.size
    logs = np.log(x)
    if xmin == "median":
        i = n // 2
        n_tail = n - i
        denom = float(logs[i:].sum() - n_tail * logs[i])
        if n_tail < min_tail or denom <= 0:
            return math.nan, math.nan, math.nan, 0
        alpha = 1.0 + n_tail / denom
        return float(alpha), float(x[i]), _ks_distance(x[i:], alpha), int(n_tail)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum_{j >= i} ln x_j
    best = (math.inf, math.nan, math.nan, 0)
    for i in range(n - min_tail + 1):
        n_tail = n - i
        denom = suffix[i] - n_tail * logs[i]
        if denom <= 0:
            continue
        alpha = 1.0 + n_tail / denom
        ks = _ks_distance(x[i:], alpha)
        if ks < best[0]:
            best = (ks, alpha, float(x[i]), n_tail)
    ks, alpha, xmin_value, n_tail = best
    if not math.isfinite(ks):
        return math.nan, math.nan, math.nan, 0
    return float(alpha), xmin_value, float(ks), int(n_tail)


def _conv1d_weights(model: nn.Module) -> set[int]:
    """ids of weights stored (in, out), as Hugging Face's ``Conv1D`` (GPT-2) keeps them."""
    return {id(m.weight) for m in model.modules() if type(m).__name__ == "Conv1D" and hasattr(m, "weight")}


def compute_weight_spectra(
    model: nn.Module,
    *,
    params: ParamSelector = "weights",
    method: str = "esd",
    xmin: str | None = None,
    window: tuple[int, int] = FARMS_WINDOW,
    max_windows: int = FARMS_MAX_WINDOWS,
    min_tail: int = 5,
) -> WeightSpectraResult:
    """ESD and power-law alpha of every selected weight matrix (2-D parameters only).

    Args:
        params: parameter subset (see ``select_parameters``); default every
            matrix ("weights"). 1-D parameters are skipped.
        method: "esd" (the whole matrix) or "farms" (pooled fixed-size windows,
            as the FARMS authors compute it; see the module docstring).
        xmin: "ks" or "median" (see :func:`fit_power_law`); default "median" for
            "farms" (the authors' rule) and "ks" for "esd". FARMS windows with
            "ks" are a variant; the result records the rule.
        window, max_windows: FARMS window (rows, cols) and positions per dimension.
        min_tail: fewest eigenvalues a tail fit may use.

    Weights are taken as ``nn.Linear`` stores them (out x in); GPT-2's ``Conv1D``
    weights, stored (in, out), are transposed first. The default selection also
    holds embedding matrices, which the FARMS authors' code skips (it reads
    ``nn.Linear`` and ``nn.Conv2d`` layers only); pass ``params`` to match it. Matrices with NaN/inf
    entries (a diverged model) get an empty ESD and alpha NaN.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    xmin = xmin or ("median" if method == "farms" else "ks")
    if xmin not in XMIN_RULES:
        raise ValueError(f"xmin must be one of {XMIN_RULES}, got {xmin!r}")
    window = _check_window(window, max_windows)
    by_key = dict(model.named_parameters())
    transposed = _conv1d_weights(model)
    infos = [info for info in select_parameters(model, params) if len(info.shape) == 2]
    if not infos:
        raise ValueError(f"params={params!r} selects no 2-D weight matrix")
    names, shapes, chunks, fits, n_windows, window_shapes = [], [], [], [], [], []
    for info in infos:
        weight = by_key[info.key].detach()
        if id(by_key[info.key]) in transposed:
            weight = weight.T  # (out, in)
        count, used = 1, tuple(weight.shape)
        if not torch.isfinite(weight).all():
            values, count, used = np.zeros(0), 0, (0, 0)
        elif method == "farms":
            values, count, used = farms_esd(weight, window=window, max_windows=max_windows)
        else:
            values = esd(weight)
        names.append(info.name)
        shapes.append(info.shape)
        chunks.append(values)
        fits.append(fit_power_law(values, xmin=xmin, min_tail=min_tail))
        n_windows.append(int(count))
        window_shapes.append(tuple(int(v) for v in used))
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
        method=method,
        xmin_rule=xmin,
        window=window if method == "farms" else (0, 0),
        max_windows=int(max_windows) if method == "farms" else 0,
        n_windows=tuple(n_windows),
        window_shapes=tuple(window_shapes),
    )
