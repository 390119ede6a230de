"""Hessian sections: the zoo's spectra side by side (``hessian``) and one model in full (``hessian_model``).

Data of ``hessian`` (``folder``)::

    summary.json   {"rows": [{"model": name, "status": "ok" | "diverged" | "non-finite loss", ...numbers}],
                    "models": [{"name", "label", "stem"}], "settings": {...}, "notes": [str],
                    "seconds": float}
    <stem>_eigen.npz, <stem>_density.npz, <stem>_blocks.npz   per model whose status is "ok"

Data of ``hessian_model`` (``folder``): eigen.npz, trace.npz, density.npz, weight_spectra.npz,
blocks.npz (optional) and summary.json (``model``, ``k``, ``which``, numbers).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from normlens.curvature.results import (BlockSpectrumResult, DensityResult, EigenResult, TraceResult,
                                        WeightSpectraResult)
from normlens.io import read_json
from normlens.plots.curvature import plot_block_heatmap, plot_densities, plot_eigenvalues
from normlens.report.section import ReportSection, Table
from normlens.report.sections._common import one_axis, short_label, short_labels

DATA = "summary.json"



def _plus_minus(std_error: float) -> str:
    """" ± 0.12", or " (no error estimate)" when the estimator could not give one (NaN)."""
    return f" ± {std_error:.2g}" if math.isfinite(std_error) else " (no error estimate)"

def render_hessian_models(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    folder = Path(folder)
    data = read_json(folder / DATA)
    labels = {m["name"]: m.get("label") or m["name"] for m in data["models"]}
    short = short_labels(labels.values())  # figures carry short names; the table the full ones
    status = {row["model"]: row.get("status") for row in data["rows"]}
    eigen, densities, blocks = {}, {}, {}
    for m in data["models"]:
        if status.get(m["name"]) != "ok":
            continue
        label, stem = short[labels[m["name"]]], m["stem"]
        eigen[label] = EigenResult.load(folder / f"{stem}_eigen.npz")
        densities[label] = DensityResult.load(folder / f"{stem}_density.npz")
        if (folder / f"{stem}_blocks.npz").is_file():
            blocks[label] = dataclasses.replace(BlockSpectrumResult.load(folder / f"{stem}_blocks.npz"), model=label)
    settings = data.get("settings", {})
    figures = []
    listed = ", ".join(eigen)
    if eigen:
        figures.append(one_axis(lambda ax: plot_eigenvalues(eigen, ax=ax), (6.5, 3.6),
                                "Top Hessian eigenvalues per model.",
                                alt=f"Grouped bar chart of the top Hessian eigenvalues of {listed}."))
        figures.append(one_axis(
            lambda ax: plot_densities(densities, ax=ax), (6.5, 3.6),
            f"Hessian spectral densities ({settings.get('density_probes', 1)} SLQ probe, log-scale density); "
            "re=|λmin/λmax|, Kh = negative-to-positive square-root mass ratio (LLA criteria).",
            alt=f"Line plot of the estimated Hessian eigenvalue density on a log scale for {listed}."))
    if blocks:
        names = next(iter(blocks.values())).blocks
        empty = np.full(len(names), math.nan)  # a model without a Hessian: an empty (NaN) row
        rows = [blocks.get(short[labels[m["name"]]]) or BlockSpectrumResult(
            short[labels[m["name"]]], names, np.zeros(len(names), dtype=np.int64), empty, empty, 0)
            for m in data["models"]]
        figures.append(one_axis(
            lambda ax: plot_block_heatmap(rows, ax=ax), (9, 0.55 * len(rows) + 2.2),
            "Top eigenvalue of the Hessian restricted to each block's parameters "
            "(empty: no parameters there, e.g. the norms of the norm-free model).",
            alt="Heatmap of the top eigenvalue per model (rows: " + ", ".join(labels.values())
                + ") and block (columns)."))
    table = pd.DataFrame([{**row, "model": labels.get(row["model"], row["model"])} for row in data["rows"]])
    notes = list(data.get("notes", []))
    if settings:
        notes.insert(0, (
            f"Fast settings: one batch of {settings.get('n_seq')}x{settings.get('n_ctx')} held-out tokens, "
            f"{settings.get('top_steps')} fixed Lanczos steps for the top {settings.get('top_k')} "
            f"(max_rel_residual shows how far from converged), {settings.get('density_probes', 1)} SLQ probe of "
            f"{settings.get('density_steps')} steps, {settings.get('block_steps')} steps per block. "
            f"Use `normlens hessian` for converged values. Took {float(data.get('seconds', math.nan)):.1f} s."))
    top = {labels.get(r["model"], r["model"]): r["lambda_1"] for r in data["rows"] if "lambda_1" in r}
    summary = ("Curvature of the loss at the trained weights. Largest Hessian eigenvalue: "
               + ", ".join(f"{n} {v:.3g}" for n, v in top.items()) + "." if top else "No model could be analysed.")
    return ReportSection(options.get("title", "Hessian spectra"), summary, figures,
                         [Table("Hessian summary per model", table)], notes)


def render_hessian_model(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    folder = Path(folder)
    summary = read_json(folder / DATA)
    name = str(summary.get("model", "model"))
    shown = short_label(name)
    eigen = EigenResult.load(folder / "eigen.npz")
    trace = TraceResult.load(folder / "trace.npz")
    density = DensityResult.load(folder / "density.npz")
    weights = WeightSpectraResult.load(folder / "weight_spectra.npz")
    k, which = summary.get("k", len(eigen.eigenvalues)), summary.get("which", "largest")
    figures = [
        one_axis(lambda ax: plot_eigenvalues({shown: eigen}, ax=ax), (6, 3.5), f"Top {k} Hessian eigenvalues ({which}).",
                 alt=f"Bar chart of the {k} {which} Hessian eigenvalues of {name}.", name="eigenvalues"),
        one_axis(lambda ax: plot_densities({shown: density}, ax=ax), (6, 3.5), "Hessian spectral density (SLQ).",
                 alt=f"Line plot of the estimated Hessian eigenvalue density of {name} on a log scale.",
                 name="density"),
    ]
    if (folder / "blocks.npz").is_file():
        block = dataclasses.replace(BlockSpectrumResult.load(folder / "blocks.npz"), model=shown)
        figures.append(one_axis(lambda ax: plot_block_heatmap([block], ax=ax), (9, 2.6), "Top eigenvalue per block.",
                                alt=f"Heatmap of the top Hessian eigenvalue of each block of {name}.", name="blocks"))
    notes = [] if eigen.all_converged else [
        f"{int((~eigen.converged).sum())} eigenpairs did not converge; see the residuals."]
    n_params = summary.get("n_params", "?")
    return ReportSection(
        f"Hessian spectra: {name}",
        f"Top eigenvalue {eigen.eigenvalues[0]:.4g}, trace {trace.estimate:.4g}{_plus_minus(trace.std_error)}, "
        f"re={density.re:.3g}, Kh={density.kh:.3g} over {n_params} parameters.",
        figures, [Table("Eigenpairs", eigen.to_frame()), Table("Weight spectra", weights.to_frame())], notes)


__all__ = ["render_hessian_model", "render_hessian_models"]
