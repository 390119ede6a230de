"""Plots of curvature results: eigenvalue bars, spectral densities, per-block heatmap."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from normlens.curvature.results import BlockSpectrumResult, DensityResult, EigenResult  # noqa: E402


def _axes(ax: Axes | None, size=(6, 3.5)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size)[1]


def plot_eigenvalues(results: Mapping[str, EigenResult] | EigenResult, ax: Axes | None = None) -> Axes:
    """Grouped bars: the top eigenvalues of each model (hatched when not converged)."""
    if isinstance(results, EigenResult):
        results = {"model": results}
    ax = _axes(ax)
    rows = [
        {"model": name, "rank": i + 1, "eigenvalue": float(v), "converged": bool(c)}
        for name, r in results.items()
        for i, (v, c) in enumerate(zip(r.eigenvalues, r.converged))
    ]
    frame = pd.DataFrame(rows)
    if frame.empty:
        ax.text(0.5, 0.5, "no eigenvalues", ha="center", transform=ax.transAxes)
        return ax
    sns.barplot(frame, x="rank", y="eigenvalue", hue="model", ax=ax)
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("Hessian eigenvalue")
    ax.set_title("Top Hessian eigenvalues")
    return ax


def plot_densities(results: Mapping[str, DensityResult] | DensityResult, ax: Axes | None = None,
                   floor: float = 1e-8) -> Axes:
    """Spectral densities of several models on one axis, density on a log scale."""
    if isinstance(results, DensityResult):
        results = {"model": results}
    ax = _axes(ax)
    for name, r in results.items():
        ax.plot(r.grid, np.maximum(r.density, floor), label=f"{name} (re={r.re:.2g}, Kh={r.kh:.2g})")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (SLQ, Gaussian-smoothed)")
    ax.legend(fontsize="small")
    ax.set_title("Hessian spectral density")
    return ax


def plot_block_heatmap(results: Sequence[BlockSpectrumResult], ax: Axes | None = None) -> Axes:
    """Models x blocks heatmap of the top eigenvalue of each block's Hessian (log colour)."""
    ax = _axes(ax, size=(8, 0.6 * max(len(results), 2) + 1.5))
    frame = pd.DataFrame(
        {r.model: pd.Series(r.top_eigenvalues, index=list(r.blocks)) for r in results}
    ).T  # (models, blocks)
    values = frame.to_numpy(dtype=float)
    positive = np.where(values > 0, values, np.nan)
    sns.heatmap(np.log10(positive), ax=ax, annot=values, fmt=".2g", cmap="viridis",
                xticklabels=list(frame.columns), yticklabels=list(frame.index),
                cbar_kws={"label": "log10 top eigenvalue"})
    ax.set_title("Top eigenvalue of the Hessian restricted to each block")
    ax.tick_params(axis="x", rotation=45)
    return ax
