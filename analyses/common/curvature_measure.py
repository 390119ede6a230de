"""Everything the curvature study measures on one trained model, saved for its report sections.

On B equal held-out batches (the same for every model):

* top Hessian eigenvalues and the LLA criteria re = |λmin/λmax| and Kh on every batch, with
  their standard errors and a convergence warning (:func:`normlens.curvature.estimate_batch_curvature`);
* the SLQ density of the Hessian of the loss over all B batches (:func:`normlens.curvature.estimate_density`);
* two planes, each evaluated batch by batch: two Gaussian directions filter-normalized to the
  model (Li et al. 2018; 1-D parameters zeroed) and the top-2 Hessian eigenvectors of the ≥2-D
  weights over all batches (unit vectors; the LLA paper's axes), with sharpness and per-axis
  curvature (fit vs the Hessian's dᵀHd/dᵀd) on the pooled plane;
* the curvature dᵀH_b d/dᵀd that random filter-normalized axes see on each batch, as a share of
  that batch's λmax (the ratio the study's LLA test compares).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from analyses.common.batch_landscapes import check_batches, compute_axis_rayleigh, compute_batch_planes
from normlens.curvature.batches import estimate_batch_curvature
from normlens.curvature.density import estimate_density
from normlens.curvature.operators import HessianOperator
from normlens.landscape.directions import hessian_directions, random_directions
from normlens.landscape.metrics import compute_metrics

SUMMARY_METRICS = ("lambda_1", "lambda_2", "re", "kh")


@dataclass(frozen=True)
class MeasureSettings:
    """The Hessian and landscape settings of one model's measurement.

    Args:
        top_k, top_steps, max_steps, tol: per-batch top eigenpairs (Lanczos: first run length,
            the most steps it may extend to, relative residual tolerance).
        density_probes, density_steps: SLQ, per batch (for re and Kh) and on the pooled batches.
        hessian_steps: Lanczos steps for the top-2 eigenvectors used as landscape axes.
        resolution: grid points per plane axis (odd: the grid holds the model itself).
        random_span: [−s, s] on the filter-normalized random axes (Li et al.'s usual 1).
        hessian_span: [−s, s] on the unit Hessian eigenvectors (Euclidean parameter distance).
        n_random_axes: random filter-normalized directions whose curvature is compared with
            λmax (the plane's two and more, drawn in pairs).
    """

    top_k: int = 2
    top_steps: int = 20
    max_steps: int = 30
    tol: float = 1e-2
    density_probes: int = 2
    density_steps: int = 16
    hessian_steps: int = 24
    resolution: int = 11
    random_span: float = 1.0
    hessian_span: float = 0.5
    n_random_axes: int = 4

    def __post_init__(self) -> None:
        if self.top_k < 2:
            raise ValueError(f"top_k must be at least 2 (the study reports λ1 and λ2), got {self.top_k}")
        if self.resolution < 3 or self.resolution % 2 == 0:
            raise ValueError(f"resolution must be odd and at least 3 (the grid holds the model), got {self.resolution}")
        if self.n_random_axes < 2 or self.n_random_axes % 2:
            raise ValueError(f"n_random_axes must be even and at least 2 (drawn in pairs), got {self.n_random_axes}")


@dataclass
class ModelMeasurement:
    """What :func:`measure_model` returns: the rows of the study's tables and claim units."""

    spectra: dict[str, Any]
    landscape: dict[str, Any]
    landscape_units: list[dict[str, Any]]
    ratio_units: list[dict[str, Any]]
    warning: str
    seconds: float


def _plane_row(prefix: str, metrics, radii: Sequence[float]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for radius, sharp in zip(radii, metrics.sharpness):
        row[f"{prefix} sharpness r={radius:g}"] = sharp.increase
    for c in metrics.curvature:
        row[f"{prefix} d{c.axis + 1} fit f''/‖d‖²"] = c.fit_rayleigh
        row[f"{prefix} d{c.axis + 1} Hessian dᵀHd/dᵀd"] = c.hessian_rayleigh
    return row


def measure_model(model: nn.Module, batches: Sequence[torch.Tensor], settings: MeasureSettings, out: Path,
                  stem: str, *, seed: int = 0, direction_seed: int = 0, label: str = "",
                  keys: Optional[dict[str, Any]] = None) -> ModelMeasurement:
    """Measure one model and save its surfaces and spectra under ``out`` (``spectra/``, ``landscapes/``).

    Args:
        batches: equal-shape (n_seq, n_ctx) held-out token batches.
        seed: seeds the Lanczos and SLQ probes (batch b uses ``seed + 1 + b``).
        direction_seed: the Gaussian draw of the random directions (the same for every model, then
            filter-normalized to each).
        keys: what identifies the model in the unit rows (e.g. ``{"model": "ln", "seed": 0}``).
    """
    batches = check_batches(batches)
    if True:  # weights, grads, train flags and RNG as found, even on an error
        return _measure(model, batches, settings, out, stem, seed=seed, direction_seed=direction_seed, label=label,
                        keys=dict(keys or {}))


def _measure(model: nn.Module, batches: list[torch.Tensor], settings: MeasureSettings, out: Path, stem: str, *,
             seed: int, direction_seed: int, label: str, keys: dict[str, Any]) -> ModelMeasurement:
    start = time.perf_counter()
    pooled_tokens = torch.cat(batches)  # (B * n_seq, n_ctx)
    (out / "spectra").mkdir(parents=True, exist_ok=True)
    (out / "landscapes").mkdir(parents=True, exist_ok=True)

    curvature = estimate_batch_curvature(
        model, batches, k=settings.top_k, n_steps=settings.top_steps, max_steps=settings.max_steps,
        tol=settings.tol, density_probes=settings.density_probes, density_steps=settings.density_steps,
        include_average=False, seed=seed)
    curvature.save(out / "spectra" / f"{stem}_batches.npz")
    density = estimate_density(HessianOperator(model, batches), n_probes=settings.density_probes,
                               n_steps=settings.density_steps, seed=seed)
    density.save(out / "spectra" / f"{stem}_density.npz")

    hessian_axes = hessian_directions(model, pooled_tokens, k=2, n_steps=settings.hessian_steps, seed=seed)
    random_axes = [random_directions(model, 2, normalization="filter", one_d="zero", seed=direction_seed + i,
                                     eval_items=batches[0])  # unused parameters (if any) get d = 0
                   for i in range(settings.n_random_axes // 2)]
    planes, metrics = {}, {}
    for name, directions, span in (("random", random_axes[0], settings.random_span),
                                   ("hessian", hessian_axes, settings.hessian_span)):
        radii = (span / 2, span)
        planes[name] = compute_batch_planes(model, directions, batches, span=span, resolution=settings.resolution,
                                            radii=radii, model_name=label)
        metrics[name] = compute_metrics(planes[name].pooled, radii=radii, n_side=1, model=model,
                                        directions=directions, eval_items=pooled_tokens)
        planes[name].pooled.save(out / "landscapes" / f"{stem}_{name}.npz")
        metrics[name].save(out / "landscapes" / f"{stem}_{name}.metrics.json")
    rayleigh = compute_axis_rayleigh(model, [axis for d in random_axes for axis in d.axes], batches)  # (B, J)
    lambda_max = curvature.eigenvalues[:, 0]  # (B,)

    per_batch = curvature.metrics()  # metric -> (B,)
    spectra: dict[str, Any] = {"n_batches": curvature.n_batches, "n_params": int(density.n)}
    for metric in SUMMARY_METRICS:
        values = per_batch[metric]
        finite = values[np.isfinite(values)]
        spectra.update({f"{metric} mean": float(finite.mean()) if finite.size else math.nan,
                        f"{metric} SE": curvature.std_error(metric)})
    top = [float(v) for v in hessian_axes.info["eigenvalues"]]
    spectra.update({"pooled lambda_1 (weights)": top[0], "pooled lambda_2 (weights)": top[1],
                    "pooled re (SLQ)": density.re, "pooled Kh (SLQ)": density.kh,
                    "converged": bool(curvature.converged), "warning": curvature.warning})

    landscape = {**_plane_row("random", metrics["random"], planes["random"].radii),
                 **_plane_row("hessian", metrics["hessian"], planes["hessian"].radii),
                 "center loss": planes["random"].pooled.center_loss}
    first_axis = metrics["random"].curvature[0].hessian_rayleigh
    landscape["pooled ratio d1 / λ1 (weights)"] = first_axis / top[0] if first_axis is not None and top[0] else math.nan

    landscape_units, ratio_units = [], []
    for b in range(len(batches)):
        landscape_units.append({**keys, "batch": b, "sharpness_random": float(planes["random"].sharpness[b, -1]),
                                "sharpness_hessian": float(planes["hessian"].sharpness[b, -1])})
        mean_rayleigh = float(rayleigh[b].mean())
        ratio_units.append({**keys, "batch": b, "lambda_max": float(lambda_max[b]), "rayleigh_random": mean_rayleigh,
                            "ratio": mean_rayleigh / float(lambda_max[b]) if lambda_max[b] else math.nan,
                            "re": float(curvature.re[b]), "kh": float(curvature.kh[b])})
    return ModelMeasurement(spectra, landscape, landscape_units, ratio_units, curvature.warning,
                            time.perf_counter() - start)


__all__ = ["MeasureSettings", "ModelMeasurement", "SUMMARY_METRICS", "measure_model"]
