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


def plot_entropy_heatmap(result, ax=None, title: str = "", value: str = "entropy_ratio") -> plt.Axes:
    """Per (layer, head) of an AttentionEntropyResult: mean entropy / log T (default), heads at or
    above the overload threshold outlined (ReLU's Revival's 3/4 bar).

    ``value``: any numeric column of ``head_frame()``, e.g. "normalized_entropy" (the per-query variant).
    """
    from matplotlib.patches import Rectangle

    ax = _ax(ax)
    heads = result.head_frame()
    grid = heads.pivot(index="layer", columns="head", values=value)
    bounded = value in ("entropy_ratio", "normalized_entropy", "first_token_mass")
    sns.heatmap(grid, ax=ax, vmin=0, vmax=1 if bounded else None, cmap="magma", annot=grid.shape[1] <= 8,
                fmt=".2f", cbar=True)
    if value == "entropy_ratio":
        for i, layer in enumerate(grid.index):
            for j, head in enumerate(grid.columns):
                if grid.loc[layer, head] >= result.overload_threshold:
                    ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="cyan", lw=1.5))
    default = {"entropy_ratio": f"mean entropy / log T (outlined: ≥ {result.overload_threshold:g}, overload)",
               "normalized_entropy": "mean per-query H / log(visible keys) (variant)"}.get(value, value)
    ax.set_title(title or default, fontsize="small")
    return ax


def plot_sink_mass(result, ax=None, title: str = "") -> plt.Axes:
    """Per head: mean attention on the first real token, by layer, with the sink threshold ε drawn
    (Gu et al. 2024: the sink rate is the share of heads above ε)."""
    ax = _ax(ax)
    heads = result.head_frame()
    jitter = (heads["head"] - heads["head"].max() / 2) / max(4 * (heads["head"].max() + 1), 1)
    colors = np.where(heads.sink, "tab:red", "tab:blue")
    ax.scatter(heads.layer + jitter, heads.first_token_mass, c=colors, s=14)
    rate = result.summary()["sink_rate"]
    ax.axhline(result.sink_threshold, color="k", ls="--", lw=1,
               label=f"ε = {result.sink_threshold:g} (sink rate {rate:.2f})")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"mean first-token mass (queries ≥ {result.skip_queries})")
    ax.set_ylim(0, 1)
    if len(heads):
        ax.set_xlim(heads.layer.min() - 0.5, heads.layer.max() + 0.5)
    _integer_x(ax)
    ax.legend(fontsize="x-small")
    ax.set_title(title or "attention sinks per head", fontsize="small")
    return ax


def plot_entropy_by_position(result, ax=None, title: str = "", stat: str = "mean_normalized") -> plt.Axes:
    """Heatmap of H / log(visible keys) per head (rows L·H·) and query-position bucket (columns).

    ``stat``: a column of ``bucket_frame()`` ("mean_normalized", "median", "q10", "q90",
    "share_above_threshold").
    """
    ax = _ax(ax)
    frame = result.bucket_frame()
    frame = frame.assign(row=[f"L{l}H{h}" for l, h in zip(frame.layer, frame["head"])])
    order = list(dict.fromkeys(frame.row))
    buckets = list(dict.fromkeys(frame.sort_values("pos_low").bucket))
    grid = frame.pivot(index="row", columns="bucket", values=stat).reindex(index=order, columns=buckets)
    sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="magma", annot=grid.size <= 64, fmt=".2f")
    ax.set_xlabel("query position bucket")
    ax.set_ylabel("")
    ax.set_title(title or f"H / log(visible keys): {stat}", fontsize="small")
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


def plot_s_curve(result, ax=None, slots=None, title: str = "", fit: bool = True,
                 fits: pd.DataFrame | None = None) -> plt.Axes:
    """Norm input vs normalized output (before the affine) per slot, the DyT paper's S-curve,
    with each slot's fitted a·tanh(b·x) + c drawn over it (``fit``).

    ``fits``: the saved ``result.fit_frame()`` (one row per slot), so the fit is not redone.
    """
    ax = _ax(ax)
    if fit and result.slots:
        fits = (fits if fits is not None else result.fit_frame()).set_index("slot")
    else:
        fits = None
    for slot in slots or result.slots:
        dots = ax.scatter(result.inputs[slot], result.outputs[slot], s=2, alpha=0.4, label=slot)
        if fits is not None and fits.loc[slot, "shape"] != "undefined":
            row = fits.loc[slot]
            xs = np.linspace(np.min(result.inputs[slot]), np.max(result.inputs[slot]), 200)
            ax.plot(xs, row.tanh_a * np.tanh(row.tanh_b * xs) + row.tanh_c, color=dots.get_facecolor()[0],
                    lw=1, alpha=0.9)
    ax.set_xlabel("norm input x")
    pre = all(result.pre_affine.get(s, False) for s in (slots or result.slots))
    ax.set_ylabel("normalized output (before the affine)" if pre else "norm output")
    ax.set_title(title, fontsize="small")
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
    where = {"last": "last token", "all": "all tokens"}.get(getattr(result, "angular_positions", "all"), "")
    ax.set_title(title or f"angular distance ({where})", fontsize="small")
    return ax


def plot_block_effectiveness(result, ax=None, title: str = "", value: str = "skip_loss_delta",
                             frame: pd.DataFrame | None = None) -> plt.Axes:
    """Per block of an EffectivenessResult: ``value`` ("skip_loss_delta" or "angular_in_out") with its
    interval over sequences as error bars, and a line at zero change.

    ``frame``: the saved ``result.interval_frame()``, so the bootstrap is not redone (``result`` may
    then be None).
    """
    if value not in ("skip_loss_delta", "angular_in_out"):
        raise ValueError(f"value must be 'skip_loss_delta' or 'angular_in_out', got {value!r}")
    ax = _ax(ax)
    frame = frame if frame is not None else result.interval_frame()
    low, high = (frame.skip_low, frame.skip_high) if value == "skip_loss_delta" else (frame.angular_low,
                                                                                      frame.angular_high)
    y = frame[value]
    err = np.vstack([(y - low).fillna(0).clip(lower=0), (high - y).fillna(0).clip(lower=0)])
    ax.errorbar(frame.layer, y, yerr=err, marker="o", capsize=3)
    if value == "skip_loss_delta":
        ax.axhline(0.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("block")
    if len(frame):
        ax.set_xlim(frame.layer.min() - 0.5, frame.layer.max() + 0.5)
    _integer_x(ax)
    ax.set_ylabel({"skip_loss_delta": "loss change when skipped (nats)",
                   "angular_in_out": "angular distance in→out"}[value])
    ax.set_title(title or f"95 % intervals over {int(frame.n_sequences.max()) if len(frame) else 0} sequences",
                 fontsize="small")
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
