"""Heavy-tail exponent α of every weight matrix, by three fits, as tidy rows.

The three fits (:func:`normlens.curvature.compute_weight_spectra`):

* ``esd_ks``: the whole matrix's ESD, xmin by Kolmogorov–Smirnov distance (Clauset et al. 2009);
* ``esd_median``: the whole matrix's ESD, xmin at the median eigenvalue, the fit the FARMS
  authors use, so that it differs from ``farms`` only by the windows;
* ``farms``: FARMS (*Eigenspectrum Analysis of Neural Networks without Aspect Ratio Bias*):
  the ESDs of fixed-aspect-ratio windows pooled, xmin at the median.

Matrices are grouped by the layer kind that decides their aspect ratio in the zoo: attention
projections (square), MLP matrices (4:1) and embeddings.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch.nn as nn

from normlens.curvature.weight_spectra import compute_weight_spectra

FITS = {"esd_ks": ("esd", "ks"), "esd_median": ("esd", "median"), "farms": ("farms", "median")}
FIT_LABELS = {"esd_ks": "plain ESD, KS xmin", "esd_median": "plain ESD, median xmin", "farms": "FARMS"}
GROUPS = ("attention", "mlp", "embedding")
_LAYER = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_group(name: str) -> str:
    """"attention" (``...attn...``), "mlp" (``...mlp...``) or "embedding" (everything else)."""
    if ".attn." in f".{name}":
        return "attention"
    if ".mlp." in f".{name}":
        return "mlp"
    return "embedding"


def matrix_kind(name: str) -> str:
    """The name without its layer index and ``.weight``: ``blocks.0.attn.q.weight`` -> ``attn.q``."""
    kind = _LAYER.sub("", name, count=1)
    return kind[: -len(".weight")] if kind.endswith(".weight") else kind


def compute_alpha_rows(model: nn.Module, labels: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per 2-D weight matrix of ``model``: ``labels`` (e.g. phase, model, seed), the matrix,
    its layer (None outside the blocks), group, kind, shape, aspect ratio (larger / smaller side)
    and ``alpha_<fit>`` for each of :data:`FITS` (NaN where a fit has too few eigenvalues)."""
    spectra = {fit: compute_weight_spectra(model, method=method, xmin=xmin) for fit, (method, xmin) in FITS.items()}
    first, farms = spectra["esd_ks"], spectra["farms"]
    rows = []
    for name, shape in zip(first.names, first.shapes):
        layer = _LAYER.search(name)
        rows.append({
            **labels, "matrix": name, "layer": int(layer.group(1)) if layer else None,
            "group": layer_group(name), "kind": matrix_kind(name), "rows": int(shape[0]), "cols": int(shape[1]),
            "aspect": max(shape) / min(shape),
            **{f"alpha_{fit}": float(result.alphas[result.names.index(name)]) for fit, result in spectra.items()},
            "farms_windows": int(farms.n_windows[farms.names.index(name)]),
            "farms_window": list(farms.window_shapes[farms.names.index(name)]),
        })
    return rows


__all__ = ["FITS", "FIT_LABELS", "GROUPS", "compute_alpha_rows", "layer_group", "matrix_kind"]
