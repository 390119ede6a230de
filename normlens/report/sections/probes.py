"""The probes section: activation statistics, norm S-curves, attention entropy, layer effectiveness
and linear probes of one or more models, side by side.

Data (``folder``)::

    section.json   {"models": [{"name", "label", "dir", "status": "ok" | "diverged" | "failed",
                                "note"}], "notes": [str], "seconds": float | null,
                    "tokens_shape": [n_seq, n_ctx] | null}
    <dir>/         ProbeSuiteResult.save(<dir>) of every model whose status is "ok"
    activation_stats.parquet, attention_heads.parquet, blocks.parquet, linear_probes.parquet,
    summary.parquet   the combined tables (with a "model" column), when models have their own dirs
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from normlens.io import load_frame, read_json, save_frame, write_json  # noqa: E402
from normlens.plots.probes import (plot_angular_heatmap, plot_entropy_heatmap,  # noqa: E402
                                   plot_kurtosis_and_massive, plot_probe_accuracy, plot_residual_growth,
                                   plot_s_curve)
from normlens.probes.attention import AttentionEntropyResult  # noqa: E402
from normlens.probes.effectiveness import EffectivenessResult  # noqa: E402
from normlens.probes.linear import LinearProbeResult  # noqa: E402
from normlens.probes.norm_probes import SCurveResult  # noqa: E402
from normlens.probes.stats import ActivationStatsResult  # noqa: E402
from normlens.probes.suite import ProbeSuiteResult  # noqa: E402
from normlens.report.section import Figure, ReportSection, Table  # noqa: E402
from normlens.report.sections._common import one_axis, panel_grid, short_labels, wrap_label  # noqa: E402

DATA = "section.json"
RESID_COLUMNS = ["model", "site", "group", "variance", "excess_kurtosis", "max_abs", "median_abs", "massive_ratio",
                 "zero_fraction", "nan_count"]


def load_probe_suite(folder: str | Path) -> ProbeSuiteResult:
    """A ProbeSuiteResult read back from the files ``ProbeSuiteResult.save(folder)`` wrote."""
    folder = Path(folder)
    return ProbeSuiteResult(
        ActivationStatsResult.load(folder), ActivationStatsResult.load(folder / "norm_scale"),
        SCurveResult.load(folder), AttentionEntropyResult.load(folder), EffectivenessResult.load(folder),
        LinearProbeResult.load(folder), load_frame(folder / "dyt_alpha.parquet"),
        load_frame(folder / "residual_growth.parquet"))


def _tables(results: Mapping[str, ProbeSuiteResult]) -> dict[str, pd.DataFrame]:
    """The combined tables of several models' results, each with a "model" column (the label)."""
    if not results:
        return {}
    stats = pd.concat([r.stats.to_frame().assign(model=n) for n, r in results.items()], ignore_index=True)
    return {
        "activation_stats": stats,
        "attention_heads": pd.concat([r.entropy.head_frame().assign(model=n) for n, r in results.items()],
                                     ignore_index=True),
        "blocks": pd.concat([r.effectiveness.block_frame().assign(model=n) for n, r in results.items()],
                            ignore_index=True),
        "linear_probes": pd.concat([r.linear.frame.assign(model=n) for n, r in results.items()],
                                   ignore_index=True),
        "summary": pd.DataFrame([{"model": n, **r.entropy.summary(), "base_loss": r.effectiveness.base_loss,
                                  "flagged_sites": int(stats.flagged[stats.model == n].sum())}
                                 for n, r in results.items()]),
    }


def save_probes(folder: str | Path, results: Mapping[str, ProbeSuiteResult | None],
                models: Sequence[Mapping[str, Any]], *, notes: Sequence[str] = (), seconds: float | None = None,
                tokens_shape: Sequence[int] | None = None) -> Path:
    """Write every model's results to ``folder/<dir>`` and the section's index (see the module docstring).

    ``models`` lists ``{"name", "label", "dir", "status", "note"}`` in report order; ``results`` maps
    names to results (None or absent: not probed).
    """
    folder = Path(folder)
    for model in models:
        result = results.get(model["name"])
        if result is not None:
            result.save(folder / model["dir"])
    if all(m["dir"] not in (".", "") for m in models):
        labelled = {m.get("label") or m["name"]: results[m["name"]] for m in models
                    if results.get(m["name"]) is not None}
        for name, frame in _tables(labelled).items():
            save_frame(frame, folder / f"{name}.parquet")
    return write_json(folder / DATA, {"models": [dict(m) for m in models], "notes": list(notes),
                                      "seconds": seconds,
                                      "tokens_shape": list(tokens_shape) if tokens_shape is not None else None})


def render_probes(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    folder = Path(folder)
    data = read_json(folder / DATA)
    results: dict[str, ProbeSuiteResult] = {}
    notes = list(data.get("notes", []))
    for model in data["models"]:
        label = model.get("label") or model["name"]
        if model.get("status", "ok") == "ok":
            results[label] = load_probe_suite(folder / model["dir"])
        elif model.get("note"):
            notes.append(f"{label}: {model['note']}")
    tables = _tables(results)
    names = list(results)

    short = short_labels(names)  # figures carry short names; the tables the full ones

    def per_model(plot, field: str, caption: str, alt: str, size=(3.2, 2.9)) -> Figure:
        fig, axes = panel_grid(len(names), size)
        for ax, n in zip(axes, names):
            plot(getattr(results[n], field), ax=ax, title=wrap_label(n))
        return Figure.from_matplotlib(fig, caption, alt=alt)

    figures = []
    if results:
        stats, linear = tables["activation_stats"], tables["linear_probes"]
        stats_fig = stats.assign(model=stats.model.map(short))
        linear_fig = linear.assign(model=linear.model.map(short))
        listed = ", ".join(names)
        figures = [
            per_model(plot_entropy_heatmap, "entropy",
                      "Mean attention entropy per layer and head relative to its maximum (≥ 0.75: entropic "
                      "overload, as ReLU's Revival defines it).",
                      f"Heatmaps of normalized attention entropy, layer by head, one panel per model: {listed}."),
            one_axis(lambda ax: plot_residual_growth({short[n]: r.growth for n, r in results.items()}, ax=ax), (5.5, 3.4),
                     "Residual-stream RMS vs depth, all models.",
                     alt=f"Line plot of residual-stream RMS against depth on a log scale for {listed}."),
            per_model(plot_s_curve, "s_curve", "Norm input vs output samples per slot (DyT S-curve).",
                      f"Scatter plots of norm input against norm output per norm slot, one panel per model: "
                      f"{listed}."),
            one_axis(lambda ax: len(stats) and plot_kurtosis_and_massive(stats_fig, ax=ax), (7, 3.6),
                     "Residual stream: excess kurtosis and max/median |x| per depth.",
                     alt=f"Line plot of excess kurtosis and max/median |x| of the residual stream per depth for "
                         f"{listed}."),
            per_model(plot_angular_heatmap, "effectiveness",
                      "Angular distance arccos(cos)/π between residual depths.",
                      f"Heatmaps of the angular distance between residual-stream depths, one per model: {listed}."),
            one_axis(lambda ax: len(linear) and plot_probe_accuracy(linear_fig, ax=ax), (6, 3.6),
                     "Linear (ridge) probes per depth: token accuracy, position R².",
                     alt=f"Line plot of held-out linear-probe scores per depth for {listed}."),
        ]
        flagged = stats[stats.flagged] if len(stats) else stats
        if len(flagged):
            notes.append(f"NaN/inf activations at {len(flagged)} (model, site) pairs; they are counted, "
                         "not averaged in.")
    notes.append("Median |x| from a log-binned histogram (bins of 2^(1/128), 0.8 % relative); entropy computed "
                 "block-wise from q and k, never storing the attention matrix.")
    shape, seconds = data.get("tokens_shape"), data.get("seconds")
    if seconds is not None and shape:
        notes.append(f"Probes took {seconds:.1f} s on {'×'.join(map(str, shape))} tokens.")
    stats = tables.get("activation_stats", pd.DataFrame(columns=RESID_COLUMNS + ["kind"]))
    resid = stats[stats.kind == "resid"][RESID_COLUMNS] if len(stats) else pd.DataFrame(columns=RESID_COLUMNS)
    return ReportSection(
        title=options.get("title", "Probes: activations, attention entropy, layer effectiveness"),
        summary="Streaming statistics of every model's activations, its norms' input/output map, attention "
                "entropy per head, how much each block changes the residual stream, and what linear probes read.",
        figures=figures,
        tables=[Table("Per-model summary", tables.get("summary", pd.DataFrame())),
                Table("Per-block effectiveness", tables.get("blocks", pd.DataFrame())),
                Table("Residual stream statistics", resid)],
        notes=notes,
    )


__all__ = ["load_probe_suite", "render_probes", "save_probes"]
