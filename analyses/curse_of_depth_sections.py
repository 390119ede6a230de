"""The curse_of_depth study's report sections, drawn from ``depth/summary.json`` alone.

Layers are numbered from 1 (layer ℓ is LayerNorm Scaling's 1/√ℓ); residual depth 0 is the embedding
and depth ℓ the output of layer ℓ.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analyses.curse_of_depth import SUMMARY, judge_comparison, short_placement_labels  # noqa: E402
from normlens.io import read_json  # noqa: E402
from normlens.report.section import Figure, ReportSection, Table  # noqa: E402
from normlens.report.sections._common import one_axis, panel_grid  # noqa: E402

STYLE = {"pre": ("tab:blue", "o"), "scaled": ("tab:orange", "s"), "mix": ("tab:green", "^"), "post": ("tab:red", "D")}


def _summary(folder: Path) -> dict[str, Any]:
    return read_json(Path(folder) / SUMMARY)


def _style(placement: str) -> tuple[str, str]:
    return STYLE.get(placement, ("tab:gray", "x"))


def _short(summary: Mapping[str, Any], placement: str) -> str:
    return short_placement_labels().get(placement, summary["labels"].get(placement, placement))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


def _interval_text(c: Mapping[str, Any], digits: int = 3) -> str:
    if c is None:
        return "–"
    if not (math.isfinite(c["low"]) and math.isfinite(c["high"])):
        return f"{_fmt(c['estimate'], digits)} (n={c['n']}, no interval)"
    return f"{_fmt(c['estimate'], digits)} [{_fmt(c['low'], digits)}, {_fmt(c['high'], digits)}]"


def _integer_ticks(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _shade_deep(ax, summary: Mapping[str, Any]) -> None:
    deep = summary.get("deep_layers") or []
    if deep:
        ax.axvspan(deep[0] - 0.5, deep[-1] + 0.5, color="0.92", zorder=0, label="deep layers")


def _seed_note(summary: Mapping[str, Any]) -> str:
    seeds = summary["seeds"]
    return (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); for each seed every placement starts from the same "
            f"initial weights and sees the same batches; {summary['n_sequences']} held-out sequences of "
            f"{summary['n_ctx']} tokens; intervals at {summary['level']:.0%} (Student's t over seeds, BCa bootstrap over sequences).")


# -- claims ---------------------------------------------------------------------------------------

def render_claims(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    summary = _summary(folder)
    rows = []
    for c in summary["comparisons"]:
        names = f"{_short(summary, c['b'])} − {_short(summary, c['a'])}" if c["a"] else _short(summary, c["b"])
        rows.append({"claim": c["claim"], "quantity": c["metric"], "compared": names,
                     "values": (f"{_fmt(c['b_value'])} vs {_fmt(c['a_value'])}" if c["a"] else _fmt(c["b_value"])),
                     "difference over seeds [interval]": _interval_text(c, 3), "seeds": c["n"],
                     "over sequences [interval]": _interval_text(c["sequences"], 3) if c.get("sequences") else "–",
                     "judgement": judge_comparison(c)})
    deep = summary["deep_layers"]
    notes = [
        _seed_note(summary),
        "A claim 'agrees' when its whole interval lies on the claimed side of zero, 'disagrees' when it lies on "
        "the other side, and is 'inconclusive' otherwise; where a quantity is also measured per held-out sequence, "
        "both intervals (over seeds and over sequences) must say the same.",
        f"Deep layers: {deep[0]}–{deep[-1]} of {summary['n_layers']}. A layer is ineffective when skipping it "
        f"(its output replaced by its input) raises the held-out loss by less than {summary['ineffective_nats']:g} "
        "nats (a threshold of this study; the papers prune layers and read benchmark scores).",
        "variance_log_slope: least-squares slope of ln(variance) against depth 1..L; log_grad_deep_early: ln of "
        "the mean gradient norm of the deep half over that of the early half, from the training record after "
        f"warm-up (steps ≥ {summary['grad_from_step']}); grad_spread: standard deviation over layers of ln‖g‖.",
    ]
    return ReportSection(
        title=options.get("title", "Claims tested"),
        summary=(f"{summary['n_layers']}-layer decoders of width {summary['d_model']} trained for {summary['steps']} "
                 "steps with Pre-LN, LayerNorm Scaling, Mix-LN and Post-LN, compared seed by seed."),
        tables=[Table("Each paper's claim against the paired difference between placements", pd.DataFrame(rows))],
        notes=notes)


# -- validation loss ------------------------------------------------------------------------------

def render_loss(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    summary = _summary(folder)
    curves = summary["curves"]

    def draw(ax):
        for placement in summary["placements"]:
            colour, marker = _style(placement)
            val = curves[placement]["val"]
            per_seed = np.array([v for v in val["per_seed"] if len(v) == len(val["steps"])], float)
            for row in per_seed:
                ax.plot(val["steps"], row, color=colour, alpha=0.3, lw=0.8)
            if len(per_seed):
                ax.plot(val["steps"], np.nanmean(per_seed, 0), color=colour, marker=marker, ms=4,
                        label=_short(summary, placement))
        ax.set_xlabel("training step")
        ax.set_ylabel("validation loss (nats)")
        ax.legend(frameon=False)

    differences = {c["b"]: c for c in summary["comparisons"] if c["metric"] == "final_val_loss"}
    rows = []
    for placement in summary["placements"]:
        runs = [r for r in summary["runs"] if r["placement"] == placement]
        rows.append({"placement": summary["labels"][placement],
                     "final validation loss [interval over seeds]":
                         _interval_text(summary["metrics"][placement]["final_val_loss"], 4),
                     "minus Pre-LN, paired [interval]": _interval_text(differences.get(placement), 3)
                     if placement in differences else "–",
                     "seeds": len(runs), "diverged": sum(bool(r["diverged"]) for r in runs),
                     "train wall time per run (s)": _fmt(float(np.mean([r["train_seconds"] for r in runs])), 3)})
    figure = one_axis(draw, (7, 3.8), "Validation loss during training: one line per seed (faint) and the mean "
                      "over seeds (markers), per placement.",
                      alt="Line plot of validation loss against training step for "
                          + ", ".join(summary["labels"].values()) + ".")
    return ReportSection(title=options.get("title", "Validation loss"), figures=[figure],
                         tables=[Table("Final validation loss per placement", pd.DataFrame(rows))],
                         notes=[_seed_note(summary)])


# -- residual variance ----------------------------------------------------------------------------

def render_variance(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    summary = _summary(folder)
    curves = summary["curves"]

    def by_depth(ax):
        for placement in summary["placements"]:
            colour, marker = _style(placement)
            band = curves[placement]["variance"]
            depth = np.arange(len(band["mean"]))
            ax.fill_between(depth, band["low"], band["high"], color=colour, alpha=0.2, lw=0)
            ax.plot(depth, band["mean"], color=colour, marker=marker, ms=4, label=_short(summary, placement))
        ax.set_yscale("log")
        _integer_ticks(ax)
        ax.set_xlabel("residual depth (0 = embedding, ℓ = output of layer ℓ)")
        ax.set_ylabel("variance of the residual stream")
        ax.legend(frameon=False)

    def over_training(ax):
        for placement in summary["placements"]:
            record = curves[placement].get("variance_train")
            if not record:
                continue
            colour, marker = _style(placement)
            band = record["last_depth"]
            ax.fill_between(record["steps"], band["low"], band["high"], color=colour, alpha=0.2, lw=0)
            ax.plot(record["steps"], band["mean"], color=colour, marker=marker, ms=3, label=_short(summary, placement))
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"variance at depth {summary['n_layers']}")
        ax.legend(frameon=False)

    names = ", ".join(summary["labels"].values())
    figures = [
        one_axis(by_depth, (7, 3.8), "Residual-stream variance at every depth after training (all positions but "
                 "the first, held-out sequences): mean over seeds, band from the lowest to the highest seed.",
                 alt=f"Line plot on a log scale of residual variance against depth 0 to {summary['n_layers']} for "
                     f"{names}."),
        one_axis(over_training, (7, 3.4), "Variance of the last residual depth during training (training probe on "
                 "held-out windows): mean over seeds, band over seeds.",
                 alt=f"Line plot on a log scale of the variance at depth {summary['n_layers']} against training step "
                     f"for {names}."),
    ]
    rows = []
    for placement in summary["placements"]:
        m = summary["metrics"][placement]
        rows.append({"placement": summary["labels"][placement],
                     "slope of ln(variance) per layer": _interval_text(m["variance_log_slope"]),
                     "slope of variance per layer": _interval_text(m["variance_slope"]),
                     f"variance at depth {summary['n_layers']} / at depth 1": _interval_text(m["variance_last_over_first"])})
    return ReportSection(
        title=options.get("title", "Residual-stream variance with depth"),
        summary="The Curse of Depth: under Pre-LN the variance of the residual stream grows with depth; LayerNorm "
                "Scaling (each norm's output × 1/√ℓ) is meant to curb that growth.",
        figures=figures, tables=[Table("Fitted growth over depths 1..L (mean over seeds [interval over seeds])",
                                       pd.DataFrame(rows))],
        notes=[_seed_note(summary)])


# -- layer effectiveness --------------------------------------------------------------------------

def _per_layer(ax, summary, key: str, ylabel: str) -> None:
    placements = summary["placements"]
    width = 0.8 / max(len(placements), 1)
    for i, placement in enumerate(placements):
        colour, marker = _style(placement)
        c = summary["curves"][placement][key]
        layers = np.arange(1, len(c["estimate"]) + 1) + (i - (len(placements) - 1) / 2) * width
        estimate, low, high = (np.asarray(c[k], float) for k in ("estimate", "low", "high"))
        error = np.vstack([estimate - low, high - estimate])
        ax.errorbar(layers, estimate, yerr=np.where(np.isfinite(error), error, 0), color=colour, marker=marker,
                    ms=4, lw=1, capsize=2, label=_short(summary, placement))
    _shade_deep(ax, summary)
    _integer_ticks(ax)
    ax.set_xlabel("layer ℓ")
    ax.set_ylabel(ylabel)


def render_effectiveness(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    summary = _summary(folder)
    threshold = summary["ineffective_nats"]

    def angular(ax):
        _per_layer(ax, summary, "angular", "angular distance arccos(cos)/π")
        ax.legend(frameon=False, fontsize=7)

    def skip(ax):
        _per_layer(ax, summary, "skip", "loss change when skipped (nats)")
        ax.set_yscale("symlog", linthresh=threshold)
        ax.axhline(threshold, color="0.3", ls="--", lw=1, label=f"ineffective below {threshold:g} nats")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.legend(frameon=False, fontsize=7)

    names = ", ".join(summary["labels"].values())
    figures = [
        one_axis(angular, (7, 3.8), "Angular distance between the input and the output of each layer on the last "
                 "token of each held-out sequence (the papers' measure), mean over seeds, with a bootstrap interval "
                 "over sequences; deep layers shaded.",
                 alt=f"Points with error bars of the last-token angular distance per layer for {names}."),
        one_axis(skip, (7, 3.8), "Held-out loss change when one layer is skipped (its output replaced by its input), "
                 "mean over seeds, with a bootstrap interval over sequences; symmetric-log axis, linear below the "
                 f"ineffectiveness threshold of {threshold:g} nats (dashed).",
                 alt=f"Points with error bars of the loss increase when each layer is skipped for {names}, with a "
                     f"dashed line at {threshold:g} nats."),
    ]
    matrices = {p: summary["curves"][p].get("angular_matrix") for p in summary["placements"]}
    matrices = {p: np.asarray(m, float) for p, m in matrices.items() if m is not None}
    if matrices:
        fig, axes = panel_grid(len(matrices), size=(3.0, 2.8), columns=4)
        vmax = max(float(np.nanmax(m)) for m in matrices.values())
        for ax, (placement, matrix) in zip(axes, matrices.items()):
            image = ax.imshow(matrix, vmin=0, vmax=vmax, cmap="viridis", origin="lower")
            ax.set_title(_short(summary, placement))
            ax.set_xlabel("depth")
            ax.set_ylabel("depth")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=axes, shrink=0.8, label="angular distance")
        figures.append(Figure.from_matplotlib(
            fig, "Last-token angular distance between every pair of residual depths, mean over seeds and sequences.",
            alt=f"Heatmaps of the angular distance between residual depths, one per placement: {names}."))
    rows = []
    for placement in summary["placements"]:
        c = summary["curves"][placement]
        for layer in range(len(c["skip"]["estimate"])):
            rows.append({"placement": _short(summary, placement), "layer": layer + 1,
                         "angular distance [interval]": _interval_text({k: c["angular"][k][layer] for k in
                                                                        ("estimate", "low", "high", "n")}),
                         "loss change when skipped [interval]": _interval_text({k: c["skip"][k][layer] for k in
                                                                                ("estimate", "low", "high", "n")}),
                         "ineffective": ("yes" if c["skip"]["estimate"][layer] < threshold else "no")
                         if math.isfinite(c["skip"]["estimate"][layer]) else "–"})
    shares = [{"placement": summary["labels"][p],
               "ineffective deep layers [interval over seeds]": _interval_text(summary["metrics"][p]["ineffective_deep"]),
               "deep-layer skip loss [interval over seeds]": _interval_text(summary["metrics"][p]["skip_deep"], 3),
               "deep-layer angular distance [interval over seeds]": _interval_text(summary["metrics"][p]["angular_deep"])}
              for p in summary["placements"]]
    return ReportSection(
        title=options.get("title", "Layer effectiveness"),
        summary="How much each layer changes the residual stream and what the model loses without it. Near-zero "
                "values in the deep layers are the 'curse of depth'.",
        figures=figures,
        tables=[Table("Deep layers per placement", pd.DataFrame(shares)),
                Table("Per layer (mean over seeds [interval over sequences])", pd.DataFrame(rows))],
        notes=[_seed_note(summary)])


# -- gradient norms -------------------------------------------------------------------------------

def render_gradients(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    summary = _summary(folder)
    curves = summary["curves"]

    def draw(key: str):
        def plot(ax):
            for placement in summary["placements"]:
                band = curves[placement].get(key)
                if not band:
                    continue
                colour, marker = _style(placement)
                layers = np.arange(1, len(band["mean"]) + 1)
                ax.fill_between(layers, band["low"], band["high"], color=colour, alpha=0.2, lw=0)
                ax.plot(layers, band["mean"], color=colour, marker=marker, ms=4, label=_short(summary, placement))
            ax.set_yscale("log")
            _integer_ticks(ax)
            ax.set_xlabel("layer ℓ")
            ax.set_ylabel("gradient norm of the layer's parameters")
            ax.legend(frameon=False, fontsize=7)
        return plot

    names = ", ".join(summary["labels"].values())
    figures = [one_axis(draw("grad_train"), (7, 3.8),
                        "Gradient norm per layer during training (before clipping), averaged over the recorded steps "
                        f"from step {summary['grad_from_step']} (after warm-up): mean over seeds, band over seeds.",
                        alt=f"Line plot on a log scale of the training gradient norm per layer for {names}."),
               one_axis(draw("grad_end"), (7, 3.4),
                        "Gradient norm per layer of the held-out loss after training: mean over seeds, band over seeds.",
                        alt=f"Line plot on a log scale of the held-out gradient norm per layer for {names}.")]
    rows = [{"placement": summary["labels"][p],
             "spread: s.d. of ln‖g‖ over layers": _interval_text(summary["metrics"][p]["grad_spread"]),
             "deep / early mean gradient norm": _interval_text(summary["metrics"][p]["grad_deep_early"])}
            for p in summary["placements"]]
    return ReportSection(
        title=options.get("title", "Gradient norms per layer"),
        summary="Mix-LN: Pre-LN gives deep layers small gradients, Post-LN early ones; Mix-LN (Post-LN in the first "
                "quarter of the layers) is meant to even them out.",
        figures=figures, tables=[Table("Gradient evenness (mean over seeds [interval over seeds])", pd.DataFrame(rows))],
        notes=[_seed_note(summary)])


__all__ = ["render_claims", "render_effectiveness", "render_gradients", "render_loss", "render_variance"]
