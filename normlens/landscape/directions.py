"""Directions in parameter space: the axes of a loss landscape.

* Random (Li et al. 2018, *Visualizing the Loss Landscape of Neural Nets*):
  d ~ N(0, I) shaped like θ, then per tensor with ≥ 2 dimensions

  - ``"filter"``: each output unit i rescaled, d_i ← d_i / ‖d_i‖ · ‖θ_i‖, where the
    output axis is the one of the layer that uses the weight (dim 0 of an
    ``nn.Linear``, dim 1 of GPT-2's ``Conv1D``, a row per token of an embedding,
    an output channel of a convolution; :mod:`normlens.landscape.filters`);
  - ``"layer"``: the whole tensor rescaled, d ← d / ‖d‖ · ‖θ‖;
  - ``"none"``: left as drawn.

  Tensors with ≤ 1 dimension (biases, norm gains, DyT's α) get d = 0
  (``one_d="zero"``, the default: "ignore bias and norm parameters") or d = θ
  (``one_d="copy"``); never normalized twice.
* Hessian: the top-2 eigenvectors of the loss Hessian (unit vectors).
* PCA: the first two principal components of a trajectory of checkpoints
  θ_i − θ_final (unit vectors); the trajectory is projected onto them.
* Interpolation: the straight line d = θ_end − θ_start, floating-point buffers
  (BatchNorm running statistics) included.

Every builder leaves frozen (``requires_grad=False``) parameters where they are
(d = 0), as the curvature operators do, and, where it sees evaluation items,
parameters the forward does not use (:mod:`normlens.landscape.movable`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from normlens.io import atomic_path
from normlens.landscape.filters import OutputAxis, filter_normalize, resolve_output_axes
from normlens.landscape.movable import Exclusion, excluded_parameters
from normlens.landscape.objective import Objective, check_eval_items
from normlens.parameters import check_finite
from normlens.landscape.params import (
    ParamSource,
    Params,
    check_same_shapes,
    fingerprint,
    flatten,
    float_buffers,
    is_one_d,
    norm,
    parameters_of,
    unflatten,
)

NORMALIZATIONS = ("filter", "layer", "none")
ONE_D_RULES = ("zero", "copy")
KINDS = ("random", "hessian", "pca", "interpolation")


class DirectionsFileError(ValueError):
    """A directions file that cannot be read as one normlens wrote."""


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
            fingerprint of the model the directions were normalized to, ``"excluded"``:
            which parameters were left fixed and why).
        buffers: per axis, buffer name -> tensor: the floating-point buffers that move
            with the parameters (an interpolation's BatchNorm running statistics); empty
            for the other kinds.
    """

    axes: tuple[Params, ...]
    kind: str
    normalization: str
    one_d: str
    seed: int | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    buffers: tuple[Params, ...] = ()

    @property
    def n_axes(self) -> int:
        return len(self.axes)

    @property
    def names(self) -> list[str]:
        return list(self.axes[0])

    @property
    def buffer_names(self) -> list[str]:
        return list(self.buffers[0]) if self.buffers else []

    def norms(self) -> tuple[float, ...]:
        """‖d_k‖ over all parameters, per axis (buffers are not parameters and are not counted)."""
        return tuple(norm(axis) for axis in self.axes)

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"axis{k}/{n}": t for k, axis in enumerate(self.axes) for n, t in axis.items()}
        tensors.update({f"buffer{k}/{n}": t for k, axis in enumerate(self.buffers) for n, t in axis.items()})
        return tensors

    def fingerprint(self) -> str:
        """SHA-256 of the direction tensors and how they were made."""
        meta = json.dumps([self.kind, self.normalization, self.one_d, self.seed], sort_keys=True)
        return fingerprint(self._tensors()) + ":" + meta

    def check_fits(self, model: ParamSource) -> None:
        """Raise ValueError if names or shapes do not fit ``model``'s parameters (and buffers)."""
        params = parameters_of(model)
        for axis in self.axes:
            check_same_shapes(params, axis, what=f"{self.kind} direction")
        if self.buffers:
            if not isinstance(model, nn.Module):
                raise ValueError("these directions move buffers; pass the model (an nn.Module), not its parameters")
            buffers = float_buffers(model)
            for axis in self.buffers:
                check_same_shapes({n: buffers[n] for n in axis if n in buffers}, axis,
                                  what=f"{self.kind} direction's buffers")

    def save(self, path: str | Path) -> Path:
        """Write to a .safetensors file (keys ``axis{k}/{name}``, ``buffer{k}/{name}``) atomically."""
        from safetensors.torch import save_file

        tensors = {key: t.detach().cpu().contiguous().clone() for key, t in self._tensors().items()}
        meta = {
            "normlens": json.dumps({
                "kind": self.kind, "normalization": self.normalization, "one_d": self.one_d,
                "seed": self.seed, "info": dict(self.info), "n_axes": self.n_axes,
                "names": self.names, "buffer_names": self.buffer_names,
            })
        }
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Directions":
        """Read a file written by :meth:`save`, onto ``device``.

        Any file that is not one (a pickle, a truncated or foreign safetensors file)
        raises :class:`DirectionsFileError` naming the file; nothing in it is executed.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no directions file at {path}")
        fix = "pass the directions.safetensors a landscape run wrote, or drop --directions to build new ones"
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                meta = json.loads((handle.metadata() or {}).get("normlens", "null") or "null")
                if not isinstance(meta, dict):
                    raise DirectionsFileError(f"{path} is not a normlens directions file (no 'normlens' "
                                              f"metadata); {fix}")
                names, buffer_names = list(meta["names"]), list(meta.get("buffer_names", []))
                n_axes = int(meta["n_axes"])
                axes = tuple({n: handle.get_tensor(f"axis{k}/{n}") for n in names} for k in range(n_axes))
                buffers = tuple({n: handle.get_tensor(f"buffer{k}/{n}") for n in buffer_names}
                                for k in range(n_axes)) if buffer_names else ()
                directions = cls(axes, str(meta["kind"]), str(meta["normalization"]), str(meta["one_d"]),
                                 meta["seed"], dict(meta["info"]), buffers)
        except DirectionsFileError:
            raise
        except Exception as error:  # safetensors' and json's errors, missing keys, wrong types
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DirectionsFileError(f"cannot read directions from {path} ({reason}); {fix}") from None
        if directions.n_axes not in (1, 2) or directions.kind not in KINDS:
            raise DirectionsFileError(f"{path} holds {directions.n_axes} axes of kind {directions.kind!r}; {fix}")
        return directions


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _normalize_one(name: str, d: torch.Tensor, theta: torch.Tensor, normalization: str, one_d: str,
                   axis: Optional[OutputAxis]) -> torch.Tensor:
    """One tensor of a direction rescaled to θ (on θ's device, in θ's dtype; norms in ≥ float32)."""
    theta = theta.detach()
    if is_one_d(theta):
        return torch.zeros_like(theta) if one_d == "zero" else theta.clone()
    d = d.detach().to(theta.device)
    if normalization == "filter":
        new = filter_normalize(d, theta, axis, name)
    elif normalization == "layer":
        work = torch.promote_types(theta.dtype, torch.float32)
        d = d.to(work)
        d_norm = d.norm()
        new = d * (theta.to(work).norm() / d_norm) if d_norm > 0 else torch.zeros_like(d)
    else:
        new = d
    return new.to(dtype=theta.dtype)


def normalize_direction(direction: Mapping[str, torch.Tensor], model: ParamSource,
                        normalization: str = "filter", one_d: str = "zero", *,
                        output_axes: Optional[Mapping[str, int | OutputAxis]] = None) -> Params:
    """Rescale ``direction`` to the weights of ``model`` (Li et al. 2018).

    ≥2-D tensors: "filter" rescales the entries of each output unit i to ‖θ_i‖, the
    output axis being the one of the layer that owns the weight when ``model`` is a
    module (:func:`normlens.landscape.filters.output_axes`; dim 0 for a plain mapping),
    ``output_axes`` (name -> axis) overriding; "layer" rescales the tensor to ‖θ‖;
    "none" keeps it. ≤1-D tensors: zero (``one_d="zero"``) or θ (``one_d="copy"``).
    Units of θ that are zero get a zero direction. Returned on the parameters'
    devices, in their dtypes (norms accumulated in at least float32).
    """
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("one_d", one_d, ONE_D_RULES)
    params = parameters_of(model)
    check_same_shapes(params, direction)
    axes = resolve_output_axes(model, params, output_axes) if normalization == "filter" else {}
    return {name: _normalize_one(name, direction[name], theta, normalization, one_d, axes.get(name))
            for name, theta in params.items()}


def _exclusion(model: ParamSource, eval_items: Optional[torch.Tensor], objective: Optional[Objective]) -> Exclusion:
    if not isinstance(model, nn.Module):
        return Exclusion()
    if eval_items is not None:
        check_eval_items(eval_items)
        eval_items = eval_items.to(next(iter(model.parameters())).device)
    return excluded_parameters(model, eval_items, objective)


def _with_exclusion(info: dict[str, Any], exclusion: Exclusion) -> dict[str, Any]:
    if exclusion.note:
        info["excluded"] = exclusion.note
    return info


def random_directions(model: ParamSource, n_axes: int = 2, *, normalization: str = "filter",
                      one_d: str = "zero", seed: int = 0, eval_items: Optional[torch.Tensor] = None,
                      objective: Optional[Objective] = None,
                      output_axes: Optional[Mapping[str, int | OutputAxis]] = None) -> Directions:
    """``n_axes`` Gaussian directions normalized to ``model``'s weights (Li et al. 2018).

    Drawn on each parameter's device, in its dtype, with a generator of that
    device seeded by ``seed`` (the global RNG is untouched), in ``named_parameters``
    order. The same seed gives the same draw for every model with the same parameter
    names, shapes, dtypes and devices; draws on CPU and on CUDA (and in different
    dtypes) differ. Directions made before this rule (CPU, float64) are reproduced
    by loading their saved file, not by redrawing.

    Frozen parameters (``requires_grad=False``) get d = 0; with ``eval_items``
    (and ``objective``, default next-token loss) so do the parameters the forward
    does not use; ``info["excluded"]`` says which.

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
    check_finite(params)
    exclusion = _exclusion(model, eval_items, objective)
    skip = exclusion.names
    filters = resolve_output_axes(model, params, output_axes) if normalization == "filter" else {}
    generators: dict[torch.device, torch.Generator] = {}
    axes = []
    for _ in range(n_axes):
        axis: Params = {}
        for name, theta in params.items():
            if name in skip:
                axis[name] = torch.zeros_like(theta)
                continue
            gen = generators.get(theta.device)
            if gen is None:
                gen = generators[theta.device] = torch.Generator(device=theta.device).manual_seed(int(seed))
            dtype = theta.dtype if theta.is_floating_point() else torch.float32
            raw = torch.randn(theta.shape, generator=gen, device=theta.device, dtype=dtype)
            axis[name] = _normalize_one(name, raw, theta, normalization, one_d, filters.get(name))
        axes.append(axis)
    return Directions(tuple(axes), "random", normalization, one_d, int(seed),
                      _with_exclusion({"model_fingerprint": fingerprint(params)}, exclusion))


def _selected_names(params: Params, one_d: str, skip: frozenset[str] = frozenset()) -> list[str]:
    names = [n for n, p in params.items() if (one_d == "included" or not is_one_d(p)) and n not in skip]
    if not names:
        raise ValueError("no parameters left to span the directions (all are 1-D and one_d='zero', "
                         "frozen, or unused by the forward)")
    return names


def hessian_directions(model: nn.Module, eval_items: torch.Tensor, *, k: int = 2, one_d: str = "zero",
                       n_steps: int | None = None, seed: int = 0, objective: Objective | None = None,
                       items_per_batch: int | None = None) -> Directions:
    """Top-``k`` Hessian eigenvectors (largest eigenvalues) as unit-norm axes.

    ``one_d="zero"`` restricts the Hessian to the ≥2-D parameters (the
    eigenvectors are zero on biases and norm parameters); ``"included"`` uses all.
    Frozen parameters and those the forward does not use are left out (zero entries).
    Lanczos with full reorthogonalization on double-backward HVPs.
    """
    from normlens.landscape.hessian import top_hessian_eigenpairs

    if k not in (1, 2):
        raise ValueError(f"k must be 1 or 2 axes, got {k}")
    _check_choice("one_d", one_d, ("zero", "included"))
    check_eval_items(eval_items)
    params = parameters_of(model)
    check_finite(params)
    exclusion = _exclusion(model, eval_items, objective)
    names = _selected_names(params, one_d, exclusion.names)
    values, vectors = top_hessian_eigenpairs(
        model, params, eval_items, names, k=k, n_steps=n_steps, seed=seed,
        objective=objective, items_per_batch=items_per_batch,
    )
    return Directions(tuple(vectors), "hessian", "unit", one_d, int(seed), _with_exclusion(
        {"eigenvalues": [float(v) for v in values], "model_fingerprint": fingerprint(params)}, exclusion))


def pca_directions(trajectory: Sequence[ParamSource], *, one_d: str = "zero") -> Directions:
    """First two PCA components of θ_i − θ_final over a trajectory of checkpoints.

    The landscape is centred on the last checkpoint. ``info["trajectory"]``
    holds each checkpoint's coordinates (θ_i − θ_final) · d_k (the last is
    (0, 0)); ``info["explained_variance_ratio"]`` the PCA's ratios.
    ``one_d="zero"`` leaves 1-D parameters out of the PCA; frozen parameters of
    the last checkpoint (a module) are always left out.
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
    exclusion = _exclusion(trajectory[-1], None, None)
    names = _selected_names(final, one_d, exclusion.names)
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
    return Directions(tuple(axes), "pca", "unit", one_d, None, _with_exclusion({
        "trajectory": coords.tolist(),
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
        "model_fingerprint": fingerprint(final),
    }, exclusion))


def _buffer_line(start: ParamSource, end: ParamSource) -> tuple[Params, list[str]]:
    """Float buffers that differ between two modules (end − start), and non-float buffers that differ."""
    if not (isinstance(start, nn.Module) and isinstance(end, nn.Module)):
        return {}, []
    a, b = dict(start.named_buffers()), dict(end.named_buffers())
    check_same_shapes(a, b, what="end model's buffers")
    moving, fixed = {}, []
    for name, t in a.items():
        other = b[name].detach().to(t.device)
        if torch.equal(t.detach(), other):
            continue
        if t.is_floating_point():
            moving[name] = other.to(t.dtype) - t.detach()
        else:
            fixed.append(name)
    return moving, fixed


def interpolation_direction(start: ParamSource, end: ParamSource, *, one_d: str = "included") -> Directions:
    """The straight line from ``start`` to ``end``: d = θ_end − θ_start (one axis).

    Evaluate it centred on ``start`` over the range (0, 1) (or wider): 0 is
    ``start``, 1 is ``end``. Floating-point buffers (BatchNorm running statistics)
    move along the same line, so f(1) is the end model's own loss; non-float
    buffers that differ (counters) stay ``start``'s and ``info["fixed_buffers"]``
    names them. With ``one_d="zero"`` 1-D parameters stay at ``start``'s values.
    A frozen parameter (``requires_grad=False``) is never moved: if it differs
    between the two models the line cannot reach ``end`` and a ValueError says so.
    """
    _check_choice("one_d", one_d, ("zero", "included"))
    a, b = parameters_of(start), parameters_of(end)
    check_same_shapes(a, b, what="end model")
    check_finite(a, "the start model")
    check_finite(b, "the end model")
    exclusion = _exclusion(start, None, None)
    d = {n: (torch.zeros_like(a[n]) if (one_d == "zero" and is_one_d(a[n])) else (b[n].to(a[n].device) - a[n]))
         for n in a}
    moved_frozen = [n for n in exclusion.frozen if bool((d[n] != 0).any())]
    if moved_frozen:
        raise ValueError(
            f"{len(moved_frozen)} frozen (requires_grad=False) parameter(s) differ between the models, e.g. "
            f"{moved_frozen[:3]}; landscapes never move frozen parameters, so the line would not reach the end "
            "model: unfreeze them on the start model (requires_grad_(True)) to interpolate them"
        )
    buffers, fixed = _buffer_line(start, end)
    check_finite(buffers, "the end model's buffers")
    info: dict[str, Any] = {"model_fingerprint": fingerprint(a), "end_fingerprint": fingerprint(b)}
    if buffers:
        info["interpolated_buffers"] = sorted(buffers)
    if fixed:
        info["fixed_buffers"] = sorted(fixed)
    return Directions((d,), "interpolation", "none", one_d, None, _with_exclusion(info, exclusion),
                      (buffers,) if buffers else ())
