"""Directions in parameter space: the axes of a loss landscape.

* Random (Li et al. 2018, *Visualizing the Loss Landscape of Neural Nets*):
  d ~ N(0, I) shaped like θ, then per tensor with ≥ 2 dimensions

  - ``"filter"``: each output row i (dim 0) rescaled, d_i ← d_i / ‖d_i‖ · ‖θ_i‖;
  - ``"layer"``: the whole tensor rescaled, d ← d / ‖d‖ · ‖θ‖;
  - ``"none"``: left as drawn.

  Tensors with ≤ 1 dimension (biases, norm gains, DyT's α) get d = 0
  (``one_d="zero"``, the default: "ignore bias and norm parameters") or d = θ
  (``one_d="copy"``); never normalized twice.
* Hessian: the top-2 eigenvectors of the loss Hessian (unit vectors).
* PCA: the first two principal components of a trajectory of checkpoints
  θ_i − θ_final (unit vectors); the trajectory is projected onto them.
* Interpolation: the straight line d = θ_end − θ_start.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from normlens.io import atomic_path
from normlens.landscape.objective import Objective, check_eval_items
from normlens.landscape.params import (
    ParamSource,
    Params,
    check_same_shapes,
    fingerprint,
    flatten,
    is_one_d,
    norm,
    parameters_of,
    unflatten,
)

NORMALIZATIONS = ("filter", "layer", "none")
ONE_D_RULES = ("zero", "copy")
KINDS = ("random", "hessian", "pca", "interpolation")


@dataclass(frozen=True)
class Directions:
    """One or two directions in parameter space, with how they were made.

    Args:
        axes: per axis, parameter name -> tensor shaped like that parameter.
        kind: "random", "hessian", "pca" or "interpolation".
        normalization: "filter", "layer", "none" (random), or "unit" (Hessian/PCA
            unit vectors).
        one_d: what ≤1-D parameters get: "zero", "copy" (d = θ) or "included"
            (treated like any other entry: Hessian with one_d="included", interpolation).
        seed: seed of the random draw (or of Lanczos), None where none was used.
        info: JSON-able extras (eigenvalues, explained variance, trajectory coordinates,
            fingerprint of the model the directions were normalized to).
    """

    axes: tuple[Params, ...]
    kind: str
    normalization: str
    one_d: str
    seed: int | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_axes(self) -> int:
        return len(self.axes)

    @property
    def names(self) -> list[str]:
        return list(self.axes[0])

    def norms(self) -> tuple[float, ...]:
        """‖d_k‖ over all parameters, per axis."""
        return tuple(norm(axis) for axis in self.axes)

    def fingerprint(self) -> str:
        """SHA-256 of the direction tensors and how they were made."""
        tensors = {f"axis{k}/{n}": t for k, axis in enumerate(self.axes) for n, t in axis.items()}
        meta = json.dumps([self.kind, self.normalization, self.one_d, self.seed], sort_keys=True)
        return fingerprint(tensors) + ":" + meta

    def check_fits(self, model: ParamSource) -> None:
        """Raise ValueError if names, shapes or dtypes do not fit ``model``'s parameters."""
        params = parameters_of(model)
        for axis in self.axes:
            check_same_shapes(params, axis, what=f"{self.kind} direction")

    def save(self, path: str | Path) -> Path:
        """Write to a .safetensors file (keys ``axis{k}/{name}``) atomically."""
        tensors = {
            f"axis{k}/{n}": t.detach().cpu().contiguous().clone()
            for k, axis in enumerate(self.axes) for n, t in axis.items()
        }
        meta = {
            "normlens": json.dumps({
                "kind": self.kind, "normalization": self.normalization, "one_d": self.one_d,
                "seed": self.seed, "info": dict(self.info), "n_axes": self.n_axes,
                "names": self.names,
            })
        }
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Directions":
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no directions file at {path}")
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("normlens", "null") or "null")
        if meta is None:
            raise ValueError(f"{path} is not a normlens directions file (no 'normlens' metadata)")
        tensors = load_file(str(path))
        axes = tuple(
            {n: tensors[f"axis{k}/{n}"] for n in meta["names"]} for k in range(meta["n_axes"])
        )
        return cls(axes, meta["kind"], meta["normalization"], meta["one_d"], meta["seed"], meta["info"])


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def normalize_direction(direction: Mapping[str, torch.Tensor], model: ParamSource,
                        normalization: str = "filter", one_d: str = "zero") -> Params:
    """Rescale ``direction`` to the weights of ``model`` (Li et al. 2018).

    ≥2-D tensors: "filter" rescales each row i (all dims after the first
    flattened) to ‖θ_i‖; "layer" rescales the tensor to ‖θ‖; "none" keeps it.
    ≤1-D tensors: zero (``one_d="zero"``) or θ (``one_d="copy"``).
    Rows of θ that are zero get a zero direction. Computed in float64, returned
    in the parameters' dtypes.
    """
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("one_d", one_d, ONE_D_RULES)
    params = parameters_of(model)
    check_same_shapes(params, direction)
    out: Params = {}
    for name, theta in params.items():
        d = direction[name].detach().to("cpu", torch.float64)
        t = theta.detach().to("cpu", torch.float64)
        if is_one_d(theta):
            new = torch.zeros_like(t) if one_d == "zero" else t.clone()
        elif normalization == "filter":
            d_rows, t_rows = d.reshape(d.shape[0], -1), t.reshape(t.shape[0], -1)  # (out, fan_in)
            d_norm = d_rows.norm(dim=1, keepdim=True)  # (out, 1)
            scale = torch.where(d_norm > 0, t_rows.norm(dim=1, keepdim=True) / d_norm.clamp_min(1e-300),
                                torch.zeros_like(d_norm))
            new = (d_rows * scale).view(d.shape)
        elif normalization == "layer":
            d_norm = d.norm()
            new = d * (t.norm() / d_norm) if d_norm > 0 else torch.zeros_like(d)
        else:
            new = d
        out[name] = new.to(device=theta.device, dtype=theta.dtype)
    return out


def random_directions(model: ParamSource, n_axes: int = 2, *, normalization: str = "filter",
                      one_d: str = "zero", seed: int = 0) -> Directions:
    """``n_axes`` Gaussian directions normalized to ``model``'s weights.

    The draw uses its own generator (the global RNG is untouched) in
    ``named_parameters`` order, so the same seed gives the same raw draw for
    every model with the same parameter names and shapes.

    >>> lin = nn.Linear(3, 2, bias=False)
    >>> d = random_directions(lin, 1, seed=0).axes[0]["weight"]
    >>> torch.allclose(d.norm(dim=1), lin.weight.detach().norm(dim=1))
    True
    """
    if n_axes not in (1, 2):
        raise ValueError(f"n_axes must be 1 or 2, got {n_axes}")
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("one_d", one_d, ONE_D_RULES)
    params = parameters_of(model)
    if not params:
        raise ValueError("the model has no parameters")
    gen = torch.Generator().manual_seed(int(seed))
    axes = []
    for _ in range(n_axes):
        raw = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
        axes.append(normalize_direction(raw, params, normalization, one_d))
    return Directions(tuple(axes), "random", normalization, one_d, int(seed),
                      {"model_fingerprint": fingerprint(params)})


def _selected_names(params: Params, one_d: str) -> list[str]:
    names = [n for n, p in params.items() if one_d == "included" or not is_one_d(p)]
    if not names:
        raise ValueError("no parameters left to span the directions (all are 1-D and one_d='zero')")
    return names


def hessian_directions(model: nn.Module, eval_items: torch.Tensor, *, k: int = 2, one_d: str = "zero",
                       n_steps: int | None = None, seed: int = 0, objective: Objective | None = None,
                       items_per_batch: int | None = None) -> Directions:
    """Top-``k`` Hessian eigenvectors (largest eigenvalues) as unit-norm axes.

    ``one_d="zero"`` restricts the Hessian to the ≥2-D parameters (the
    eigenvectors are zero on biases and norm parameters); ``"included"`` uses all.
    Lanczos with full reorthogonalization on double-backward HVPs.
    """
    from normlens.landscape.hessian import top_hessian_eigenpairs

    if k not in (1, 2):
        raise ValueError(f"k must be 1 or 2 axes, got {k}")
    _check_choice("one_d", one_d, ("zero", "included"))
    check_eval_items(eval_items)
    params = parameters_of(model)
    names = _selected_names(params, one_d)
    values, vectors = top_hessian_eigenpairs(
        model, params, eval_items, names, k=k, n_steps=n_steps, seed=seed,
        objective=objective, items_per_batch=items_per_batch,
    )
    return Directions(tuple(vectors), "hessian", "unit", one_d, int(seed),
                      {"eigenvalues": [float(v) for v in values],
                       "model_fingerprint": fingerprint(params)})


def pca_directions(trajectory: Sequence[ParamSource], *, one_d: str = "zero") -> Directions:
    """First two PCA components of θ_i − θ_final over a trajectory of checkpoints.

    The landscape is centred on the last checkpoint. ``info["trajectory"]``
    holds each checkpoint's coordinates (θ_i − θ_final) · d_k (the last is
    (0, 0)); ``info["explained_variance_ratio"]`` the PCA's ratios.
    ``one_d="zero"`` leaves 1-D parameters out of the PCA.
    """
    from sklearn.decomposition import PCA

    _check_choice("one_d", one_d, ("zero", "included"))
    if len(trajectory) < 3:
        raise ValueError(
            f"PCA axes need at least 3 checkpoints (2 differences from the last), got {len(trajectory)}"
        )
    points = [parameters_of(c) for c in trajectory]
    final = points[-1]
    for i, p in enumerate(points[:-1]):
        check_same_shapes(final, p, what=f"checkpoint {i} of the trajectory")
    names = _selected_names(final, one_d)
    base = flatten(final, names).double().cpu()
    diffs = torch.stack([flatten(p, names).double().cpu() - base for p in points[:-1]]).numpy()  # (n-1, n_params)
    if not np.isfinite(diffs).all():
        raise ValueError("the trajectory holds non-finite weights; drop diverged checkpoints first")
    pca = PCA(n_components=2, svd_solver="full").fit(diffs)
    components = pca.components_  # (2, n_params), unit rows
    coords = np.vstack([diffs @ components.T, np.zeros((1, 2))])  # (n, 2)
    axes = []
    for row in components:
        vec = {n: torch.zeros_like(final[n]) for n in final}
        vec.update({n: t.to(final[n].device)
                    for n, t in unflatten(torch.from_numpy(row.copy()), final, names).items()})
        axes.append(vec)
    return Directions(tuple(axes), "pca", "unit", one_d, None, {
        "trajectory": coords.tolist(),
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
        "model_fingerprint": fingerprint(final),
    })


def interpolation_direction(start: ParamSource, end: ParamSource, *, one_d: str = "included") -> Directions:
    """The straight line from ``start`` to ``end``: d = θ_end − θ_start (one axis).

    Evaluate it centred on ``start`` over the range (0, 1) (or wider): 0 is
    ``start``, 1 is ``end``. With ``one_d="zero"`` 1-D parameters stay at
    ``start``'s values. Buffers are never interpolated (they stay ``start``'s).
    """
    _check_choice("one_d", one_d, ("zero", "included"))
    a, b = parameters_of(start), parameters_of(end)
    check_same_shapes(a, b, what="end model")
    d = {n: (torch.zeros_like(a[n]) if (one_d == "zero" and is_one_d(a[n])) else (b[n].to(a[n].device) - a[n]))
         for n in a}
    return Directions((d,), "interpolation", "none", one_d, None, {
        "model_fingerprint": fingerprint(a), "end_fingerprint": fingerprint(b),
    })
