"""The Hessian section of the demo report: top eigenvalues, densities, per-block curvature.

Budget: about 15 s for five ~140k-parameter models on 2 CPU cores, so every
estimate is deliberately small and fixed-cost: one batch of a few short
sequences, a fixed number of Lanczos steps (no adaptive extension), one SLQ
probe. The section says so; residuals show how far each value is from converged.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from normlens.curvature.blocks import compute_block_spectra, transformer_blocks
from normlens.curvature.density import estimate_density
from normlens.hygiene import preserved_state
from normlens.curvature.lanczos import compute_eigenpairs
from normlens.curvature.operators import HessianOperator
from normlens.curvature.results import BlockSpectrumResult, DensityResult, EigenResult
from normlens.io import write_json
from normlens.report.section import Figure, ReportSection, Table
from normlens.study import ZooStudy

N_SEQ, N_CTX = 4, 32  # the batch the section differentiates
TOP_K, TOP_STEPS = 3, 14  # eigenpairs and fixed Lanczos steps
DENSITY_STEPS = 14  # one SLQ probe
BLOCK_STEPS = 6  # Lanczos steps per block (top eigenvalue only)


def render_figure(
    plot: Callable[..., Any], data: Any, caption: str, figsize: tuple[float, float],
    save_to: Path | None = None,
) -> Figure:
    """``plot(data, ax=ax)`` on a new figure of ``figsize``, saved as a PNG to ``save_to`` if given."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    plot(data, ax=ax)
    if save_to is not None:
        fig.savefig(save_to, dpi=110, bbox_inches="tight")
    return Figure.from_matplotlib(fig, caption)


def _blocks(n_layers: int) -> dict[str, str]:
    blocks = transformer_blocks(n_layers)
    return {k: v for k, v in blocks.items() if k.startswith("blocks.")}  # attn / mlp / norms per layer


def build_section(study: ZooStudy) -> ReportSection:
    """Compare the zoo's Hessians; results saved under ``study.data_dir / "hessian"``."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny products: one thread avoids oversubscription on shared cores
    try:
        return _build(study, start)
    finally:
        torch.set_num_threads(threads)


def _build(study: ZooStudy, start: float) -> ReportSection:
    from normlens.plots.curvature import plot_block_heatmap, plot_densities, plot_eigenvalues

    out = study.data_dir / "hessian"
    tokens = study.eval_tokens[:N_SEQ, :N_CTX]
    eigen: dict[str, EigenResult] = {}
    densities: dict[str, DensityResult] = {}
    block_results: dict[str, BlockSpectrumResult] = {}
    rows, notes = [], []
    for name, model in study.models.items():
        safe = "".join(c if c.isalnum() else "_" for c in name)
        if name in study.diverged:
            notes.append(f"{name}: training diverged; no Hessian (shown as NaN).")
            rows.append({"model": name, "status": "diverged"})
            continue
        try:
            with preserved_state(model):
                op = HessianOperator(model, tokens, method="double_backward")
                e = compute_eigenpairs(op, TOP_K, n_steps=TOP_STEPS, max_steps=TOP_STEPS,
                                       seed=study.seed, warn=False)
                d = estimate_density(op, n_probes=1, n_steps=DENSITY_STEPS, seed=study.seed)
                n_layers = getattr(model.cfg, "n_layers", 0)
                b = compute_block_spectra(model, tokens, blocks=_blocks(n_layers),
                                          n_steps=BLOCK_STEPS, seed=study.seed, name=name)
        except FloatingPointError as err:
            notes.append(f"{name}: {err}")
            rows.append({"model": name, "status": "non-finite loss"})
            continue
        eigen[name], densities[name] = e, d
        block_results[name] = b
        e.save(out / f"{safe}_eigen.npz")
        d.save(out / f"{safe}_density.npz")
        b.save(out / f"{safe}_blocks.npz")
        rows.append({
            "model": name, "status": "ok", "n_params": op.shape[0],
            **{f"lambda_{i + 1}": float(v) for i, v in enumerate(e.eigenvalues)},
            "max_rel_residual": float(np.max(e.residuals) / abs(e.eigenvalues[0])),
            "lambda_min (SLQ)": d.lambda_min, "re": d.re, "Kh": d.kh,
        })
    table = pd.DataFrame(rows)
    write_json(out / "summary.json", {"rows": rows, "n_seq": N_SEQ, "n_ctx": N_CTX,
                                      "top_steps": TOP_STEPS, "density_steps": DENSITY_STEPS,
                                      "block_steps": BLOCK_STEPS})
    figures = []
    if eigen:
        figures.append(render_figure(plot_eigenvalues, eigen, "Top Hessian eigenvalues per model.", (6, 3.5)))
        figures.append(render_figure(
            plot_densities, densities,
            "Hessian spectral densities (1 SLQ probe, log-scale density); re=|λmin/λmax|, "
            "Kh = negative-to-positive square-root mass ratio (LLA criteria).", (6, 3.5)))
        blocks = next(iter(block_results.values())).blocks
        empty = np.full(len(blocks), math.nan)  # a model without a Hessian: an empty (NaN) row
        heatmap_rows = [block_results.get(name) or BlockSpectrumResult(
            name, blocks, np.zeros(len(blocks), dtype=np.int64), empty, empty, 0) for name in study.models]
        figures.append(render_figure(
            plot_block_heatmap, heatmap_rows,
            "Top eigenvalue of the Hessian restricted to each block's parameters "
            "(empty: no parameters there, e.g. the norms of the norm-free model).",
            (8, 0.5 * len(heatmap_rows) + 2)))
    elapsed = time.perf_counter() - start
    notes.insert(0, (
        f"Fast settings for the demo budget: one batch of {N_SEQ}x{N_CTX} held-out tokens, "
        f"{TOP_STEPS} fixed Lanczos steps for the top {TOP_K} (max_rel_residual shows how far from "
        f"converged), 1 SLQ probe of {DENSITY_STEPS} steps, {BLOCK_STEPS} steps per block. "
        f"Use `normlens hessian` for converged values. Took {elapsed:.1f} s."
    ))
    top = {n: float(r.eigenvalues[0]) for n, r in eigen.items()}
    summary = (
        "Curvature of the loss at the trained weights. Largest Hessian eigenvalue: "
        + ", ".join(f"{n} {v:.3g}" for n, v in top.items())
        + "." if top else "No model could be analysed."
    )
    tables = [Table("Hessian summary per model", table)]
    return ReportSection("Hessian spectra", summary, figures, tables, notes)


__all__ = ["build_section"]
