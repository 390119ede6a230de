"""Landscape sections: the zoo's planes side by side (``landscapes``) and one surface in full (``landscape``).

Data of ``landscapes`` (``folder``)::

    summary.json   {"rows": [{"model": name, "status": "ok" | "diverged", numbers...}],
                    "models": [{"name", "label", "stem"}], "span", "resolution", "n_seq",
                    "notes": [str], "seconds": float}
    <stem>.npz, <stem>.metrics.json    per model whose status is "ok"

Data of ``landscape`` (``folder``): landscape.npz, metrics.json (when the grid allows metrics) and
section.json (``model_name``, ``log_scale``).
"""
from __future__ import annotations

import dataclasses
import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from normlens.io import read_json  # noqa: E402
from normlens.landscape.metrics import CURVATURE_NOTE  # noqa: E402
from normlens.landscape.results import LandscapeMetrics, LandscapeResult  # noqa: E402
from normlens.plots.landscape import (plot_landscape_1d, plot_landscape_2d, plot_landscape_3d,  # noqa: E402
                                      plot_landscapes)
from normlens.report.section import Figure, ReportSection, Table  # noqa: E402
from normlens.report.sections._common import panel_grid, short_label, wrap_label  # noqa: E402

DATA = "summary.json"
SECTION = "section.json"


def render_landscapes(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    folder = Path(folder)
    data = read_json(folder / DATA)
    labels = {m["name"]: m.get("label") or m["name"] for m in data["models"]}
    status = {row["model"]: row.get("status") for row in data["rows"]}
    results: dict[str, Optional[LandscapeResult]] = {}
    for m in data["models"]:
        label = labels[m["name"]]
        results[label] = LandscapeResult.load(folder / f"{m['stem']}.npz") if status.get(m["name"]) == "ok" else None
    span, resolution = data.get("span", 1.0), data.get("resolution", "?")
    figures = []
    listed = ", ".join(labels.values())
    if results:
        _, grid = panel_grid(len(results), size=(3.2, 3.0))  # rows of at most 3: text stays readable
        axes = plot_landscapes({wrap_label(n): r for n, r in results.items()}, axes=grid, log=True)
        figures.append(Figure.from_matplotlib(
            axes[0].figure,
            f"Loss over a filter-normalized random plane, span [−{span:g}, {span:g}]², {resolution}×{resolution} "
            "grid, 1-D parameters (biases, gains, DyT α) zeroed; one logarithmic colour scale for all models; "
            "★ = the model.",
            alt=f"Contour maps of the loss around each model on a shared logarithmic colour scale: {listed}."))
    present = {n: r for n, r in results.items() if r is not None}
    if present:
        fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
        for name, result in present.items():
            plot_landscape_1d(result, ax, axis=0, label=short_label(name), caption=False)
        title = next(iter(present.values())).describe() + " — line b = 0"
        ax.set_title("\n".join(textwrap.wrap(title, 90)))
        figures.append(Figure.from_matplotlib(
            fig, "Loss along the first direction (the b = 0 line of each plane).",
            alt=f"Line plot of the loss along the first direction through each model: {', '.join(present)}."))
    frame = pd.DataFrame([{**row, "model": labels.get(row["model"], row["model"])} for row in data["rows"]])
    notes = list(data.get("notes", [])) + [
        CURVATURE_NOTE,
        "Sharpness: largest loss increase over grid cells within radius r of the model (coefficient units).",
        f"Computed in {float(data.get('seconds', math.nan)):.1f} s; surfaces saved as .npz beside the report data.",
    ]
    return ReportSection(
        title=options.get("title", "Loss landscapes"),
        summary=(
            "Loss around each trained model on a 2-D plane spanned by two Gaussian directions, each filter-"
            "normalized to the model's own weights (Li et al. 2018), so planes of different models are "
            f"comparable. Loss over {data.get('n_seq', '?')} held-out sequences; the grid contains the model "
            "itself."),
        figures=figures,
        tables=[Table("Landscape numbers per model (curvatures are Rayleigh quotients, per unit ‖d‖²)", frame)],
        notes=notes,
    )


def render_landscape(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """One landscape: plots, surface numbers, sharpness and curvature."""
    folder = Path(folder)
    meta = read_json(folder / SECTION) if (folder / SECTION).is_file() else {}
    model_name, log = str(meta.get("model_name") or "model"), bool(meta.get("log_scale", False))
    result = LandscapeResult.load(folder / "landscape.npz")
    drawn = dataclasses.replace(result, model_name=wrap_label(result.model_name, 60)) if result.model_name else result
    metrics = LandscapeMetrics.load(folder / "metrics.json") if (folder / "metrics.json").is_file() else None
    plots = ((("landscape_1d", plot_landscape_1d, "Line plot of the loss along the axis"),) if result.ndim == 1 else
             (("landscape_2d", plot_landscape_2d, "Contour map of the loss over the plane"),
              ("landscape_3d", plot_landscape_3d, "Surface plot of the loss over the plane")))
    figures = []
    for name, draw, alt in plots:
        ax = draw(drawn, log=log)
        figures.append(Figure.from_matplotlib(ax.figure, f"{name.replace('_', ' ')}: {model_name}",
                                              alt=f"{alt} around {model_name}.", name=name))
    finite = np.isfinite(result.loss)
    n_bad = result.n_nonfinite
    rows = {"centre loss f(0)": result.center_loss,
            "min loss": float(np.nanmin(np.where(finite, result.loss, np.nan))) if finite.any() else float("nan"),
            "non-finite cells": n_bad, "cells": int(result.loss.size)}
    tables = [Table("Surface", pd.DataFrame({"quantity": list(rows), "value": list(rows.values())}))]
    notes = [f"{n_bad} cells are NaN/inf (diverged); they are masked in the plots."] if n_bad else []
    if result.info.get("excluded"):
        notes.append(f"Parameters held fixed: {result.info['excluded']}.")
    if result.info.get("interpolated_buffers"):
        notes.append(f"Buffers interpolated with the weights: {', '.join(result.info['interpolated_buffers'])}.")
    if metrics is not None:
        tables.append(Table("Sharpness: largest loss increase within radius r of the model", pd.DataFrame(
            [{"radius r": m.radius, "increase": m.increase, "relative to 1 + f(0)": m.relative,
              "at": ", ".join(f"{v:g}" for v in m.at), "cells inside": m.n_cells} for m in metrics.sharpness])))
        tables.append(Table("Curvature along each axis (Rayleigh quotients, per unit ‖d‖²)", pd.DataFrame(
            [{"axis": f"d{c.axis + 1}", "fit f''(0)": c.fit_second_derivative, "fit f''(0)/‖d‖²": c.fit_rayleigh,
              "Hessian dᵀHd/dᵀd": c.hessian_rayleigh, "relative difference": c.relative_error,
              "fit points": c.n_fit_points} for c in metrics.curvature])))
        notes.append(CURVATURE_NOTE)
    return ReportSection(
        f"Loss landscape: {model_name}",
        f"{result.kind} axes, normalization {result.normalization}, 1-D parameters {result.one_d}; "
        f"evaluation set {result.eval_name or 'given tokens'}; points evaluated by the "
        f"{result.info.get('forward_path', 'vmap')} forward.",
        figures, tables, notes,
    )


__all__ = ["render_landscape", "render_landscapes"]
