"""Training curves of several runs on shared axes."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
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
