"""Demo-report section: probes on every zoo model, side by side."""
from __future__ import annotations

import time

import matplotlib.pyplot as plt
import pandas as pd
import torch

from normlens.io import save_frame
from normlens.plots.probes import (plot_angular_heatmap, plot_entropy_heatmap, plot_kurtosis_and_massive,
                                   plot_probe_accuracy, plot_residual_growth, plot_s_curve)
from normlens.probes.suite import run_probe_suite
from normlens.report.section import Figure, ReportSection, Table


def _grid(n: int, size=(3.2, 2.8)):
    fig, axes = plt.subplots(1, max(n, 1), figsize=(size[0] * max(n, 1), size[1]), squeeze=False)
    return fig, list(axes[0])


def build_section(study) -> ReportSection:
    """Activation statistics, norm S-curves, attention entropy, layer effectiveness and linear probes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids contention on a shared machine
    try:
        return _build_section(study)
    finally:
        torch.set_num_threads(threads)


def _build_section(study) -> ReportSection:
    start = time.perf_counter()
    tokens = study.eval_tokens[:8]
    results, notes = {}, []
    for name, model in study.models.items():
        if name in study.diverged:
            notes.append(f"{name}: diverged in training; not probed.")
            continue
        try:
            results[name] = run_probe_suite(model, tokens, seed=study.seed, s_curve_samples=512,
                                            probe_bytes=1 << 20)
        except (RuntimeError, ValueError) as err:  # a broken model must not take the report down
            notes.append(f"{name}: probes failed ({err}).")
            continue
        results[name].save(study.data_dir / "probes" / name.replace("→", "-to-"))
    return probes_section(results, study.data_dir / "probes", notes=notes, seconds=time.perf_counter() - start,
                          tokens_shape=tuple(tokens.shape))


def probes_section(results: dict, out, *, notes: list[str] | None = None, seconds: float | None = None,
                   tokens_shape: tuple[int, ...] | None = None) -> ReportSection:
    """The report section for probe-suite results of one or more models (``name -> ProbeSuiteResult``),
    side by side; the combined tables are also written to ``out`` as Parquet (unless ``out`` is None)."""
    notes = list(notes or [])
    names = list(results)
    stats = pd.concat([r.stats.to_frame().assign(model=n) for n, r in results.items()], ignore_index=True)
    heads = pd.concat([r.entropy.head_frame().assign(model=n) for n, r in results.items()], ignore_index=True)
    blocks = pd.concat([r.effectiveness.block_frame().assign(model=n) for n, r in results.items()], ignore_index=True)
    linear = pd.concat([r.linear.frame.assign(model=n) for n, r in results.items()], ignore_index=True)
    summary = pd.DataFrame([{"model": n, **r.entropy.summary(), "base_loss": r.effectiveness.base_loss,
                             "flagged_sites": int(stats.flagged[stats.model == n].sum())} for n, r in results.items()])
    for frame, file in ((stats, "activation_stats.parquet"), (heads, "attention_heads.parquet"),
                        (blocks, "blocks.parquet"), (linear, "linear_probes.parquet"), (summary, "summary.parquet")):
        if out is not None:
            save_frame(frame, out / file)

    def per_model(plot, field: str, caption: str) -> Figure:
        fig, axes = _grid(len(names))
        for ax, n in zip(axes, names):
            plot(getattr(results[n], field), ax=ax, title=n)
        return Figure.from_matplotlib(fig, caption)

    def one_axis(draw, size: tuple[float, float], caption: str) -> Figure:
        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        return Figure.from_matplotlib(fig, caption)

    figures = [
        per_model(plot_entropy_heatmap, "entropy",
                  "Mean normalized attention entropy per layer and head (> 0.75: entropic overload)."),
        one_axis(lambda ax: plot_residual_growth({n: r.growth for n, r in results.items()}, ax=ax), (5, 3.2),
                 "Residual-stream RMS vs depth, all models."),
        per_model(plot_s_curve, "s_curve", "Norm input vs output samples per slot (DyT S-curve)."),
        one_axis(lambda ax: len(stats) and plot_kurtosis_and_massive(stats, ax=ax), (6, 3.2),
                 "Residual stream: excess kurtosis and max/median |x| per depth."),
        per_model(plot_angular_heatmap, "effectiveness", "Angular distance arccos(cos)/π between residual depths."),
        one_axis(lambda ax: len(linear) and plot_probe_accuracy(linear, ax=ax), (5, 3.2),
                 "Linear (ridge) probes per depth: token accuracy, position R²."),
    ]
    flagged = stats[stats.flagged] if len(stats) else stats
    if len(flagged):
        notes.append(f"NaN/inf activations at {len(flagged)} (model, site) pairs; they are counted, not averaged in.")
    notes.append("Median |x| from a log-binned histogram (bins of 2^(1/128), 0.8 % relative); entropy computed "
                 "block-wise from q and k, never storing the attention matrix.")
    if seconds is not None and tokens_shape is not None:
        notes.append(f"Probes took {seconds:.1f} s on {'×'.join(map(str, tokens_shape))} tokens.")
    cols = ["model", "site", "group", "variance", "excess_kurtosis", "max_abs", "median_abs", "massive_ratio",
            "zero_fraction", "nan_count"]
    return ReportSection(
        title="Probes: activations, attention entropy, layer effectiveness",
        summary="Streaming statistics of every model's activations, its norms' input/output map, attention "
                "entropy per head, how much each block changes the residual stream, and what linear probes read.",
        figures=figures,
        tables=[Table("Per-model summary", summary), Table("Per-block effectiveness", blocks),
                Table("Residual stream statistics", stats[stats.kind == "resid"][cols] if len(stats) else stats)],
        notes=notes,
    )
