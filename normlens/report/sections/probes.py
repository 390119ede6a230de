"""The probes section: activation statistics, norm S-curves, attention entropy, layer effectiveness
and linear probes of one or more models, side by side.

Data (``folder``)::

    section.json   {"models": [{"name", "label", "dir", "status": "ok" | "diverged" | "failed",
                                "note"}], "notes": [str], "seconds": float | null,
                    "tokens_shape": [n_seq, n_ctx] | null}
    <dir>/         ProbeSuiteResult.save(<dir>) of every model whose status is "ok", and
                   MassiveActivationResult.save(<dir>) where massive activations were looked for
    activation_stats.parquet, attention_heads.parquet, blocks.parquet, linear_probes.parquet,
    summary.parquet   the combined tables (with a "model" column), when models have their own dirs
    tables/        the paper-defined summaries, every model in one table ("model" = label):
      attention_metrics.parquet  overload / collapse / sink rate as their papers define them, with
                                 bootstrap intervals over sequences, beside the old variants
                                 (overload_fraction_normalized, sink_query_fraction)
      block_intervals.parquet    per block: last-token angular distance in→out and skip-loss change,
                                 95 % bootstrap intervals over sequences, gradient norm
      s_curve_fits.parquet       per norm slot: a·tanh(b·x) + c vs linear fit of the pre-affine S-curve
      dyt_alpha.parquet          DyT's α per norm slot
      massive_activations.parquet, massive_activation_sites.parquet   (Sun et al. 2024)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from normlens.io import load_frame, read_json, save_frame, write_json  # noqa: E402
from normlens.plots.probes import (plot_angular_heatmap, plot_block_effectiveness,  # noqa: E402
                                   plot_entropy_by_position, plot_entropy_heatmap, plot_kurtosis_and_massive,
                                   plot_probe_accuracy, plot_residual_growth, plot_s_curve, plot_sink_mass)
from normlens.probes.attention import AttentionEntropyResult  # noqa: E402
from normlens.probes.effectiveness import EffectivenessResult  # noqa: E402
from normlens.probes.linear import LinearProbeResult  # noqa: E402
from normlens.probes.massive import MassiveActivationResult  # noqa: E402
from normlens.probes.norm_probes import SCurveResult  # noqa: E402
from normlens.probes.stats import ActivationStatsResult  # noqa: E402
from normlens.probes.suite import ProbeSuiteResult  # noqa: E402
from normlens.report.section import Figure, ReportSection, Table  # noqa: E402
from normlens.report.sections._common import one_axis, panel_grid, short_labels, wrap_label  # noqa: E402

DATA = "section.json"
TABLES = "tables"
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


METRIC_NAMES = {"overload_fraction": "overload", "collapse_fraction": "collapse", "sink_rate": "sink",
                "mean_entropy_ratio": "ratio"}
MASSIVE_COLUMNS = ["model", "site", "layer", "batch", "pos", "channel", "value", "abs", "ratio"]


def paper_tables(results: Mapping[str, ProbeSuiteResult], massive: Mapping[str, MassiveActivationResult] | None = None,
                 *, level: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The paper-defined summaries of several models' results, each table with a "model" column.

    ``attention_metrics``: per model, the overload fraction (head's mean entropy / log T in
    [overload_threshold, 1], ReLU's Revival), the collapse fraction and the sink rate (share of heads
    whose mean first-token mass over queries >= skip_queries exceeds ε, Gu et al. 2024), each with a
    bootstrap interval over sequences (``_low``/``_high``), beside the old variants
    ``overload_fraction_normalized`` (per-query H / log n_visible averaged per head, > threshold) and
    ``sink_query_fraction`` (single queries of every position above ε). ``block_intervals``: the
    effectiveness intervals (:meth:`EffectivenessResult.interval_frame`) with the gradient norm per block.
    ``s_curve_fits``, ``dyt_alpha``, ``massive_activations``, ``massive_activation_sites``.
    """
    metrics, blocks, fits, alphas = [], [], [], []
    for name, r in results.items():
        e = r.entropy
        summary = e.summary()
        intervals = e.intervals(level=level, n_resamples=n_resamples, seed=seed)
        row = {"model": name}
        for key, short in METRIC_NAMES.items():
            iv = intervals[key]
            row |= {key: summary[key], f"{short}_low": iv.low, f"{short}_high": iv.high}
        row |= {"overload_fraction_normalized": summary["overload_fraction_normalized"],
                "sink_query_fraction": summary["sink_query_fraction"], "mean_entropy": summary["mean_entropy"],
                "overload_threshold": e.overload_threshold, "collapse_threshold": e.collapse_threshold,
                "sink_threshold": e.sink_threshold, "skip_queries": e.skip_queries,
                "n_heads": int(e.entropy_sum.shape[0] * e.entropy_sum.shape[1]),
                "n_sequences": int(len(e.sequence_length)), "level": level}
        metrics.append(row)
        eff = r.effectiveness
        frame = eff.interval_frame(level=level, n_resamples=n_resamples, seed=seed)
        blocks.append(frame.assign(grad_norm=eff.block_frame().grad_norm.to_numpy(),
                                   angular_positions=eff.angular_positions, model=name))
        fits.append(r.s_curve.fit_frame().assign(model=name))
        alphas.append(r.alphas.assign(model=name))
    found = {n: m for n, m in (massive or {}).items() if n in results}
    rows = [m.rows.assign(model=n) for n, m in found.items() if len(m.rows)]
    return {
        "attention_metrics": pd.DataFrame(metrics),
        "block_intervals": pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(),
        "s_curve_fits": pd.concat(fits, ignore_index=True) if fits else pd.DataFrame(),
        "dyt_alpha": (pd.concat(alphas, ignore_index=True) if alphas
                      else pd.DataFrame(columns=["slot", "layer", "alpha", "model"])),
        "massive_activations": (pd.concat(rows, ignore_index=True)[MASSIVE_COLUMNS] if rows
                                else pd.DataFrame(columns=MASSIVE_COLUMNS)),
        "massive_activation_sites": (pd.concat([m.per_site.assign(model=n, min_abs=m.min_abs, min_ratio=m.min_ratio)
                                                for n, m in found.items()], ignore_index=True)
                                     if found else pd.DataFrame()),
    }


def save_probes(folder: str | Path, results: Mapping[str, ProbeSuiteResult | None],
                models: Sequence[Mapping[str, Any]], *, notes: Sequence[str] = (), seconds: float | None = None,
                tokens_shape: Sequence[int] | None = None,
                massive: Mapping[str, MassiveActivationResult] | None = None, seed: int = 0,
                n_resamples: int = 1000) -> Path:
    """Write every model's results to ``folder/<dir>`` and the section's index (see the module docstring).

    ``models`` lists ``{"name", "label", "dir", "status", "note"}`` in report order; ``results`` maps
    names to results (None or absent: not probed); ``massive`` maps names to massive-activation
    results (absent: not looked for). The intervals of ``tables/`` resample sequences
    ``n_resamples`` times with ``seed``.
    """
    folder = Path(folder)
    massive = massive or {}
    for model in models:
        result = results.get(model["name"])
        if result is not None:
            result.save(folder / model["dir"])
        if massive.get(model["name"]) is not None:
            massive[model["name"]].save(folder / model["dir"])
    ok = [m for m in models if results.get(m["name"]) is not None]
    labelled = {m.get("label") or m["name"]: results[m["name"]] for m in ok}
    if all(m["dir"] not in (".", "") for m in models):
        for name, frame in _tables(labelled).items():
            save_frame(frame, folder / f"{name}.parquet")
    found = {m.get("label") or m["name"]: massive[m["name"]] for m in ok if massive.get(m["name"]) is not None}
    for name, frame in paper_tables(labelled, found, seed=seed, n_resamples=n_resamples).items():
        save_frame(frame, folder / TABLES / f"{name}.parquet")
    return write_json(folder / DATA, {"models": [dict(m) for m in models], "notes": list(notes),
                                      "seconds": seconds, "massive": sorted(found),
                                      "tokens_shape": list(tokens_shape) if tokens_shape is not None else None})


def _interval_text(value: float, low: float, high: float, digits: int = 3) -> str:
    """``0.125 [0.000, 0.250]``; the value alone when there is no interval."""
    if value is None or pd.isna(value):
        return "—"
    if pd.isna(low) or pd.isna(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _metrics_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The old and new overload and sink numbers side by side, intervals written out."""
    rows = []
    for r in frame.itertuples():
        rows.append({
            "model": r.model,
            f"overload (paper: mean H / log T ≥ {r.overload_threshold:g})":
                _interval_text(r.overload_fraction, r.overload_low, r.overload_high),
            f"overload, old (per-query normalized > {r.overload_threshold:g}; variant)":
                f"{r.overload_fraction_normalized:.3f}",
            f"collapse (mean H < {r.collapse_threshold:g} nats)":
                _interval_text(r.collapse_fraction, r.collapse_low, r.collapse_high),
            f"sink rate (paper: heads, mean first-token mass > ε = {r.sink_threshold:g}, queries ≥ {r.skip_queries})":
                _interval_text(r.sink_rate, r.sink_low, r.sink_high),
            f"sink, old (queries of every position > {r.sink_threshold:g}; variant)": f"{r.sink_query_fraction:.3f}",
            "mean H / log T": _interval_text(r.mean_entropy_ratio, r.ratio_low, r.ratio_high),
            "heads": int(r.n_heads), "sequences": int(r.n_sequences),
        })
    return pd.DataFrame(rows)


def _blocks_table(frame: pd.DataFrame) -> pd.DataFrame:
    if not len(frame):
        return frame
    return pd.DataFrame({
        "model": frame.model, "block": frame.layer.astype(int),
        "angular distance in→out": [_interval_text(v, lo, hi) for v, lo, hi in
                                    zip(frame.angular_in_out, frame.angular_low, frame.angular_high)],
        "loss change when skipped (nats)": [_interval_text(v, lo, hi, 4) for v, lo, hi in
                                            zip(frame.skip_loss_delta, frame.skip_low, frame.skip_high)],
        "gradient norm": frame.grad_norm, "sequences": frame.n_sequences.astype(int)})


def _fits_table(frame: pd.DataFrame) -> pd.DataFrame:
    if not len(frame):
        return frame
    return pd.DataFrame({"model": frame.model, "slot": frame.slot, "pre-affine": frame.pre_affine.map({True: "yes",
                                                                                                       False: "no"}),
                         "shape": frame["shape"], "R² tanh": frame.r2_tanh, "R² linear": frame.r2_linear,
                         "a": frame.tanh_a, "b": frame.tanh_b, "samples": frame.n_samples})


def _massive_note(tables: Mapping[str, pd.DataFrame], names: Sequence[str]) -> str:
    """What the detector found, in words (an empty table is a finding too)."""
    rows, sites = tables["massive_activations"], tables["massive_activation_sites"]
    if not len(sites):
        return "Massive activations were not looked for in these results."
    threshold = (f"|x| ≥ {sites.min_abs.iloc[0]:g} and ≥ {sites.min_ratio.iloc[0]:g} × the site's median |x| "
                 "(Sun et al. 2024)")
    peak = sites.assign(r=sites.max_abs / sites.median_abs).groupby("model", sort=False).r.max()
    largest = ", ".join(f"{n} {peak[n]:.0f}×" for n in names if n in peak.index)
    if not len(rows):
        return f"No massive activations: no residual-stream entry has {threshold}. Largest max/median: {largest}."
    counts = rows.groupby("model", sort=False).size()
    return (f"Massive activations ({threshold}): " + ", ".join(f"{n}: {counts[n]}" for n in counts.index)
            + f". Largest max/median: {largest}.")


def _load_tables(folder: Path, results: Mapping[str, ProbeSuiteResult],
                 massive: Mapping[str, MassiveActivationResult]) -> dict[str, pd.DataFrame]:
    """The saved ``tables/`` (results written before they existed: computed from the results)."""
    saved = folder / TABLES
    if saved.is_dir():
        return {p.stem: load_frame(p) for p in sorted(saved.glob("*.parquet"))}
    return paper_tables(results, massive)


def render_probes(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    folder = Path(folder)
    data = read_json(folder / DATA)
    results: dict[str, ProbeSuiteResult] = {}
    massive: dict[str, MassiveActivationResult] = {}
    fits: dict[str, pd.DataFrame] = {}
    notes = list(data.get("notes", []))
    for model in data["models"]:
        label = model.get("label") or model["name"]
        if model.get("status", "ok") == "ok":
            results[label] = load_probe_suite(folder / model["dir"])
            if (folder / model["dir"] / "massive_activations.json").is_file():
                massive[label] = MassiveActivationResult.load(folder / model["dir"])
            if (folder / model["dir"] / "s_curve_fit.parquet").is_file():
                fits[label] = load_frame(folder / model["dir"] / "s_curve_fit.parquet")
        elif model.get("note"):
            notes.append(f"{label}: {model['note']}")
    tables = _tables(results)
    paper = _load_tables(folder, results, massive) if results else {}
    names = list(results)

    short = short_labels(names)  # figures carry short names; the tables the full ones

    def per_model(draw, caption: str, alt: str, size=(3.2, 2.9)) -> Figure:
        fig, axes = panel_grid(len(names), size)
        for ax, n in zip(axes, names):
            draw(n, ax, wrap_label(n))
        return Figure.from_matplotlib(fig, caption, alt=alt)

    def field_plot(plot, field: str):
        return lambda n, ax, title: plot(getattr(results[n], field), ax=ax, title=title)

    figures = []
    if results:
        stats, linear = tables["activation_stats"], tables["linear_probes"]
        stats_fig = stats.assign(model=stats.model.map(short))
        linear_fig = linear.assign(model=linear.model.map(short))
        blocks = paper["block_intervals"]
        entropy = next(iter(results.values())).entropy
        listed = ", ".join(names)
        figures = [
            per_model(field_plot(plot_entropy_heatmap, "entropy"),
                      f"Mean attention entropy per layer and head over log T (outlined: ≥ {entropy.overload_threshold:g},"
                      " entropic overload as ReLU's Revival defines it: the head's entropy averaged over all queries "
                      "of a sequence against log T).",
                      f"Heatmaps of mean attention entropy over log T, layer by head, one panel per model: {listed}."),
            per_model(field_plot(plot_sink_mass, "entropy"),
                      f"Attention sinks per head: mean attention on the first token over queries ≥ "
                      f"{entropy.skip_queries}; the dashed line is ε = {entropy.sink_threshold:g} (Gu et al. 2024), "
                      "red heads are above it.",
                      f"Scatter plots of each head's mean first-token attention by layer with the threshold ε drawn, "
                      f"one panel per model: {listed}."),
            per_model(field_plot(plot_entropy_by_position, "entropy"),
                      "Per-query entropy over log(visible keys), mean per head (rows: layer L, head H) and "
                      "query-position bucket: how diffuse each head is at short and long context.",
                      f"Heatmaps of normalized attention entropy by head and query-position bucket, one panel per "
                      f"model: {listed}.", size=(3.4, 3.2)),
            one_axis(lambda ax: plot_residual_growth({short[n]: r.growth for n, r in results.items()}, ax=ax),
                     (5.5, 3.4), "Residual-stream RMS vs depth, all models.",
                     alt=f"Line plot of residual-stream RMS against depth on a log scale for {listed}."),
            per_model(lambda n, ax, title: plot_s_curve(results[n].s_curve, ax=ax, title=title, fits=fits.get(n)),
                      "Norm input vs normalized output before the affine, per slot (DyT's S-curve), with the fitted "
                      "a·tanh(b·x) + c per slot drawn over the samples.",
                      f"Scatter plots of norm input against normalized output per norm slot with fitted curves, one "
                      f"panel per model: {listed}."),
            one_axis(lambda ax: len(stats) and plot_kurtosis_and_massive(stats_fig, ax=ax), (7, 3.6),
                     "Residual stream: excess kurtosis and max/median |x| per depth.",
                     alt=f"Line plot of excess kurtosis and max/median |x| of the residual stream per depth for "
                         f"{listed}."),
            per_model(field_plot(plot_angular_heatmap, "effectiveness"),
                      "Angular distance arccos(cos)/π between residual depths, on the last token of each sequence "
                      "(as Gromov et al. and the Curse of Depth measure it).",
                      f"Heatmaps of the angular distance between residual-stream depths, one per model: {listed}."),
            per_model(lambda n, ax, title: plot_block_effectiveness(
                          None, ax=ax, title=title, frame=blocks[blocks.model == n].reset_index(drop=True)),
                      "Loss change when each block is skipped (output := input), with 95 % intervals of the mean over "
                      "sequences; the dotted line is no change.",
                      f"Error-bar plots of the loss change per skipped block, one panel per model: {listed}."),
            one_axis(lambda ax: len(linear) and plot_probe_accuracy(linear_fig, ax=ax), (6, 3.6),
                     "Linear (ridge) probes per depth: token accuracy, position R².",
                     alt=f"Line plot of held-out linear-probe scores per depth for {listed}."),
        ]
        flagged = stats[stats.flagged] if len(stats) else stats
        if len(flagged):
            notes.append(f"NaN/inf activations at {len(flagged)} (model, site) pairs; they are counted, "
                         "not averaged in.")
        metrics = paper["attention_metrics"]
        level = float(metrics.level.iloc[0]) if "level" in metrics and len(metrics) else 0.95
        notes.append(f"Intervals: {level:.0%}, over the {int(metrics.n_sequences.max())} probed sequences (per-head "
                     "fractions: bootstrap; means of per-sequence values: Student's t below 20 sequences, BCa above). "
                     "The 'old' columns are the per-query variants this toolkit reported before: they are not the "
                     "papers' quantities (the per-query normalization lifts every diffuse head above 3/4, and "
                     "counting single queries of every position makes query 0 count as a sink).")
        notes.append(_massive_note(paper, names))
    notes.append("Median |x| from a log-binned histogram (bins of 2^(1/128), 0.8 % relative); entropy computed "
                 "block-wise from q and k, never storing the attention matrix.")
    shape, seconds = data.get("tokens_shape"), data.get("seconds")
    if seconds is not None and shape:
        notes.append(f"Probes took {seconds:.1f} s on {'×'.join(map(str, shape))} tokens.")
    stats = tables.get("activation_stats", pd.DataFrame(columns=RESID_COLUMNS + ["kind"]))
    resid = stats[stats.kind == "resid"][RESID_COLUMNS] if len(stats) else pd.DataFrame(columns=RESID_COLUMNS)
    empty = pd.DataFrame()
    alphas = paper.get("dyt_alpha", empty)
    massive_rows = paper.get("massive_activations", empty)
    tables_out = [
        Table("Entropic overload, collapse and attention sinks: the papers' definitions (95 % intervals over "
              "sequences) beside the old per-query variants", _metrics_table(paper.get("attention_metrics", empty))),
        Table("Per-model summary", tables.get("summary", empty)),
        Table("Per-block effectiveness: last-token angular distance and skip loss with 95 % intervals",
              _blocks_table(paper.get("block_intervals", empty))),
        Table("S-curve fits per norm slot: a·tanh(b·x) + c against a straight line", _fits_table(paper.get("s_curve_fits",
                                                                                                          empty))),
    ]
    if len(alphas):
        tables_out.append(Table("DyT α per norm slot", alphas[["model", "slot", "layer", "alpha"]]))
    if len(massive_rows):
        tables_out.append(Table("Massive activations (residual stream): layer, position, channel, value, ratio to "
                                "the site's median |x|",
                                massive_rows[["model", "site", "layer", "pos", "channel", "value", "ratio"]]))
    tables_out.append(Table("Residual stream statistics", resid))
    return ReportSection(
        title=options.get("title", "Probes: activations, attention entropy, layer effectiveness"),
        summary="Streaming statistics of every model's activations, its norms' input/output map, attention "
                "entropy and sinks per head, how much each block changes the residual stream, massive activations, "
                "and what linear probes read.",
        figures=figures, tables=tables_out, notes=notes,
    )


__all__ = ["load_probe_suite", "paper_tables", "render_probes", "save_probes"]
