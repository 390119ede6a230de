"""Report sections of the curvature study, drawn only from the files its run saved.

* ``curvature_claims`` (``claims/units.json``): the three claims' tests, with intervals.
* ``curvature_spectra`` (``spectra/``): per model, batch-averaged top eigenvalues and LLA criteria
  with standard errors, convergence, and the SLQ densities.
* ``curvature_landscapes`` (``landscapes/``): random filter-normalized and Hessian-eigenvector
  planes with sharpness and per-axis curvature against the Hessian.
* ``curvature_weights`` (``weights/alpha.json``): weight-ESD α per layer kind, plain and FARMS.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analyses.common.curvature_claims import UNITS, judge_farms, judge_random_axes, judge_smoothing  # noqa: E402
from analyses.common.weight_alpha import FIT_LABELS, FITS  # noqa: E402
from normlens.curvature.results import BatchCurvatureResult, DensityResult  # noqa: E402
from normlens.io import read_json  # noqa: E402
from normlens.landscape.metrics import CURVATURE_NOTE  # noqa: E402
from normlens.landscape.results import LandscapeResult  # noqa: E402
from normlens.plots.curvature import plot_densities  # noqa: E402
from normlens.plots.landscape import plot_landscapes  # noqa: E402
from normlens.report.section import Figure, ReportSection, Table  # noqa: E402
from normlens.report.sections._common import panel_grid, short_label, wrap_label  # noqa: E402
from normlens.uncertainty import standard_error  # noqa: E402

SEED_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _kinds(models: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(m["kind"] for m in models))


def _unit_strip(ax, rows: Sequence[Mapping[str, Any]], value: str, order: Sequence[str], labels: Mapping[str, str],
                ylabel: str, log: bool = False) -> None:
    """Per model: one dot per (seed, batch), coloured by seed, and the mean as a black bar."""
    seeds = sorted({r["seed"] for r in rows})
    for x, kind in enumerate(order):
        mine = [r for r in rows if r["model"] == kind and r.get(value) is not None and math.isfinite(r[value])]
        for s, seed in enumerate(seeds):
            ys = [r[value] for r in mine if r["seed"] == seed]
            offsets = np.linspace(-0.15, 0.15, max(len(ys), 1)) + (s - (len(seeds) - 1) / 2) * 0.3
            ax.scatter(x + offsets[: len(ys)], ys, s=18, color=SEED_COLOURS[s % len(SEED_COLOURS)],
                       label=f"seed {seed}" if x == 0 else None, zorder=3)
        if mine:
            ax.hlines(np.mean([r[value] for r in mine]), x - 0.4, x + 0.4, color="black", lw=2, zorder=4,
                      label="mean" if x == 0 else None)
    ax.set_xticks(range(len(order)), [wrap_label(labels.get(k, k), 16) for k in order])
    if log and all(r[value] > 0 for r in rows if r.get(value) is not None and math.isfinite(r[value])):
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")


def render_curvature_claims(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    units = read_json(Path(folder) / UNITS.name)
    labels = units.get("labels", {})
    order = [*units["normalized"], *units.get("others", []), units["reference"]]
    claims = [judge_smoothing(units), judge_random_axes(units), judge_farms(units)]
    figures = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    _unit_strip(axes[0], units["landscape"], "sharpness_random", order, labels,
                f"loss rise within r = {units.get('radius', 1.0):g} (nats)")
    axes[0].set_title("Random filter-normalized plane: sharpness")
    _unit_strip(axes[1], units["ratio"], "ratio", order, labels, "dᵀHd/dᵀd ÷ λmax", log=True)
    axes[1].set_title("Curvature a random axis sees, share of λmax")
    n_seeds, n_batches = len(units.get("seeds", [])), units.get("n_batches", "?")
    figures.append(Figure.from_matplotlib(
        fig, f"Left: sharpness of the random filter-normalized plane per batch (Li et al. 2018's test here: larger "
             f"without normalization). Right: mean Rayleigh quotient of random filter-normalized directions over "
             f"λmax on the same batch (the LLA test: smaller with normalization). Dots: {n_seeds} seeds × "
             f"{n_batches} batches; bar: mean.",
        alt="Two strip plots, one dot per seed and batch for each model: left the random-plane sharpness, right "
            "the share of the top Hessian eigenvalue that random axes see, on a log scale."))
    tables = [Table(f"{c.paper}: {c.claim} — {c.outcome}", pd.DataFrame(c.rows)) for c in claims]
    notes = [f"{c.paper}: {c.outcome}. {c.detail[0].upper() + c.detail[1:]}." for c in claims]
    notes += [
        "Comparisons are paired: differences are taken between models trained with the same seed (same initial "
        "weights and batch order) on the same held-out batch, and the interval is a 95% interval of the "
        "mean paired difference (Student's t below 20 pairs, BCa bootstrap above). With 2 seeds × 4 batches the "
        "pairs share seeds, so the interval mostly reflects batch-to-batch spread within those seeds.",
        "Outcome rule: agrees when every normalized model's interval lies on the claim's side of 0, disagrees when "
        "every one lies on the other side, inconclusive otherwise. 'Normalized' means LayerNorm and RMSNorm "
        "(statistics over features, as in the LLA paper's normalization layers); DyT is shown but not counted.",
        "λmax is the top eigenvalue of the Hessian of the batch's loss over all trainable parameters (Lanczos); "
        "the random directions are Gaussian, filter-normalized to each model with 1-D parameters zeroed.",
        "FARMS test: at initialization the weights are i.i.d., so any difference in α between the 4:1 MLP matrices "
        "and the square attention matrices of the same layer is aspect-ratio bias. The plain ESD is fitted with the "
        "same median xmin as FARMS, so the two differ only by the windows.",
    ]
    return ReportSection(
        title=options.get("title", "The three claims, tested"),
        summary=("Each published claim is turned into one paired comparison with an interval; the verdict at the "
                 "top of the report is computed from these numbers."),
        figures=figures, tables=tables, notes=notes)


_SPECTRA_COLUMNS = {
    "label": "model", "lambda_1 mean": "λ1 (batch mean)", "lambda_1 SE": "λ1 SE", "lambda_2 mean": "λ2 (batch mean)",
    "lambda_2 SE": "λ2 SE", "re mean": "re (batch mean)", "re SE": "re SE", "kh mean": "Kh (batch mean)",
    "kh SE": "Kh SE", "pooled lambda_1 (weights)": "λ1 pooled (≥2-D weights)",
    "pooled re (SLQ)": "re pooled (SLQ)", "pooled Kh (SLQ)": "Kh pooled (SLQ)", "converged": "converged",
    "n_batches": "batches", "status": "status",
}


def render_curvature_spectra(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    folder = Path(folder)
    data = read_json(folder / "summary.json")
    settings = data.get("settings", {})
    rows = [r for r in data["rows"]]
    ok = [r for r in rows if r.get("status") == "ok"]
    kinds = _kinds(data["models"])
    figures = []
    if ok:
        _, axes = panel_grid(len(kinds), size=(4.6, 3.0), columns=2)
        for ax, kind in zip(axes, kinds):
            densities = {f"seed {r['seed']}": DensityResult.load(folder / f"{r['stem']}_density.npz")
                         for r in ok if r["model"] == kind}
            if densities:
                plot_densities(densities, ax=ax)
            ax.set_title(short_label(next((r["label"].rsplit(",", 1)[0] for r in rows if r["model"] == kind), kind)),
                         fontsize=9)
        figures.append(Figure.from_matplotlib(
            axes[0].figure,
            f"Hessian spectral density of the loss over all {data.get('n_batches')} batches (SLQ, "
            f"{settings.get('density_probes')} probes × {settings.get('density_steps')} Lanczos steps, "
            "Gaussian-smoothed, log density); re = |λmin/λmax|, Kh = negative-to-positive square-root mass ratio "
            "(the LLA criteria).",
            alt="One panel per normalization with the estimated Hessian eigenvalue density of each seed on a log "
                "scale."))
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        for ax, (metric, column, title) in zip(axes, ((0, "lambda_1", "top eigenvalue λ1"), (None, "kh", "Kh"))):
            for i, r in enumerate(ok):
                result = BatchCurvatureResult.load(folder / f"{r['stem']}_batches.npz")
                values = result.eigenvalues[:, metric] if metric is not None else result.kh
                ax.errorbar(i, float(np.nanmean(values)), yerr=standard_error(values), fmt="o", capsize=4,
                            color="black")
                ax.scatter(np.full(len(values), i + 0.15), values, s=10, color="tab:blue", alpha=0.7,
                           label="one batch" if i == 0 else None)
            ax.set_xticks(range(len(ok)), [short_label(r["label"], 30) for r in ok], fontsize=7, rotation=40,
                          ha="right")
            ax.set_title(f"{title}: per batch, mean ± standard error")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize="small")
        figures.append(Figure.from_matplotlib(
            fig, f"Top Hessian eigenvalue and Kh on each of {data.get('n_batches')} held-out batches "
                 f"({data.get('batch_shape', ['?', '?'])[0]}×{data.get('batch_shape', ['?', '?'])[1]} tokens) and "
                 "their mean ± standard error, per model and seed.",
            alt="Two dot plots, one column per model and seed: the per-batch top eigenvalue and Kh with their "
                "mean and standard error."))
    frame = pd.DataFrame([{new: r.get(old) for old, new in _SPECTRA_COLUMNS.items()} for r in rows])
    notes = [
        f"Per batch: top-{settings.get('top_k')} eigenpairs by Lanczos ({settings.get('top_steps')} steps, extended up "
        f"to {settings.get('max_steps')} until the relative residual is ≤ {settings.get('tol')}), re and Kh from an "
        f"SLQ density of {settings.get('density_probes')} probes × {settings.get('density_steps')} steps; SE = "
        "standard error over batches. 'Pooled' values are over all batches at once: λ1 of the Hessian restricted "
        "to the ≥2-D weights (the Hessian axes of the landscapes), re and Kh from the density plotted here.",
        *data.get("notes", []),
    ]
    return ReportSection(
        title=options.get("title", "Hessian spectra and LLA criteria"),
        summary=("Top Hessian eigenvalues and the LLA criteria re and Kh, averaged over held-out batches with "
                 "standard errors, and the Hessian's spectral density, for every model and seed."),
        figures=figures, tables=[Table("Per model: batch means, standard errors and pooled values", frame)],
        notes=notes)


def render_curvature_landscapes(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    folder = Path(folder)
    data = read_json(folder / "summary.json")
    settings = data.get("settings", {})
    rows = data["rows"]
    ok = [r for r in rows if r.get("status") == "ok"]
    first_seed = min((r["seed"] for r in ok), default=None)
    shown = [r for r in ok if r["seed"] == first_seed]
    figures = []
    for plane, caption in (
            ("random", f"Loss over a random plane, two Gaussian directions filter-normalized to each model (Li et al. "
                       f"2018), 1-D parameters zeroed, span [−{settings.get('random_span')}, "
                       f"{settings.get('random_span')}]²"),
            ("hessian", f"Loss over the plane of the top-2 Hessian eigenvectors of the ≥2-D weights (unit vectors, "
                        f"the LLA paper's axes), span [−{settings.get('hessian_span')}, "
                        f"{settings.get('hessian_span')}]² in parameter distance")):
        if not shown:
            continue
        results = {wrap_label(r["label"]): LandscapeResult.load(folder / f"{r['stem']}_{plane}.npz") for r in shown}
        fig, axes = panel_grid(len(results), size=(3.3, 3.0))
        plot_landscapes(results, axes=axes, log=True)
        figures.append(Figure.from_matplotlib(
            fig, f"{caption}; {settings.get('resolution')}×{settings.get('resolution')} grid, loss over "
                 f"{data.get('n_batches')} held-out batches, seed {first_seed}; one logarithmic colour scale; "
                 "★ = the model. Every seed's numbers are in the table.",
            alt=f"Contour maps of the loss around each model on {plane} axes: "
                + ", ".join(r["label"] for r in shown) + "."))
    keep = ["label", "center loss"] + [k for k in (rows[0] if ok else {}) if k.startswith(("random", "hessian"))]
    keep += ["pooled ratio d1 / λ1 (weights)", "status"]
    frame = pd.DataFrame([{("model" if k == "label" else k): r.get(k) for k in keep} for r in rows])
    notes = [
        CURVATURE_NOTE,
        "Sharpness: largest loss increase over grid cells within radius r of the model (coefficient units), on "
        "the plane pooled over all batches; the claims section uses the per-batch values.",
        "On the Hessian plane the fit along d1 should match λ1 (pooled): the axes see the top curvature; on the "
        "random plane dᵀHd/dᵀd is what a filter-normalized axis sees, 'pooled ratio' its share of λ1.",
    ]
    return ReportSection(
        title=options.get("title", "Landscapes on random and Hessian axes"),
        summary=("Each model's loss around its weights on two planes: random filter-normalized directions (Li et al. "
                 "2018) and the top-2 Hessian eigenvectors (the LLA paper), evaluated on every held-out batch."),
        figures=figures,
        tables=[Table("Sharpness and per-axis curvature (Rayleigh quotients, per unit ‖d‖²), every model and seed",
                      frame)],
        notes=notes)


def _alpha_summary(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    out = []
    for (phase, kind), group in frame.groupby(["phase", "kind"], sort=False):
        row = {"weights": "at initialization" if phase == "init" else "trained", "matrix kind": kind,
               "group": group["group"].iloc[0], "shape": f"{group['rows'].iloc[0]}×{group['cols'].iloc[0]}",
               "aspect ratio": float(group["aspect"].iloc[0]), "matrices": len(group)}
        for fit in FITS:
            values = group[f"alpha_{fit}"].to_numpy(float)
            row[f"α {FIT_LABELS[fit]}"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            row[f"SE {FIT_LABELS[fit]}"] = standard_error(values)
        out.append(row)
    return pd.DataFrame(out)


def render_curvature_weights(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    data = read_json(Path(folder) / "alpha.json")
    summary = _alpha_summary(data["rows"])
    figures = []
    phases = [p for p in ("at initialization", "trained") if p in set(summary["weights"])]
    if phases:
        fig, axes = plt.subplots(1, len(phases), figsize=(5.2 * len(phases), 3.9), layout="constrained", squeeze=False)
        markers = {"esd_ks": "s", "esd_median": "o", "farms": "D"}
        for ax, phase in zip(axes[0], phases):
            part = summary[summary["weights"] == phase].reset_index(drop=True)
            x = np.arange(len(part))
            for i, fit in enumerate(FITS):
                ax.errorbar(x + (i - 1) * 0.2, part[f"α {FIT_LABELS[fit]}"], yerr=part[f"SE {FIT_LABELS[fit]}"],
                            fmt=markers[fit], capsize=3, label=FIT_LABELS[fit])
            ax.set_xticks(x, [f"{k}\n{s} ({a:g}:1)" for k, s, a in zip(part["matrix kind"], part["shape"],
                                                                       part["aspect ratio"])],
                          rotation=45, ha="right", fontsize=7)
            ax.set_ylabel("power-law α of the ESD tail")
            ax.set_title(f"Weights {phase}")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize="small")
        figures.append(Figure.from_matplotlib(
            fig, "Heavy-tail α of each weight-matrix kind (mean ± standard error over layers, seeds and, once trained, "
                 "models), by the plain ESD (KS-chosen or median xmin) and by FARMS (fixed-aspect-ratio windows, "
                 "median xmin). At initialization every matrix is i.i.d.: α should not depend on the shape.",
            alt="Dot plots of α per weight-matrix kind, labelled with shape and aspect ratio, for the three fits, at "
                "initialization and after training."))
    windows = sorted({tuple(r["farms_window"]) for r in data["rows"]})
    notes = [
        "FARMS windows used (rows × cols): " + ", ".join(f"{a}×{b}" for a, b in windows)
        + " — the authors' 100×200 window shrunk at the same 1:2 aspect ratio where a matrix is smaller.",
        "Embedding matrices are listed but left out of the FARMS test (the authors' code reads linear layers only).",
    ]
    return ReportSection(
        title=options.get("title", "Weight spectra: plain ESD α vs FARMS α"),
        summary=("Power-law exponent α of each weight matrix's empirical spectral density, fitted on the whole "
                 "matrix (plain ESD) and on pooled fixed-aspect-ratio windows (FARMS), per matrix kind."),
        figures=figures, tables=[Table("α per matrix kind (mean and standard error)", summary)], notes=notes)


__all__ = ["render_curvature_claims", "render_curvature_landscapes", "render_curvature_spectra",
           "render_curvature_weights"]
