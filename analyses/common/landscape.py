"""Filter-normalized loss planes of every model of a set; saved for the ``landscapes`` renderer."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from analyses.common.inputs import ModelSet
from analyses.common.threads import torch_threads
from normlens.io import write_json
from normlens.landscape.directions import random_directions
from normlens.landscape.grid import compute_landscape
from normlens.landscape.metrics import compute_metrics
from normlens.report.manifest import SectionRef
from normlens.report.sections._common import file_stem


@dataclass(frozen=True)
class LandscapeSettings:
    resolution: int = 21  # 441 points per model: ~1 s each on 2 CPU cores (8 x 64 tokens, batched zoo forward)
    span: float = 1.0
    n_seq: int = 8
    threads: Optional[int] = None


def run_landscapes(models: ModelSet, results: Path, path: str = "landscape",
                   settings: LandscapeSettings = LandscapeSettings()) -> SectionRef:
    """A 2-D filter-normalized plane around every model, with sharpness and curvature numbers.

    Each model gets Gaussian directions from the same seed, filter-normalized to its own weights
    (Li et al. 2018), 1-D parameters zeroed; loss over the first ``settings.n_seq`` held-out
    sequences. Diverged models are shown as such, not evaluated. Saved under ``results/path``.
    """
    start = time.perf_counter()
    out = results / path
    out.mkdir(parents=True, exist_ok=True)
    tokens = models.eval_tokens[: settings.n_seq]
    rows, notes, entries, taken = [], [], [], set()
    with torch_threads(settings.threads):
        for key, model in models.models.items():
            stem = file_stem(key, taken)
            entries.append({"name": key, "label": models.label(key), "stem": stem})
            finite = all(torch.isfinite(p).all() for p in model.parameters())
            if key in models.diverged or not finite:
                notes.append(f"{models.label(key)}: diverged in training (non-finite weights); not evaluated.")
                rows.append({"model": key, "loss f(0,0)": float("nan"), "status": "diverged"})
                continue
            directions = random_directions(model, 2, normalization="filter", one_d="zero", seed=models.seed)
            result = compute_landscape(model, directions, tokens, span=settings.span, resolution=settings.resolution,
                                       model_name=models.label(key),
                                       eval_name=f"{tokens.shape[0]} held-out sequences")
            metrics = compute_metrics(result, radii=(settings.span / 2, settings.span), n_side=1, model=model,
                                      directions=directions, eval_items=tokens)
            result.save(out / f"{stem}.npz")
            metrics.save(out / f"{stem}.metrics.json")
            row = {"model": key, "loss f(0,0)": result.center_loss,
                   f"sharpness r={settings.span / 2:g}": metrics.sharpness[0].increase,
                   f"sharpness r={settings.span:g}": metrics.sharpness[1].increase}
            for c in metrics.curvature:
                row[f"fit curvature d{c.axis + 1}"] = c.fit_rayleigh
                row[f"Hessian dᵀHd/dᵀd d{c.axis + 1}"] = c.hessian_rayleigh
            row["non-finite cells"] = result.n_nonfinite
            row["status"] = "ok"
            rows.append(row)
            if result.n_nonfinite:
                notes.append(f"{models.label(key)}: {result.n_nonfinite} grid cells gave NaN/inf loss (shown grey).")
    write_json(out / "summary.json", {"rows": rows, "models": entries, "notes": notes, "span": settings.span,
                                      "resolution": settings.resolution, "n_seq": int(tokens.shape[0]),
                                      "seconds": time.perf_counter() - start})
    return SectionRef("landscapes", path)
