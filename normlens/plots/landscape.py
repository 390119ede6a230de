"""Plots of loss landscapes: 1-D curves, 2-D contours over a heatmap, 3-D surfaces, side by side.

Every plot writes the span and how the directions were made (normalization,
what 1-D parameters got) on the axes, and counts and shows NaN/inf cells
(diverged points) instead of dropping them silently.
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from normlens.landscape.results import LandscapeResult  # noqa: E402

BAD_COLOUR = "#d0d0d0"


def _caption(result: LandscapeResult) -> str:
    bad = result.n_nonfinite
    extra = f"; {bad} non-finite cell{'s' if bad != 1 else ''} (grey)" if bad else ""
    return result.describe() + extra


def _finite_range(results: Sequence[LandscapeResult], log: bool) -> tuple[float, float]:
    values = np.concatenate([np.asarray(r.loss, dtype=float).ravel() for r in results]) if results else np.zeros(0)
    values = values[np.isfinite(values)]
    if log:
        values = values[values > 0]
    if values.size == 0:
        return (0.1, 1.0) if log else (0.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo * 1.01 + 1e-12 if lo > 0 else lo + 1e-12
    return lo, hi


def colour_norm(results: Sequence[LandscapeResult], log: bool = False) -> colors.Normalize:
    """One colour scale over the finite values of all ``results`` (log: positive values)."""
    lo, hi = _finite_range(results, log)
    return colors.LogNorm(lo, hi) if log else colors.Normalize(lo, hi)


def plot_landscape_1d(result: LandscapeResult, ax: Optional[Axes] = None, *, axis: int = 0,
                      log: bool = False, label: Optional[str] = None, caption: bool = True) -> Axes:
    """Loss along one axis (for a 2-D result, the line through the origin along ``axis``).

    Non-finite points are drawn as red crosses at the top of the axes and counted in the legend.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    coords = np.asarray(result.coords[axis])
    loss = np.asarray(result.loss, dtype=float)
    if result.ndim == 2:
        origin = result.origin_index
        loss = loss[:, origin[1]] if axis == 0 else loss[origin[0], :]
    finite = np.isfinite(loss)
    name = label if label is not None else (result.model_name or "loss")
    line, = ax.plot(coords, np.where(finite, loss, np.nan), marker=".", label=name)
    if (~finite).any():
        ax.plot(coords[~finite], np.full((~finite).sum(), 1.0), "x", color="red",
                transform=ax.get_xaxis_transform(), clip_on=False,
                label=f"{name}: {(~finite).sum()} non-finite")
    ax.axvline(0.0, color="k", lw=0.6, ls=":")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(f"coefficient along d{axis + 1}")
    ax.set_ylabel("loss (log scale)" if log else "loss")
    if caption:
        ax.set_title(_caption(result), fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    ax.legend(fontsize=8)
    return ax


def plot_landscape_2d(result: LandscapeResult, ax: Optional[Axes] = None, *, log: bool = False,
                      norm: Optional[colors.Normalize] = None, levels: int = 12, colorbar: bool = True,
                      cmap: str = "viridis", trajectory: bool = True, caption: bool = True) -> Axes:
    """Contour lines over a filled heatmap of f(a, b); non-finite cells grey and counted.

    ``norm`` fixes the colour scale (pass :func:`colour_norm` over several results to share it).
    A PCA result's trajectory (``info["trajectory"]``) is drawn on top.
    """
    if result.ndim != 2:
        raise ValueError(f"plot_landscape_2d needs a 2-D result, got {result.ndim}-D; use plot_landscape_1d")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    x, y = (np.asarray(c) for c in result.coords)
    z = np.asarray(result.loss, dtype=float).T  # (n_y, n_x): rows are b, columns a
    bad = ~np.isfinite(z) | ((z <= 0) if log else False)
    masked = np.ma.masked_array(z, mask=bad)
    norm = norm or colour_norm([result], log)
    palette = plt.get_cmap(cmap).with_extremes(bad=BAD_COLOUR)
    mesh = ax.pcolormesh(x, y, masked, shading="nearest", cmap=palette, norm=norm)
    if (~bad).sum() >= 4 and len(x) > 2 and len(y) > 2:
        lo, hi = norm.vmin, norm.vmax
        ticks = np.geomspace(lo, hi, levels) if log else np.linspace(lo, hi, levels)
        ax.contour(x, y, masked, levels=ticks, colors="white", linewidths=0.6, alpha=0.8)
    if bad.any():
        ys, xs = np.nonzero(bad)
        ax.scatter(x[xs], y[ys], marker="x", s=10, color="red", lw=0.6)
    ax.plot([0], [0], marker="*", color="red", ms=8)
    if trajectory and "trajectory" in result.info:
        path = np.asarray(result.info["trajectory"], dtype=float)
        ax.plot(path[:, 0], path[:, 1], "-o", color="white", ms=3, lw=1, mec="k", mew=0.4)
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label="loss (log scale)" if log else "loss")
    ax.set_xlabel("coefficient along d1")
    ax.set_ylabel("coefficient along d2")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))  # ticks that do not collide on a small panel
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
    if caption:
        title = result.model_name + "\n" if result.model_name else ""
        ax.set_title(title + _caption(result), fontsize=8)
    return ax


def plot_landscape_3d(result: LandscapeResult, ax: Optional[Axes] = None, *, log: bool = False,
                      cmap: str = "viridis", caption: bool = True) -> Axes:
    """The surface f(a, b) in 3-D (non-finite cells left as holes and counted in the title)."""
    if result.ndim != 2:
        raise ValueError(f"plot_landscape_3d needs a 2-D result, got {result.ndim}-D")
    if ax is None:
        fig = plt.figure(figsize=(5, 4))
        ax = fig.add_subplot(projection="3d")
    if not hasattr(ax, "plot_surface"):
        raise ValueError("ax must be a 3-D axes (fig.add_subplot(projection='3d'))")
    a, b = np.meshgrid(*result.coords, indexing="ij")
    z = np.asarray(result.loss, dtype=float)
    ok = np.isfinite(z) & ((z > 0) if log else True)
    z = np.where(ok, np.log10(np.where(ok, z, 1.0)) if log else z, np.nan)
    finite = z[np.isfinite(z)]
    norm = colors.Normalize(finite.min(), finite.max()) if finite.size else None
    # one polygon per grid cell, edges not antialiased: smoothing the facets' edges drew light seams
    # and patches where neighbouring facets overlap in the painter's-algorithm depth order
    ax.plot_surface(a, b, z, cmap=cmap, norm=norm, rstride=1, cstride=1, linewidth=0, antialiased=False)
    ax.set_xlabel("d1")
    ax.set_ylabel("d2")
    ax.set_zlabel("log10 loss" if log else "loss")
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
    if caption:
        ax.set_title((result.model_name + "\n" if result.model_name else "") + _caption(result), fontsize=8)
    return ax


def plot_landscapes(results: Mapping[str, Optional[LandscapeResult]], axes: Optional[Sequence[Axes]] = None, *,
                    log: bool = False, levels: int = 12, cmap: str = "viridis") -> list[Axes]:
    """Several 2-D landscapes side by side on one colour scale with one colour bar.

    A ``None`` result (a diverged model that could not be evaluated) gets a panel saying so.
    """
    if not results:
        raise ValueError("no results to plot")
    names = list(results)
    if axes is None:
        fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names) + 0.8, 3.4), squeeze=False,
                                 layout="constrained")
        axes = list(axes[0])
    if len(axes) != len(names):
        raise ValueError(f"got {len(axes)} axes for {len(names)} results")
    present = [r for r in results.values() if r is not None]
    norm = colour_norm(present, log)
    for ax, name in zip(axes, names):
        result = results[name]
        if result is None:
            ax.text(0.5, 0.5, "diverged\n(not evaluated)", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        plot_landscape_2d(result, ax, log=log, norm=norm, levels=levels, colorbar=False, cmap=cmap,
                          caption=False)
        bad = result.n_nonfinite
        ax.set_title(f"{name}" + (f" ({bad} non-finite)" if bad else ""), fontsize=9)
        if ax is not axes[0]:
            ax.set_ylabel("")
    if present:
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        axes[0].figure.colorbar(mappable, ax=list(axes), label="loss (log scale)" if log else "loss",
                                fraction=0.025, pad=0.02)
        title = present[0].describe() + " (shared colour scale)"
        axes[0].figure.suptitle("\n".join(textwrap.wrap(title, 120)), fontsize=9)
    return list(axes)
