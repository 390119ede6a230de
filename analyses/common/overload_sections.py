"""Report sections of the entropic_overload study, drawn only from the files the study saved.

Data (``folder``, written by :mod:`analyses.entropic_overload`)::

    comparisons.json          settings, models (key, label), seeds, per-model intervals, paired intervals
    runs.parquet              one row per (model, seed): the run's metrics (analyses.common.overload_metrics)
    heads.parquet             final heads: AttentionEntropyResult.head_frame() + model, seed
    buckets.parquet           final heads per query-position bucket: bucket_frame() + model, seed
    training_heads.parquet    entropy per (model, seed, step, layer, head) recorded during training
    training_summary.parquet  overload / collapse fractions per (model, seed, step) recorded during training
    entropy/<model>/seed-<s>/ AttentionEntropyResult.save() of each run's final heads
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from normlens.io import load_frame, read_json  # noqa: E402
from normlens.plots.probes import plot_entropy_by_position, plot_entropy_heatmap  # noqa: E402
from normlens.probes.attention import AttentionEntropyResult  # noqa: E402
from normlens.report.section import Figure, ReportSection, Table  # noqa: E402
from normlens.report.sections._common import panel_grid, wrap_label  # noqa: E402

COMPARISONS = "comparisons.json"
METRIC_NAMES = {
    "overload_fraction": "overloaded heads (paper's definition)",
    "early_overload_fraction": "overloaded heads, early layers",
    "collapse_fraction": "collapsed heads",
    "mean_entropy_ratio": "mean entropy / log T",
    "overload_fraction_normalized": "overloaded heads, per-query variant (saturates)",
    "val_loss": "validation loss (nats)",
    "perplexity": "validation perplexity",
    "perplexity_reduction": "perplexity of b below a (1 − ppl_b/ppl_a)",
}
FRACTIONS = ("overload_fraction", "early_overload_fraction", "collapse_fraction", "overload_fraction_normalized",
             "perplexity_reduction")


def _load(folder: Path) -> dict[str, Any]:
    data = read_json(folder / COMPARISONS)
    data["labels"] = {m["key"]: m["label"] for m in data["models"]}
    data["keys"] = [m["key"] for m in data["models"]]
    return data


def _colours(keys: list[str]) -> dict[str, Any]:
    return dict(zip(keys, sns.color_palette("tab10", len(keys))))


def _fmt(row: Mapping[str, Any], metric: str) -> str:
    scale, digits = (100.0, 1) if metric in FRACTIONS else (1.0, 3)
    unit = " %" if metric in FRACTIONS else ""
    est = row["estimate"]
    if not math.isfinite(est):
        return "n/a"
    text = f"{scale * est:.{digits}f}{unit}"
    if math.isfinite(row["low"]) and math.isfinite(row["high"]):
        text += f" [{scale * row['low']:.{digits}f}, {scale * row['high']:.{digits}f}]"
    return text


def _settings_text(data: Mapping[str, Any]) -> str:
    return (f"{data['mode']} mode: {data['n_layers']} layers, width {data['d_model']}, {data['n_heads']} heads, "
            f"context T = {data['n_ctx']}, {data['steps']} training steps, seeds {', '.join(map(str, data['seeds']))} "
            f"(the same initial weights, batches and evaluation windows for every model of a seed), corpus "
            f"{data['data']}. Final heads measured on {data['entropy_seqs']} held-out windows.")


# -- summary -----------------------------------------------------------------------------------------

def render_summary(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """Overload and collapse fractions and validation perplexity per model with intervals over seeds,
    paired differences, and the overload fraction per layer."""
    data = _load(folder)
    keys, labels = data["keys"], data["labels"]
    runs = load_frame(folder / "runs.parquet")
    intervals = pd.DataFrame(data["intervals"])
    paired = pd.DataFrame(data["paired"])
    rows = []
    for key in keys:
        part = intervals[intervals.model == key].set_index("metric")
        model_runs = runs[runs.model == key]
        rows.append({"model": labels[key], "seeds": len(model_runs),
                     "diverged": int(model_runs.diverged.sum()),
                     **{METRIC_NAMES[m]: _fmt(part.loc[m], m) for m in
                        ("overload_fraction", "early_overload_fraction", "collapse_fraction", "mean_entropy_ratio",
                         "val_loss", "perplexity", "overload_fraction_normalized")}})
    pair_rows = [{"comparison": f"{labels[r.a]} − {labels[r.b]}", "quantity": METRIC_NAMES[r.metric],
                  "mean difference [95 % interval]": _fmt(r._asdict(), r.metric),
                  "paired seeds": int(r.n), "interval excludes 0": "yes" if r.excludes_zero else "no"}
                 for r in paired.itertuples(index=False)]
    figures = [_fractions_figure(runs, intervals, keys, labels), _per_layer_figure(folder, data)]
    uniform = data["uniform_ratio"]
    notes = [
        "Overload (ReLU's Revival): a head's attention entropy averaged over all T queries of a sequence, divided "
        f"by log T, averaged over sequences, lies in [¾, 1]. A perfectly uniform causal head scores "
        f"log(T!)/(T·log T) = {uniform:.3f} at T = {data['n_ctx']}, so only heads that attend almost uniformly "
        "pass the bar.",
        f"Collapse: mean entropy below {data['collapse_threshold']:g} nats. Early layers: the first "
        f"{data['early_layers']} of {data['n_layers']}.",
        "Intervals: 95 % Student's t over seeds (per model) or over per-seed differences (paired), "
        f"{len(data['seeds'])} seeds; for fractions of heads truncated to [0, 1] (differences: [-1, 1]).",
        "Per-query variant (labelled, not the paper's): each query's H_i / log(i+1) averaged per head. Dividing by "
        "each query's own maximum lifts every diffuse head towards 1 — a head spread uniformly over k of the i+1 "
        "visible keys scores log k / log(i+1), and a uniform head scores exactly 1 — so the variant saturates and "
        "separates little.",
    ]
    diverged = runs[runs.diverged]
    notes += [f"{labels[r.model]} seed {r.seed} diverged (step {r.diverged_step}); its entropy is not measured "
              "and its pairs are left out." for r in diverged.itertuples(index=False)]
    return ReportSection(
        title=options.get("title", "Entropic overload: fractions of heads and perplexity over seeds"),
        summary=_settings_text(data), figures=figures,
        tables=[Table("Per model: mean over seeds [95 % t interval]", pd.DataFrame(rows)),
                Table("Paired by seed: mean of a − b [95 % t interval]", pd.DataFrame(pair_rows))],
        notes=notes)


def _fractions_figure(runs: pd.DataFrame, intervals: pd.DataFrame, keys: list[str],
                      labels: Mapping[str, str]) -> Figure:
    metrics = ("overload_fraction", "collapse_fraction", "val_loss")
    fig, axes = panel_grid(len(metrics), (3.4, 3.0))
    colours = _colours(keys)
    for ax, metric in zip(axes, metrics):
        for i, key in enumerate(keys):
            values = runs[runs.model == key][metric].to_numpy(float)
            ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, s=14,
                       color=colours[key], alpha=0.6)
            row = intervals[(intervals.model == key) & (intervals.metric == metric)].iloc[0]
            if math.isfinite(row.estimate):
                low = row.low if math.isfinite(row.low) else row.estimate
                high = row.high if math.isfinite(row.high) else row.estimate
                ax.errorbar([i + 0.3], [row.estimate], yerr=[[row.estimate - low], [high - row.estimate]],
                            fmt="D", color=colours[key], capsize=3, ms=4)
        ax.set_xticks(range(len(keys)), [wrap_label(labels[k], 16) for k in keys], fontsize="x-small")
        ax.set_xlim(-0.5, len(keys) - 0.5)
        ax.set_ylabel(METRIC_NAMES[metric])
        if metric != "val_loss":
            ax.set_ylim(-0.03, 1.03)
    axes[0].set_title("dots: seeds; diamond: mean, 95 % interval", fontsize="small")
    return Figure.from_matplotlib(
        fig, "Share of overloaded heads (mean entropy ≥ ¾·log T), of collapsed heads, and validation loss per "
             "model: one dot per seed, the mean with its t interval over seeds beside it.",
        alt="Three panels of dot plots, one column per model (" + ", ".join(labels[k] for k in keys) + "): overload "
            "fraction, collapse fraction and validation loss per seed with the mean and its interval.")


def _per_layer_figure(folder: Path, data: Mapping[str, Any]) -> Figure:
    heads = load_frame(folder / "heads.parquet")
    keys, labels = data["keys"], data["labels"]
    colours = _colours(keys)
    fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    if len(heads):
        per_seed = heads[heads.state != "undefined"].groupby(["model", "seed", "layer"], as_index=False).overloaded.mean()
        offsets = np.linspace(-0.15, 0.15, len(keys))
        for offset, key in zip(offsets, keys):
            part = per_seed[per_seed.model == key]
            if not len(part):
                continue
            stats = part.groupby("layer").overloaded.agg(["mean", "min", "max"])
            ax.errorbar(stats.index + offset, stats["mean"], yerr=[stats["mean"] - stats["min"],
                                                                   stats["max"] - stats["mean"]],
                        marker="o", capsize=3, color=colours[key], label=labels[key])
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the layer's heads overloaded")
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="x-small")
    ax.set_title(f"mean over {len(data['seeds'])} seeds; bars: min to max", fontsize="small")
    return Figure.from_matplotlib(
        fig, "Share of each layer's heads that are overloaded at the end of training (the paper finds the overload "
             "in early layers of the norm-free GELU model).",
        alt="Line plot of the overloaded share of heads against layer, one line per model, with min-max bars over "
            "seeds.")


# -- final heads -------------------------------------------------------------------------------------

def render_heads(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """Layer × head heatmaps of mean entropy / log T of every run's final heads (overloaded outlined),
    and the per-query normalized variant for the first seed."""
    data = _load(folder)
    keys, labels, seeds = data["keys"], data["labels"], data["seeds"]
    runs = load_frame(folder / "runs.parquet")
    cells = [(key, seed) for key in keys for seed in seeds]
    fig, axes = panel_grid(len(cells), (3.2, 2.7), columns=len(seeds))
    for ax, (key, seed) in zip(axes, cells):
        row = runs[(runs.model == key) & (runs.seed == seed)]
        where = row.entropy_dir.iloc[0] if len(row) else None
        if not isinstance(where, str):
            ax.text(0.5, 0.5, "diverged: not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            ax.set_title(wrap_label(f"{labels[key]}, seed {seed}"), fontsize="small")
            continue
        plot_entropy_heatmap(AttentionEntropyResult.load(folder / where), ax=ax,
                             title=wrap_label(f"{labels[key]}, seed {seed}"))
    figures = [Figure.from_matplotlib(
        fig, "Mean attention entropy / log T per layer (rows) and head (columns) at the end of training; heads "
             f"outlined in cyan are overloaded (≥ ¾). Rows of panels: models; columns: seeds {', '.join(map(str, seeds))}.",
        alt="Grid of heatmaps, one per model and seed, of the entropy ratio per layer and head with overloaded heads "
            "outlined.")]
    first = [(key, seeds[0]) for key in keys]
    fig, axes = panel_grid(len(first), (3.2, 2.7))
    for ax, (key, seed) in zip(axes, first):
        row = runs[(runs.model == key) & (runs.seed == seed)]
        where = row.entropy_dir.iloc[0] if len(row) else None
        if isinstance(where, str):
            plot_entropy_heatmap(AttentionEntropyResult.load(folder / where), ax=ax, value="normalized_entropy",
                                 title=wrap_label(f"{labels[key]} (variant)"))
        else:
            ax.set_axis_off()
    figures.append(Figure.from_matplotlib(
        fig, f"Variant, not the paper's metric (seed {seeds[0]}): mean over queries of H_i / log(i+1), each query "
             "divided by its own maximum. Diffuse heads sit near 1 in every model, which is why the variant "
             "separates little.",
        alt="Heatmaps of the per-query normalized entropy per layer and head, one per model."))
    return ReportSection(title=options.get("title", "Final heads: entropy per layer and head"),
                         summary="Each cell is one head's mean entropy over the queries of a held-out window divided "
                                 f"by log T (T = {data['n_ctx']}), averaged over {data['entropy_seqs']} windows.",
                         figures=figures)


# -- over training -----------------------------------------------------------------------------------

class _HeadGrid:
    """The two members of an AttentionEntropyResult that ``plot_entropy_heatmap`` reads (``head_frame()``
    and ``overload_threshold``), for entropy ratios recorded during training: the same figure, drawn
    from the training records."""

    def __init__(self, frame: pd.DataFrame, overload_threshold: float):
        self._frame = frame[["layer", "head", "entropy_ratio"]].reset_index(drop=True)
        self.overload_threshold = overload_threshold

    def head_frame(self) -> pd.DataFrame:
        return self._frame


def _snapshot_steps(steps: list[int], n: int = 4) -> list[int]:
    """``n`` recorded steps spread over the run: the first, the last and evenly placed ones between."""
    if len(steps) <= n:
        return steps
    picks = np.linspace(0, len(steps) - 1, n).round().astype(int)
    return [steps[i] for i in dict.fromkeys(picks.tolist())]


def render_training(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """Heatmaps along training (first seed), entropy ratio per layer over training and the overload and
    collapse fractions over training (mean over seeds, min-max band)."""
    data = _load(folder)
    keys, labels, seeds = data["keys"], data["labels"], data["seeds"]
    heads = load_frame(folder / "training_heads.parquet")
    summary = load_frame(folder / "training_summary.parquet")
    threshold, uniform = data["overload_threshold"], data["uniform_ratio"]
    figures = []
    first = heads[heads.seed == seeds[0]]
    snapshot = _snapshot_steps(sorted(first.step.unique().tolist()))
    if snapshot:
        cells = [(key, step) for key in keys for step in snapshot]
        fig, axes = panel_grid(len(cells), (3.0, 2.5), columns=len(snapshot))
        for ax, (key, step) in zip(axes, cells):
            part = first[(first.model == key) & (first.step == step)]
            if not len(part):
                ax.set_axis_off()
                ax.set_title(wrap_label(f"{labels[key]}, step {step}: no record"), fontsize="small")
                continue
            plot_entropy_heatmap(_HeadGrid(part, threshold), ax=ax, title=wrap_label(f"{labels[key]}, step {step}"))
        figures.append(Figure.from_matplotlib(
            fig, f"Mean entropy / log T per layer and head along training (seed {seeds[0]}, "
                 f"{data['probe_seqs']} validation windows); outlined: overloaded (≥ ¾). Rows: models; columns: "
                 "steps.",
            alt="Grid of heatmaps of the entropy ratio per layer and head, one row per model and one column per "
                "training step."))
        figures.append(_layers_over_training(heads, keys, labels, threshold, uniform, len(seeds)))
    if len(summary):
        figures.append(_fractions_over_training(summary, keys, labels))
    return ReportSection(
        title=options.get("title", "Attention entropy over training"),
        summary="Recorded by the training probe (normlens.train_probes.attention_entropy_probe) every few steps on "
                "the first validation windows. At initialization the attention logits are tiny, so every head "
                f"attends almost uniformly and scores ≈ {uniform:.2f} of log T: the question is which heads leave "
                "that state as training proceeds.",
        figures=figures)


def _layers_over_training(heads: pd.DataFrame, keys: list[str], labels: Mapping[str, str], threshold: float,
                          uniform: float, n_seeds: int) -> Figure:
    per_seed = heads.groupby(["model", "seed", "step", "layer"], as_index=False).entropy_ratio.mean()
    fig, axes = panel_grid(len(keys), (3.4, 2.9))
    layers = sorted(per_seed.layer.unique().tolist())
    palette = sns.color_palette("viridis", len(layers))
    for ax, key in zip(axes, keys):
        part = per_seed[per_seed.model == key]
        for colour, layer in zip(palette, layers):
            stats = part[part.layer == layer].groupby("step").entropy_ratio.agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], color=colour, marker="o", ms=2.5, label=f"layer {layer}")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15, lw=0)
        ax.axhline(threshold, color="k", ls="--", lw=1, label=f"overload bar {threshold:g}")
        ax.axhline(uniform, color="grey", ls=":", lw=1, label=f"uniform head {uniform:.3f}")
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax.set_ylabel("mean entropy / log T")
        ax.set_title(wrap_label(labels[key]), fontsize="small")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 7), fontsize="x-small", frameon=False)
    return Figure.from_matplotlib(
        fig, f"Mean entropy / log T of each layer's heads over training (mean over {n_seeds} seeds, band: min to "
             "max); dashed: the overload bar ¾; dotted: a uniform causal head.",
        alt="One panel per model: lines of the layer-mean entropy ratio against training step, one per layer, with "
            "the overload threshold drawn.")


def _fractions_over_training(summary: pd.DataFrame, keys: list[str], labels: Mapping[str, str]) -> Figure:
    colours = _colours(keys)
    metrics = ("overload_fraction", "collapse_fraction")
    fig, axes = panel_grid(len(metrics), (3.8, 3.0))
    for ax, metric in zip(axes, metrics):
        for key in keys:
            stats = summary[summary.model == key].groupby("step")[metric].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], color=colours[key], marker="o", ms=2.5, label=labels[key])
            ax.fill_between(stats.index, stats["min"], stats["max"], color=colours[key], alpha=0.15, lw=0)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("step")
        ax.set_ylabel(METRIC_NAMES[metric])
    axes[0].legend(fontsize="x-small")
    return Figure.from_matplotlib(
        fig, "Share of overloaded and of collapsed heads over training (mean over seeds, band: min to max).",
        alt="Two panels: overload fraction and collapse fraction against training step, one line per model.")


# -- query positions ---------------------------------------------------------------------------------

def render_positions(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """Per query-position bucket: the distribution over heads of H / log(visible keys), per model."""
    data = _load(folder)
    keys, labels, seeds = data["keys"], data["labels"], data["seeds"]
    buckets = load_frame(folder / "buckets.parquet")
    runs = load_frame(folder / "runs.parquet")
    threshold = data["overload_threshold"]
    figures, tables = [], []
    if len(buckets):
        order = list(dict.fromkeys(buckets.sort_values("pos_low").bucket))
        frame = buckets.assign(model_label=buckets.model.map(labels))
        fig, ax = plt.subplots(figsize=(7.5, 3.4), layout="constrained")
        sns.boxplot(data=frame, x="bucket", y="mean_normalized", hue="model_label", order=order,
                    hue_order=[labels[k] for k in keys if k in set(frame.model)], ax=ax, fliersize=2, linewidth=0.8)
        ax.axhline(threshold, color="k", ls="--", lw=1, label="¾")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("query position bucket (visible keys = position + 1)")
        ax.set_ylabel("head's mean H / log(visible keys)")
        ax.legend(fontsize="x-small", loc="lower left")
        figures.append(Figure.from_matplotlib(
            fig, f"Distribution over heads (all layers, {len(seeds)} seeds pooled) of each head's mean per-query "
                 "entropy relative to its maximum log(visible keys), per query-position bucket; dashed: ¾.",
            alt="Box plots of the per-query normalized entropy of heads per position bucket, one box per model."))
        first = [k for k in keys if len(runs[(runs.model == k) & (runs.seed == seeds[0])].entropy_dir.dropna())]
        n_rows = int(buckets.groupby(["layer", "head"]).ngroups)
        fig, axes = panel_grid(len(first), (3.4, 1.2 + 0.16 * n_rows))
        for ax, key in zip(axes, first):
            where = runs[(runs.model == key) & (runs.seed == seeds[0])].entropy_dir.iloc[0]
            plot_entropy_by_position(AttentionEntropyResult.load(folder / where), ax=ax,
                                     title=wrap_label(f"{labels[key]}, seed {seeds[0]}"))
            ax.tick_params(axis="x", labelrotation=90)
        figures.append(Figure.from_matplotlib(
            fig, f"Mean H / log(visible keys) per head (rows L·H·) and query-position bucket (seed {seeds[0]}).",
            alt="Heatmaps of the per-query normalized entropy per head and position bucket, one per model."))
        summary = (frame.groupby(["model", "bucket", "pos_low"], as_index=False)
                   .agg(heads=("mean_normalized", "size"), median=("mean_normalized", "median"),
                        above=("mean_normalized", lambda s: float((s >= threshold).mean())))
                   .sort_values(["model", "pos_low"], key=lambda c: c.map({k: i for i, k in enumerate(keys)})
                                if c.name == "model" else c))
        tables.append(Table("Heads per position bucket: median of mean H / log(visible keys), share ≥ ¾", pd.DataFrame({
            "model": summary.model.map(labels), "bucket": summary.bucket, "heads × seeds": summary.heads,
            "median": summary["median"].round(3), "share ≥ ¾": summary.above.round(3)})))
    return ReportSection(
        title=options.get("title", "Entropy relative to the visible keys, by query position"),
        summary="Query i sees i + 1 keys under the causal mask, so its largest possible entropy is log(i + 1). "
                "Early queries have few keys to choose from and sit near their maximum whatever the head does; "
                "the paper's per-head ratio (mean over all queries / log T) weighs every position against log T "
                "instead, which is why it, and not this per-query ratio, separates selective heads from uniform ones.",
        figures=figures, tables=tables)


RENDERERS = {"overload_summary": render_summary, "overload_heads": render_heads,
             "overload_training": render_training, "overload_positions": render_positions}

__all__ = ["RENDERERS", "render_heads", "render_positions", "render_summary", "render_training"]
