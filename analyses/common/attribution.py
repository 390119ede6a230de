"""Per-head direct logit attribution against the direct effect measured by ablation, saved as data.

Baroni, Heimersheim et al. 2025 ("Transformers Don't Need LayerNorm at Inference Time") check that
direct logit attribution (DLA, the final norm linearized at its cached scale) equals the direct
effect of ablating a head from the final residual stream once LayerNorm is gone, and differs while
it is live. :func:`compare_head_attribution` computes both with
:mod:`normlens.probes.attribution` and keeps the heads only (one value per head and predicted
token); :func:`attribution_gap` is the number the study reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from normlens.io import read_npz, write_npz


@dataclass(frozen=True)
class HeadAttribution:
    """``dla`` and ``ablation``: (n_heads_total, n_tokens) per head (layer-major) and predicted token."""

    heads: tuple[str, ...]
    dla: np.ndarray
    ablation: np.ndarray


def compare_head_attribution(model: torch.nn.Module, tokens: torch.Tensor, *, batch_size: int = 16) -> HeadAttribution:
    """Per head: DLA and the ablated direct effect on the correct next-token logit, for every token of ``tokens``."""
    from normlens.probes.attribution import direct_effect_by_ablation, direct_logit_attribution

    dla = direct_logit_attribution(model, tokens, batch_size=batch_size)
    ablation = direct_effect_by_ablation(model, tokens, batch_size=batch_size)
    rows = [i for i, head in enumerate(dla.heads) if head >= 0]
    n = len(rows)
    return HeadAttribution(tuple(dla.components[i] for i in rows), dla.values[rows].reshape(n, -1),
                           ablation.values[rows].reshape(n, -1))


def attribution_gap(dla: np.ndarray, ablation: np.ndarray) -> dict[str, float]:
    """max |DLA - ablation| over heads and tokens, the same over per-head means, and the largest |ablation|
    (the scale the gap is read against); non-finite values give NaN."""
    dla, ablation = np.asarray(dla, np.float64), np.asarray(ablation, np.float64)
    if dla.size == 0 or not (np.isfinite(dla).all() and np.isfinite(ablation).all()):
        return {"max_abs_gap": float("nan"), "max_abs_gap_head_mean": float("nan"), "max_abs_effect": float("nan")}
    return {"max_abs_gap": float(np.abs(dla - ablation).max()),
            "max_abs_gap_head_mean": float(np.abs(dla.mean(1) - ablation.mean(1)).max()),
            "max_abs_effect": float(np.abs(ablation).max())}


def save_head_attribution(path: str | Path, results: Mapping[str, HeadAttribution]) -> Path:
    """One NPZ: ``{key}.dla`` and ``{key}.ablation`` per model key."""
    arrays = {}
    for key, result in results.items():
        arrays[f"{key}.dla"], arrays[f"{key}.ablation"] = result.dla, result.ablation
    return write_npz(path, **arrays)


def load_head_attribution(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (dla, ablation) as saved by :func:`save_head_attribution`."""
    data = read_npz(path)
    keys = sorted({name.rsplit(".", 1)[0] for name in data})
    return {key: (data[f"{key}.dla"], data[f"{key}.ablation"]) for key in keys}


__all__ = ["HeadAttribution", "attribution_gap", "compare_head_attribution", "load_head_attribution",
           "save_head_attribution"]
