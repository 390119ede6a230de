"""Evaluate a loss surface on a grid, many points per forward pass.

f(a, b) = L(θ + a·d₁ + b·d₂) for every cell of a grid whose coordinates
contain 0 exactly, so f(0, 0) is the model's own loss. Points are evaluated in
chunks sized to a memory bound, a chunk of P points being one batched forward
per batch of evaluation items: for zoo models by :mod:`normlens.landscape.zoo_forward`
(one batched matmul per layer), for any other model by ``vmap`` over a
functional call (parameters swapped, then restored).
The model is never modified: weights, grads, buffers and train/eval flags are
as before the call (it runs in eval mode inside, restored afterwards).
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from torch.func import vmap

from normlens.landscape import distributed as dd
from normlens.hygiene import eval_mode
from normlens.landscape import zoo_forward
from normlens.landscape.directions import Directions
from normlens.landscape.objective import (
    Objective,
    check_eval_items,
    next_token_loss_only,
    next_token_objective,
)
from normlens.landscape.movable import Exclusion, excluded_parameters
from normlens.parameters import check_finite
from normlens.landscape.params import (
    Params,
    fingerprint,
    float_buffers,
    functional_forward,
    parameters_of,
    tensor_fingerprint,
)
from normlens.landscape.results import LandscapeResult, origin_index
from normlens.parameters import buffer_slots, parameter_slots
from normlens.landscape.store import START_OVER, GridMismatchError, GridStore

Range = tuple[float, float]
SpanArg = Union[float, Range, Sequence[Range]]


def axis_coordinates(lo: float, hi: float, resolution: int) -> np.ndarray:
    """``resolution`` coefficients from ``lo`` to ``hi`` that contain 0.0 exactly.

    A range with 0 at one end is evenly spaced. A range on both sides of 0 is cut
    at 0 into two evenly spaced pieces whose point counts are proportional to their
    lengths (rounded, at least one interval each), so it needs ``resolution >= 3``;
    a range symmetric about 0 needs an odd ``resolution`` (an even one cannot put 0
    on an evenly spaced grid and is refused, naming the odd values to use).

    >>> axis_coordinates(-1, 1, 5).tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    >>> axis_coordinates(0, 1, 3).tolist()
    [0.0, 0.5, 1.0]
    >>> axis_coordinates(-0.25, 1.25, 7).tolist()
    [-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"the span must be finite, got ({lo}, {hi})")
    if hi - lo <= 0:
        raise ValueError(f"the span must have positive width, got ({lo:g}, {hi:g}); use e.g. span=1.0")
    if lo > 0 or hi < 0:
        raise ValueError(f"the range ({lo:g}, {hi:g}) must contain 0 (the model itself)")
    if lo == 0 or hi == 0:
        return np.linspace(lo, hi, resolution)
    if lo == -hi and resolution % 2 == 0:
        raise ValueError(
            f"resolution {resolution} cannot put 0 on an evenly spaced grid symmetric about 0 over "
            f"({lo:g}, {hi:g}); use an odd resolution such as {resolution + 1} or {max(resolution - 1, 3)}"
        )
    if resolution < 3:
        raise ValueError(f"the range ({lo:g}, {hi:g}) lies on both sides of 0 and needs resolution >= 3 "
                         f"(lo, 0 and hi), got {resolution}")
    intervals = resolution - 1
    n_neg = min(max(math.floor(intervals * (-lo) / (hi - lo) + 0.5), 1), intervals - 1)
    neg = np.linspace(lo, 0.0, n_neg + 1)[:-1]
    pos = np.linspace(0.0, hi, intervals - n_neg + 1)
    return np.concatenate([neg, pos])


def resolve_ranges(span: SpanArg, n_axes: int) -> tuple[Range, ...]:
    """``span`` as a float s (→ (−s, s) on every axis), one (lo, hi), or one (lo, hi) per axis."""
    if isinstance(span, (int, float, np.floating, np.integer)) and not isinstance(span, bool):
        s = float(span)
        if not s > 0 or not math.isfinite(s):
            raise ValueError(f"span must be a positive number, got {span!r}; e.g. span=1.0 for [-1, 1]")
        return ((-s, s),) * n_axes
    items = list(span)
    if len(items) == 2 and all(isinstance(v, (int, float, np.floating, np.integer)) for v in items):
        return ((float(items[0]), float(items[1])),) * n_axes
    if len(items) != n_axes:
        raise ValueError(f"got {len(items)} ranges for {n_axes} axes; pass one (lo, hi) per axis")
    return tuple((float(lo), float(hi)) for lo, hi in items)


def _default_name(model: nn.Module) -> str:
    config = getattr(model, "normlens_config", None)
    if config is not None:
        return f"{config.norm}-{config.placement}"
    return type(model).__name__


class PointEvaluator:
    """``points (P, n_axes) -> (loss (P,), accuracy (P,) or None)`` for one model and directions.

    Only tensors that some direction moves (parameters, and the floating-point
    buffers of an interpolation) are batched (``vmap`` in_dims 0); the rest are
    the model's own. Construct and call inside ``torch.no_grad()`` and
    :func:`eval_mode`; construction runs one forward on one evaluation item.
    """

    def __init__(self, model: nn.Module, directions: Directions, eval_items: torch.Tensor,
                 objective: Objective, items_per_batch: int, params: Optional[Params] = None,
                 accuracy: bool = True, zoo_fast_path: bool = True):
        self.model = model
        self.objective = objective
        self.eval_items = eval_items
        self.items_per_batch = items_per_batch
        params = params if params is not None else parameters_of(model)
        base = {**params, **(float_buffers(model) if directions.buffers else {})}
        axes = [{**axis, **(directions.buffers[k] if directions.buffers else {})}
                for k, axis in enumerate(directions.axes)]
        self.theta = {n: base[n] for n in axes[0] if any(bool((axis[n] != 0).any()) for axis in axes)}
        self.axes = [{n: axis[n].to(base[n].device) for n in self.theta} for axis in axes]
        self.accuracy = accuracy
        self._flat = _FlatDirections.build(self.theta, self.axes)  # None: per-tensor path
        # one forward on one item gives the loss count, whether the objective has accuracy,
        # and the output size that :func:`_auto_batching` sizes batches by
        with torch.no_grad():
            out = model(eval_items[:1])
        losses, correct = objective(out, eval_items[:1])
        if losses.numel() == 0:
            raise ValueError(
                f"the objective gives no loss on an evaluation item of shape {tuple(eval_items.shape[1:])}: "
                "next-token loss needs sequences of at least 2 tokens; pass longer sequences"
            )
        self.with_accuracy = accuracy and correct is not None
        self.n_elements = losses.numel() * eval_items.shape[0]  # loss elements over the evaluation set
        self.item_output = (out.numel(), out.element_size())

        slots = {**parameter_slots(model), **(buffer_slots(model) if directions.buffers else {})}

        def sums(moving: Params, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            losses, correct = objective(functional_forward(model, slots, moving, batch), batch)
            if correct is None or not accuracy:
                hits = losses.new_zeros((), dtype=torch.float64)
            else:
                hits = correct.double().sum()
            return losses.double().sum(), hits

        self._batched = vmap(sums, in_dims=(0, None))
        self._sums = sums
        self.forward_path = "vmap"
        moves_buffers = any(n not in params for n in self.theta)
        if zoo_fast_path and self.theta and not moves_buffers:  # the batched zoo forward moves parameters only
            fast = zoo_forward.build(model, objective, accuracy)
            if fast is not None and self._agrees_with_vmap(fast):
                self._batched, self.forward_path = fast, "batched-zoo"

    def _agrees_with_vmap(self, fast: Callable) -> bool:
        """Whether ``fast`` gives the generic path's loss sums at two points on one item."""
        points = torch.tensor([[0.0] * len(self.axes), [0.5] * len(self.axes)], dtype=torch.float64)
        batch = self.eval_items[:1]
        try:
            moving = self.perturbed(points)
            expected, expected_hits = self._batched(moving, batch)
            got, hits = fast(moving, batch)
        except Exception:  # any failure: keep the generic path
            return False
        return bool(torch.isfinite(expected[0])  # a diverged model keeps the generic path
                    and torch.allclose(got, expected, rtol=1e-4, atol=1e-6, equal_nan=True)
                    and torch.allclose(hits, expected_hits, atol=1.0))

    def perturbed(self, points: torch.Tensor) -> Params:
        """θ + Σ_k a_k·d_k for each of the P points: name -> (P, *shape).

        When every moving tensor shares one dtype and device, each comes from
        one ``addmm`` θ + (P × n_axes) @ (n_axes × size) into a buffer reused
        across chunks: one write instead of 2·n_axes + 1 passes over fresh
        temporaries. At a = 0 the value is θ exactly.
        """
        if self._flat is not None:
            return self._flat.perturbed(points)
        out = {}
        for n, theta in self.theta.items():
            shift = 0
            for k, axis in enumerate(self.axes):
                coef = points[:, k].to(device=theta.device, dtype=theta.dtype)
                coef = coef.view(-1, *([1] * theta.dim()))  # (P, 1, ..., 1)
                shift = shift + coef * axis[n].unsqueeze(0)
            out[n] = theta.unsqueeze(0) + shift  # (P, *shape)
        return out

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        pts = torch.as_tensor(np.asarray(points, dtype=np.float64))
        moving = self.perturbed(pts)
        total = torch.zeros(pts.shape[0], dtype=torch.float64)
        hits = torch.zeros(pts.shape[0], dtype=torch.float64)
        for start in range(0, self.eval_items.shape[0], self.items_per_batch):
            batch = self.eval_items[start:start + self.items_per_batch]
            if moving:
                loss_sum, hit_sum = self._batched(moving, batch)  # (P,), (P,)
            else:  # nothing moves (e.g. all-zero directions): one forward, broadcast
                loss_sum, hit_sum = self._sums({}, batch)
            total += loss_sum.detach().double().cpu()
            hits += hit_sum.detach().double().cpu()
        loss = (total / self.n_elements).numpy()
        return loss, ((hits / self.n_elements).numpy() if self.with_accuracy else None)


class _FlatDirections:
    """Per moving tensor: θ flattened (size,) and the axes as one (n_axes, size) matrix."""

    def __init__(self, theta: Params, axes: list[Params]):
        self.shapes = {n: t.shape for n, t in theta.items()}
        self.theta = {n: t.reshape(-1) for n, t in theta.items()}
        self.axes = {n: torch.stack([axis[n].reshape(-1).to(t.dtype) for axis in axes]) for n, t in theta.items()}
        self._buffers: Params = {}

    @classmethod
    def build(cls, theta: Params, axes: list[Params]) -> "Optional[_FlatDirections]":
        if not theta or len({(t.dtype, t.device) for t in theta.values()}) != 1:
            return None
        return cls(theta, axes)

    def perturbed(self, points: torch.Tensor) -> Params:
        n_points = points.shape[0]
        first = next(iter(self.theta.values()))
        coef = points.to(device=first.device, dtype=first.dtype)  # (P, n_axes)
        out = {}
        for name, theta in self.theta.items():
            buffer = self._buffers.get(name)
            if buffer is None or buffer.shape[0] < n_points:
                buffer = self._buffers[name] = torch.empty(n_points, theta.numel(), dtype=theta.dtype,
                                                           device=theta.device)
            flat = torch.addmm(theta, coef, self.axes[name], out=buffer[:n_points])  # (P, size)
            out[name] = flat.view(n_points, *self.shapes[name])
        return out


def _auto_batching(model: nn.Module, evaluator: PointEvaluator, n_cells: int,
                   memory_bytes: int) -> tuple[int, int]:
    """(points per chunk, items per forward) that keep activations under ``memory_bytes``.

    A rough bound: per (point, item), 8 × the output plus, for TransformerLens
    configs, n_layers × n_ctx × (16·d_model + 2·d_mlp + 3·n_heads·n_ctx) elements;
    per point, one copy of the moved parameters.
    """
    items = evaluator.eval_items
    out_numel, out_element_size = evaluator.item_output
    elt = max(out_element_size, 4)
    per_item = 8 * out_numel
    cfg = getattr(model, "cfg", None)
    if cfg is not None and all(hasattr(cfg, a) for a in ("n_layers", "d_model", "n_heads")):
        ctx = items.shape[1] if items.dim() > 1 else 1
        d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
        per_item += cfg.n_layers * ctx * (16 * cfg.d_model + 2 * d_mlp + 3 * cfg.n_heads * ctx)
    per_item *= elt
    per_point_params = sum(t.numel() * t.element_size() for t in evaluator.theta.values())
    n_items = items.shape[0]
    items_per_batch = int(min(n_items, max(1, memory_bytes // (8 * per_item))))
    points = int(min(max(memory_bytes // (items_per_batch * per_item + per_point_params + 1), 1), 64, n_cells))
    n_chunks = -(-n_cells // points)
    return -(-n_cells // n_chunks), items_per_batch  # equal chunks: no small last one


def compute_landscape(
    model: nn.Module,
    directions: Directions,
    eval_items: torch.Tensor,
    *,
    span: SpanArg = 1.0,
    resolution: int = 21,
    objective: Optional[Objective] = None,
    accuracy: bool = False,
    points_per_batch: Optional[int] = None,
    items_per_batch: Optional[int] = None,
    memory_bytes: int = 1 << 27,
    grid_file: Optional[str | Path] = None,
    model_name: Optional[str] = None,
    eval_name: str = "",
    on_chunk: Optional[Callable[[int, int], None]] = None,
    zoo_fast_path: bool = True,
) -> LandscapeResult:
    """The loss surface of ``model`` over ``directions`` (1 or 2 axes).

    Which parameters move: only trainable ones the forward uses. A direction that
    moves a frozen (``requires_grad=False``) parameter is refused, as the curvature
    operators leave those out; parameters that get no gradient on one evaluation
    item (:func:`normlens.parameters.find_unused_parameters`, e.g. a bridge's fused
    ``qkv`` copies) are held fixed, which changes no loss, and ``result.info["excluded"]``
    says so; ``result.direction_norms`` are the norms of what moved. Floating-point
    buffers move only where the directions carry them (an interpolation).

    Refused before any grid work, with one line: non-finite weights or buffers, an
    objective with no loss element per item (e.g. 1-token sequences), even
    ``resolution`` on a symmetric span.

    Args:
        model: any module mapping a batch of ``eval_items`` to outputs; left untouched.
        directions: from :mod:`normlens.landscape.directions`; must fit ``model``.
        eval_items: (n_items, ...) evaluation set, e.g. (n_seq, n_ctx) int64 tokens.
        span: s for [−s, s] on every axis, one (lo, hi), or one (lo, hi) per axis;
            each range must contain 0.
        resolution: points per axis, exactly; the grid contains 0, so a range symmetric
            about 0 needs an odd count; see :func:`axis_coordinates`.
        objective: (outputs, batch) -> (per-element loss, per-element correct or None);
            default next-token cross-entropy (and top-1 accuracy with ``accuracy=True``).
        accuracy: also return the mean of the objective's per-element correctness.
        points_per_batch, items_per_batch: batching; by default from ``memory_bytes``, a bound
            on the activations of one batched forward. The default (128 MiB) is also about the
            fastest on CPU: larger chunks fall out of cache and get slower per point.
        grid_file: .npz written after every chunk; an existing file made for the same
            model, directions, evaluation set and grid is resumed (only missing chunks are
            computed) after one stored cell, the origin when stored, is evaluated again and
            agrees; one made for anything else, damaged or edited, is refused (GridMismatchError).
        on_chunk: called as ``on_chunk(chunk, n_chunks)`` after each chunk this process computes.
        zoo_fast_path: for normlens zoo models, evaluate points with
            :mod:`normlens.landscape.zoo_forward` (one batched matmul per layer; 1.3–1.7× faster
            than the generic path on CPU) when it agrees with the generic ``vmap`` path at the
            origin and one probe point; False forces the generic path. ``result.info["forward_path"]`` says which ran.

    Under ``torch.distributed`` (torchrun) the chunks are split across ranks and every
    rank returns the full result.

    Returns:
        A :class:`LandscapeResult` with ``loss[i, j] = f(coords[0][i], coords[1][j])``.
    """
    if objective is None:
        objective = next_token_objective if accuracy else next_token_loss_only
    if not isinstance(directions, Directions):
        raise TypeError(f"directions must be a Directions, got {type(directions).__name__}")
    check_eval_items(eval_items)
    params = parameters_of(model)
    check_finite(params)
    check_finite(float_buffers(model), "the model's buffers")
    directions.check_fits(model)
    ranges = resolve_ranges(span, directions.n_axes)
    coords = tuple(axis_coordinates(lo, hi, resolution) for lo, hi in ranges)
    mesh = np.meshgrid(*coords, indexing="ij")
    points = np.stack([m.reshape(-1) for m in mesh], axis=1)  # (n_cells, n_axes), row-major cells
    n_cells = points.shape[0]
    device = next(iter(params.values())).device
    eval_items = eval_items.to(device)
    exclusion = excluded_parameters(model, eval_items, objective)
    moving = _restricted(directions, exclusion)

    with torch.no_grad(), eval_mode(model):
        evaluator = PointEvaluator(model, moving, eval_items, objective, items_per_batch or 1, params,
                                   accuracy=accuracy, zoo_fast_path=zoo_fast_path)
        auto_points, auto_items = _auto_batching(model, evaluator, n_cells, memory_bytes)
        evaluator.items_per_batch = int(items_per_batch or auto_items)
        chunk_size = int(points_per_batch or auto_points)
        if chunk_size < 1 or evaluator.items_per_batch < 1:
            raise ValueError("points_per_batch and items_per_batch must be >= 1")
        fp = {
            "model": fingerprint({**params, **float_buffers(model)}),
            "directions": directions.fingerprint(),
            "eval_set": tensor_fingerprint(eval_items),
            "grid": tensor_fingerprint(points),
            "objective": f"{getattr(objective, '__qualname__', type(objective).__name__)}|accuracy={accuracy}",
            "items_per_batch": str(evaluator.items_per_batch),
        }
        rank, size = dd.world()
        path = Path(grid_file) if grid_file is not None else None
        if rank == 0:
            store = GridStore.open(path, fp, n_cells, chunk_size)
            if size > 1:
                dd.merge_shards(store)
                store.save()
                dd.remove_shards(path)
        dd.barrier()
        if rank != 0:
            store = GridStore.open(path, fp, n_cells, chunk_size)
        if store.chunk_done.any():  # values from an earlier run: check one before trusting them
            _verify_stored_cell(store, evaluator, points, int(np.ravel_multi_index(origin_index(coords),
                                                                                  [len(c) for c in coords])))
        mine = dd.assign_chunks(store.missing_chunks(), rank, size)
        own_path = dd.shard_path(path, rank) if (path is not None and size > 1) else path
        for chunk in mine:
            loss, acc = evaluator(points[store.chunk_cells(chunk)])
            store.record(chunk, loss, acc, save=False)
            store.save(own_path)
            if on_chunk is not None:
                on_chunk(int(chunk), store.n_chunks)
        dd.gather_store(store)
        if size > 1:
            if rank == 0:
                store.save()
            dd.barrier()
            if rank == 0:
                dd.remove_shards(path)

    shape = tuple(len(c) for c in coords)
    loss = store.loss.reshape(shape)
    accuracy_grid = store.accuracy.reshape(shape) if evaluator.with_accuracy else None
    origin = origin_index(coords)
    info = {k: v for k, v in directions.info.items() if k != "model_fingerprint"}
    info["forward_path"] = evaluator.forward_path
    if exclusion.note:
        info["excluded"] = exclusion.note
    return LandscapeResult(
        coords=coords, loss=loss, accuracy=accuracy_grid, center_loss=float(loss[origin]),
        kind=directions.kind, normalization=directions.normalization, one_d=directions.one_d,
        direction_norms=moving.norms(), seed=directions.seed,
        model_name=model_name if model_name is not None else _default_name(model),
        eval_name=eval_name, n_eval_items=int(eval_items.shape[0]),
        fingerprint=":".join(fp[k][:16] for k in ("model", "directions", "eval_set", "grid")), info=info,
    )


def _restricted(directions: Directions, exclusion: Exclusion) -> Directions:
    """``directions`` with the parameters the forward does not use set to zero; a direction that
    moves a frozen parameter is refused (landscapes never move ``requires_grad=False`` parameters)."""
    def moves(name: str) -> bool:
        return any(bool((axis[name] != 0).any()) for axis in directions.axes)

    frozen = [n for n in exclusion.frozen if moves(n)]
    if frozen:
        raise ValueError(
            f"the directions move {len(frozen)} frozen (requires_grad=False) parameter(s), e.g. {frozen[:3]}; "
            "landscapes never move frozen parameters (the curvature operators leave them out too): build the "
            "directions for this model, or unfreeze those parameters with requires_grad_(True)"
        )
    unused = [n for n in exclusion.unused if moves(n)]
    if not unused:
        return directions
    axes = tuple({n: (torch.zeros_like(t) if n in unused else t) for n, t in axis.items()}
                 for axis in directions.axes)
    return replace(directions, axes=axes)


def _verify_stored_cell(store: GridStore, evaluator: PointEvaluator, points: np.ndarray, origin: int) -> None:
    """Re-evaluate one stored cell (the origin if its chunk is done, else the first done cell) and refuse
    the grid file if its value is not this model's (relative tolerance 1e-4: batch shapes differ)."""
    done = store.chunk_done[np.arange(store.n_cells) // store.chunk_size]  # (n_cells,) stored?
    if not done.any():
        return
    cell = origin if done[origin] else int(np.flatnonzero(done)[0])
    value, _ = evaluator(points[cell:cell + 1])
    stored = store.loss[cell]
    if np.allclose(value[0], stored, rtol=1e-4, atol=1e-7, equal_nan=True):
        return
    where = "at the origin" if cell == origin else f"at cell {cell} ({', '.join(f'{v:g}' for v in points[cell])})"
    raise GridMismatchError(
        f"grid file {store.path} holds f = {stored:.6g} {where} but the model gives {value[0]:.6g}: its values "
        f"were not computed for this model, directions and evaluation set; {START_OVER}"
    )
