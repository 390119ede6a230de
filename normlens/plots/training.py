"""Training curves of several runs on shared axes, paired differences over seeds, probe records over training."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

if TYPE_CHECKING:  # importing normlens.train would load TransformerLens just for a type
    from normlens.train import TrainResult


def plot_training_curves(results: Sequence[TrainResult], ax: plt.Axes | None = None,
                         *, smooth: int = 10) -> plt.Axes:
    """Train loss (thin, moving average over ``smooth`` steps) and validation loss
    (markers) per run; a diverged run ends in a red cross at its divergence step."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    palette = sns.color_palette("tab10", len(results))
    for colour, result in zip(palette, results):
        steps = np.asarray(result.steps, dtype=float)
        losses = np.asarray(result.train_loss, dtype=float)
        finite = np.isfinite(losses)
        if finite.any():
            window = max(1, min(smooth, int(finite.sum())))
            kernel = np.ones(window) / window
            smoothed = np.convolve(losses[finite], kernel, mode="valid")
            ax.plot(steps[finite][window - 1:], smoothed, color=colour, alpha=0.5, lw=1)
        label = result.name + (f" (diverged at step {result.diverged_step})" if result.diverged else "")
        ax.plot(result.val_steps, result.val_loss, "o-", color=colour, ms=4, label=label)
        if result.diverged and result.diverged_step is not None:
            ax.axvline(result.diverged_step, color="red", ls=":", lw=1)
            ax.plot([result.diverged_step], [ax.get_ylim()[1]], "x", color="red", ms=9)
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title("Training: train loss (line, smoothed) and validation loss (markers)")
    ax.legend(fontsize=8)
    return ax


def plot_paired_differences(rows: Sequence[dict], ax: plt.Axes | None = None, *, baseline: str = "",
                            band: float | None = None, band_label: str = "") -> plt.Axes:
    """Paired differences against a baseline, one row per model: each seed's difference (dots) and
    the mean with its confidence interval (bar); a line at 0 and, with ``band``, the shaded ±band.

    ``rows``: dicts with ``label``, ``values`` (per-seed differences), ``estimate``, ``low``, ``high``
    and ``level`` (as :func:`normlens.uncertainty.paired_difference_interval` gives them).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * max(len(rows), 1)))
    ax.axvline(0.0, color="k", lw=0.8)
    if band:
        ax.axvspan(-band, band, color="tab:green", alpha=0.12, lw=0, label=band_label or f"±{band:g}")
    level = None
    for y, row in enumerate(rows):
        values = np.asarray(row.get("values") or [], dtype=float)
        finite = values[np.isfinite(values)]
        ax.plot(finite, np.full(finite.shape, y, dtype=float), "o", color="tab:blue", alpha=0.5, ms=5,
                label="one seed" if y == 0 else None)
        estimate, low, high = (float(row.get(k, np.nan)) for k in ("estimate", "low", "high"))
        level = row.get("level", level)
        if np.isfinite(low) and np.isfinite(high):
            ax.errorbar([estimate], [y], xerr=[[max(estimate - low, 0.0)], [max(high - estimate, 0.0)]], fmt="D",
                        color="k", ms=6, capsize=4, label="mean, interval" if y == 0 else None)
        elif np.isfinite(estimate):
            ax.plot([estimate], [y], "D", color="k", ms=6, label="mean (no interval)" if y == 0 else None)
    ax.set_yticks(range(len(rows)), [str(row.get("label", "")) for row in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    what = f" (mean, {float(level):.0%} interval over seeds)" if level else ""
    ax.set_xlabel(f"final validation loss minus {baseline or 'baseline'}, same seed (nats){what}")
    ax.legend(fontsize=8, loc="best")
    return ax


def plot_metric_over_training(frame: pd.DataFrame, ax: plt.Axes | None = None, *, by: str, value: str = "value",
                              title: str = "", ylabel: str = "", threshold: float | None = None,
                              threshold_label: str = "", reference: float | None = None, reference_label: str = "",
                              ylim: tuple[float, float] | None = None, log: bool = False) -> plt.Axes:
    """``value`` against ``step``, one line per value of the column ``by`` (e.g. a layer or depth),
    from a training probe's tidy records (:meth:`normlens.train.TrainResult.probe_frame`);
    ``threshold`` drawn as a dashed line, ``reference`` as a dotted one."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    keys = list(dict.fromkeys(frame[by])) if len(frame) else []
    palette = sns.color_palette("viridis", max(len(keys), 1))
    for colour, key in zip(palette, keys):
        part = frame[frame[by] == key].sort_values("step")
        name = int(key) if isinstance(key, (float, np.floating)) and float(key).is_integer() else key
        ax.plot(part.step, part[value], "o-", ms=3, lw=1.2, color=colour, label=f"{by} {name}")
    if threshold is not None:
        ax.axhline(threshold, color="k", ls="--", lw=1, label=threshold_label or f"{threshold:g}")
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", lw=1.2, label=reference_label or f"{reference:g}")
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or value)
    ax.set_title(title, fontsize="small")
    if keys:
        ax.legend(fontsize="x-small", ncol=2 if len(keys) > 4 else 1)
    return ax
