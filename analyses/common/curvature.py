"""Hessian spectra of every model of a set; results saved for the ``hessian`` renderer.

Quick settings: about 15 s for five ~140k-parameter models on 2 CPU cores, so every estimate is
deliberately small and fixed-cost: one batch of a few short sequences, a fixed number of Lanczos
steps (no adaptive extension), one SLQ probe. The report says so; residuals show how far each
value is from converged.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from analyses.common.inputs import ModelSet
from analyses.common.threads import torch_threads
from normlens.curvature.blocks import compute_block_spectra, transformer_blocks
from normlens.curvature.density import estimate_density
from normlens.curvature.lanczos import compute_eigenpairs
from normlens.curvature.operators import HessianOperator
from normlens.hygiene import preserved_state
from normlens.io import write_json
from normlens.report.manifest import SectionRef
from normlens.report.sections._common import file_stem


@dataclass(frozen=True)
class HessianSettings:
    n_seq: int = 4  # the batch differentiated: n_seq x n_ctx held-out tokens
    n_ctx: int = 32
    top_k: int = 3  # eigenpairs, from a fixed number of Lanczos steps
    top_steps: int = 14
    density_probes: int = 1  # SLQ probes of density_steps steps
    density_steps: int = 14
    block_steps: int = 6  # Lanczos steps per block (top eigenvalue only)
    threads: Optional[int] = 1


def _layer_blocks(n_layers: int) -> dict[str, str]:
    blocks = transformer_blocks(n_layers)
    return {k: v for k, v in blocks.items() if k.startswith("blocks.")}  # attn / mlp / norms per layer


def run_hessians(models: ModelSet, results: Path, path: str = "hessian",
                 settings: HessianSettings = HessianSettings()) -> SectionRef:
    """Top eigenvalues, spectral density and per-block top eigenvalues of every model; saved under
    ``results/path`` (``<stem>_eigen.npz``, ``_density.npz``, ``_blocks.npz``, ``summary.json``)."""
    start = time.perf_counter()
    out = results / path
    out.mkdir(parents=True, exist_ok=True)
    tokens = models.eval_tokens[: settings.n_seq, : settings.n_ctx]
    rows, notes, entries, taken = [], [], [], set()
    with torch_threads(settings.threads):
        for key, model in models.models.items():
            stem = file_stem(key, taken)
            entries.append({"name": key, "label": models.label(key), "stem": stem})
            if key in models.diverged:
                notes.append(f"{models.label(key)}: training diverged; no Hessian (shown as NaN).")
                rows.append({"model": key, "status": "diverged"})
                continue
            try:
                with preserved_state(model):
                    op = HessianOperator(model, tokens, method="double_backward")
                    eigen = compute_eigenpairs(op, settings.top_k, n_steps=settings.top_steps,
                                               max_steps=settings.top_steps, seed=models.seed, warn=False)
                    density = estimate_density(op, n_probes=settings.density_probes, n_steps=settings.density_steps,
                                               seed=models.seed)
                    blocks = compute_block_spectra(model, tokens, blocks=_layer_blocks(getattr(model.cfg, "n_layers", 0)),
                                                   n_steps=settings.block_steps, seed=models.seed, name=key)
            except FloatingPointError as err:
                notes.append(f"{models.label(key)}: {err}")
                rows.append({"model": key, "status": "non-finite loss"})
                continue
            eigen.save(out / f"{stem}_eigen.npz")
            density.save(out / f"{stem}_density.npz")
            blocks.save(out / f"{stem}_blocks.npz")
            rows.append({
                "model": key, "status": "ok", "n_params": op.shape[0],
                **{f"lambda_{i + 1}": float(v) for i, v in enumerate(eigen.eigenvalues)},
                "max_rel_residual": float(np.max(eigen.residuals) / abs(eigen.eigenvalues[0])),
                "lambda_min (SLQ)": density.lambda_min, "re": density.re, "Kh": density.kh,
            })
    write_json(out / "summary.json", {"rows": rows, "models": entries, "notes": notes,
                                      "settings": dataclasses.asdict(settings),
                                      "seconds": time.perf_counter() - start})
    return SectionRef("hessian", path)
