"""Plots of probe results (never of models): entropy heatmaps, residual growth, S-curves, ..."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, SymmetricalLogLocator  # noqa: E402


def _ax(ax):
    return ax if ax is not None else plt.subplots(figsize=(4, 3), layout="constrained")[1]


def _integer_x(ax) -> None:
    """Depths and layer indices are integers: no fractional ticks."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(ax, n_entries: int, **kwargs) -> None:
    """A legend inside the axes when short, below them (in columns) when it would cover the data."""
    if n_entries <= 4:
        ax.legend(**kwargs)
    else:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False, **kwargs)


def plot_entropy_heatmap(result, ax=None, title: str = "") -> plt.Axes:
    """Mean normalized entropy per (layer, head) of an AttentionEntropyResult."""
    ax = _ax(ax)
    heads = result.head_frame()
    grid = heads.pivot(index="layer", columns="head", values="normalized_entropy")
    sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="magma", annot=grid.shape[1] <= 8, fmt=".2f", cbar=True)
    ax.set_title(title or "normalized attention entropy")
    return ax


def plot_residual_growth(frames: dict[str, pd.DataFrame], ax=None, value: str = "rms") -> plt.Axes:
    """Residual-stream ``value`` ("rms", "norm", "variance") vs depth, one line per model."""
    ax = _ax(ax)
    for name, frame in frames.items():
        ax.plot(frame.depth, frame[value], marker="o", label=name)
    ax.set_xlabel("depth (0 = embeddings)")
    ax.set_ylabel(f"residual {value}")
    ax.set_yscale("log")
    _integer_x(ax)
    _legend(ax, len(frames), fontsize="small")
    return ax


def plot_s_curve(result, ax=None, slots=None, title: str = "") -> plt.Axes:
    """Norm input vs output scatter per slot (the DyT paper's S-curve)."""
    ax = _ax(ax)
    for slot in slots or result.slots:
        ax.scatter(result.inputs[slot], result.outputs[slot], s=2, alpha=0.4, label=slot)
    ax.set_xlabel("norm input")
    ax.set_ylabel("norm output")
    ax.set_title(title)
    ax.legend(fontsize="x-small", markerscale=4, loc="upper left")
    return ax


def plot_kurtosis_and_massive(frame: pd.DataFrame, ax=None, kind: str = "resid") -> plt.Axes:
    """Excess kurtosis and max/median |x| per layer, from an activation-stats table (with a 'model' column)."""
    ax = _ax(ax)
    data = frame[(frame.kind == kind) & (frame.group == "body")]
    n = 0
    for name, part in data.groupby("model", sort=False):
        ax.plot(np.arange(len(part)), part.excess_kurtosis, marker="o", label=f"{name} kurtosis")
        ax.plot(np.arange(len(part)), part.massive_ratio, marker="x", ls="--", label=f"{name} max/median")
        n += 2
    ax.set_xlabel(f"{kind} site (depth order)")
    ax.set_yscale("symlog", linthresh=1.0)
    # labelled ticks at 1, 2 and 5 per decade as plain numbers: values between 1 and 10 (max/median,
    # kurtosis) get labels too, where the default symlog ticks label only whole decades
    ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(SymmetricalLogLocator(base=10, linthresh=1.0, subs=tuple(range(2, 10))))
    ax.set_ylabel("excess kurtosis, max/median |x|")
    ax.grid(axis="y", lw=0.4, alpha=0.5)
    _integer_x(ax)
    _legend(ax, n, fontsize="x-small")
    return ax


def plot_angular_heatmap(result, ax=None, title: str = "") -> plt.Axes:
    """Angular distance arccos(cos)/pi between residual depths of an EffectivenessResult."""
    ax = _ax(ax)
    sns.heatmap(result.angular, ax=ax, vmin=0, vmax=max(0.5, float(np.nanmax(result.angular))), cmap="viridis",
                annot=result.angular.shape[0] <= 8, fmt=".2f")
    ax.set_xlabel("depth")
    ax.set_ylabel("depth")
    ax.set_title(title or "angular distance")
    return ax


def plot_probe_accuracy(frame: pd.DataFrame, ax=None) -> plt.Axes:
    """Held-out probe score per depth, one line per (model, label) of a linear-probe table."""
    ax = _ax(ax)
    hue = frame.model + " / " + frame.label if "model" in frame else frame.label
    sns.lineplot(data=frame.assign(series=hue), x="depth", y="score", hue="series", marker="o", ax=ax)
    ax.set_ylabel("held-out score (accuracy or R²)")
    _integer_x(ax)
    _legend(ax, hue.nunique(), fontsize="x-small")
    return ax
