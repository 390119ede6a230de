"""The demo report's landscape section: the zoo's filter-normalized planes side by side."""
from __future__ import annotations

import re
import time
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from normlens.io import write_json  # noqa: E402
from normlens.landscape.directions import random_directions  # noqa: E402
from normlens.landscape.grid import compute_landscape  # noqa: E402
from normlens.landscape.metrics import CURVATURE_NOTE, compute_metrics  # noqa: E402
from normlens.landscape.results import LandscapeResult  # noqa: E402
from normlens.plots.landscape import plot_landscape_1d, plot_landscapes  # noqa: E402
from normlens.report.section import Figure, ReportSection, Table  # noqa: E402

RESOLUTION = 21  # 441 points per model: ~1 s each on 2 CPU cores (8 x 64 tokens, batched zoo forward)
SPAN = 1.0
N_SEQ = 8


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def build_section(study, *, resolution: int = RESOLUTION, span: float = SPAN, n_seq: int = N_SEQ) -> ReportSection:
    """Filter-normalized 2-D planes for every zoo model on one colour scale, plus numbers.

    Each model gets Gaussian directions from the same seed, filter-normalized to its
    own weights (Li et al. 2018), 1-D parameters zeroed; loss over the first
    ``n_seq`` held-out sequences. Diverged models are shown as such, not evaluated.
    Saves every surface (.npz) and the table (.csv, .json) under ``study.data_dir/landscape``.
    """
    start = time.perf_counter()
    out_dir = study.data_dir / "landscape"
    tokens = study.eval_tokens[:n_seq]
    results: dict[str, Optional[LandscapeResult]] = {}
    rows, notes = [], []
    for name, model in study.models.items():
        finite = all(torch.isfinite(p).all() for p in model.parameters())
        if name in study.diverged or not finite:
            results[name] = None
            notes.append(f"{name}: diverged in training (non-finite weights); not evaluated.")
            rows.append({"model": name, "loss f(0,0)": float("nan"), "status": "diverged"})
            continue
        directions = random_directions(model, 2, normalization="filter", one_d="zero", seed=study.seed)
        result = compute_landscape(model, directions, tokens, span=span, resolution=resolution,
                                   model_name=name, eval_name=f"{tokens.shape[0]} held-out sequences")
        metrics = compute_metrics(result, radii=(0.5, 1.0), n_side=1, model=model, directions=directions,
                                  eval_items=tokens)
        result.save(out_dir / f"{_file_name(name)}.npz")
        metrics.save(out_dir / f"{_file_name(name)}.metrics.json")
        results[name] = result
        row = {"model": name, "loss f(0,0)": result.center_loss,
               "sharpness r=0.5": metrics.sharpness[0].increase,
               "sharpness r=1": metrics.sharpness[1].increase}
        for c in metrics.curvature:
            row[f"fit curvature d{c.axis + 1}"] = c.fit_rayleigh
            row[f"Hessian dᵀHd/dᵀd d{c.axis + 1}"] = c.hessian_rayleigh
        row["non-finite cells"] = result.n_nonfinite
        row["status"] = "ok"
        rows.append(row)
        if result.n_nonfinite:
            notes.append(f"{name}: {result.n_nonfinite} grid cells gave NaN/inf loss (shown grey).")

    figures = []
    # log colour scale: one model's steep walls would otherwise flatten every other panel
    axes = plot_landscapes(results, log=True)
    figures.append(Figure.from_matplotlib(
        axes[0].figure,
        f"Loss over a filter-normalized random plane, span [−{span:g}, {span:g}]², {resolution}×{resolution} "
        "grid, 1-D parameters (biases, gains, DyT α) zeroed; one logarithmic colour scale for all models; "
        "★ = the model.",
    ))
    present = {n: r for n, r in results.items() if r is not None}
    if present:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for name, result in present.items():
            plot_landscape_1d(result, ax, axis=0, label=name, caption=False)
        ax.set_title(next(iter(present.values())).describe() + " — line b = 0", fontsize=7)
        figures.append(Figure.from_matplotlib(fig, "Loss along the first direction (the b = 0 line of each plane)."))
    frame = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / "summary.csv", index=False)
    write_json(out_dir / "summary.json", rows)
    elapsed = time.perf_counter() - start
    notes += [
        CURVATURE_NOTE,
        "Sharpness: largest loss increase over grid cells within radius r of the model (coefficient units).",
        f"Computed in {elapsed:.1f} s; surfaces saved under {out_dir}.",
    ]
    return ReportSection(
        title="Loss landscapes",
        summary=(
            "Loss around each trained model on a 2-D plane spanned by two Gaussian directions, each filter-"
            "normalized to the model's own weights (Li et al. 2018), so planes of different models are "
            f"comparable. Loss over {tokens.shape[0]} held-out sequences; the grid contains the model itself."
        ),
        figures=figures,
        tables=[Table("Landscape numbers per model (curvatures are Rayleigh quotients, per unit ‖d‖²)", frame)],
        notes=notes,
    )
