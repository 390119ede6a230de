"""Probes measured during training, recorded into the training history.

A training probe returns a :class:`Measurement`: a flat dict of floats or small
arrays, each array named with its axes in brackets (``"entropy[layer,head]"``)
and the axes' labels kept beside it. Two kinds:

* held-out probes (:class:`ResultProbe`) run a :mod:`normlens.probes` probe on
  fixed held-out windows, in eval mode under ``no_grad``, and leave the model's
  weights, grads, train flags and RNG as found (``normlens.hygiene.preserved_state``);
  they use only ``Probe.result()`` and the result's ``summary()`` / ``to_frame()``;
* gradient probes (:class:`GradientNormProbe`) read the gradients the training
  step has just computed (before clipping), so they cost a few norms.

:func:`attention_entropy_probe` (mean attention entropy per head, the quantity
of "ReLU's Revival") and :func:`residual_variance_probe` (residual-stream
variance per depth, as in "The Curse of Depth") are ready-made held-out probes;
``GradientNormProbe()`` gives the per-layer gradient norms Mix-LN compares.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from normlens import sites as S
from normlens.hygiene import preserved_state

_KEY = re.compile(r"^(?P<metric>[A-Za-z0-9_./:-]+)(\[(?P<axes>[A-Za-z0-9_,]+)\])?$")


def split_key(key: str) -> tuple[str, tuple[str, ...]]:
    """``"entropy[layer,head]"`` -> ``("entropy", ("layer", "head"))``; a scalar key has no axes."""
    match = _KEY.match(key)
    if not match:
        raise ValueError(f"probe metric name {key!r} is not of the form name or name[axis,...]")
    axes = match.group("axes")
    return match.group("metric"), tuple(axes.split(",")) if axes else ()


@dataclass
class Measurement:
    """One probe's reading at one step.

    ``values`` maps a metric name to a float, or, for a name with axes in
    brackets, to an array with one dimension per axis; ``axes`` gives each
    array's labels per dimension (e.g. ``{"entropy[layer,head]": [[0, 1], [0, 1, 2, 3]]}``).
    """

    values: dict[str, Any]
    axes: dict[str, list[list[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, Any] = {}
        for key, value in self.values.items():
            _, axes = split_key(key)
            if axes:
                array = np.asarray(value, dtype=np.float64)
                if array.ndim != len(axes):
                    raise ValueError(f"probe metric {key!r} names {len(axes)} axes but its array has "
                                     f"shape {array.shape}")
                labels = self.axes.get(key)
                if labels is not None and [len(a) for a in labels] != list(array.shape):
                    raise ValueError(f"probe metric {key!r}: labels of lengths {[len(a) for a in labels]} "
                                     f"for an array of shape {array.shape}")
                clean[key] = array
            else:
                clean[key] = float(value)
        self.values = clean


class TrainingProbe:
    """Base class of training probes. Held-out probes implement :meth:`measure`,
    gradient probes set ``reads_gradients = True`` and implement :meth:`measure_gradients`."""

    name: str = "probe"
    reads_gradients: bool = False

    def measure(self, model: nn.Module, tokens: torch.Tensor) -> Measurement:
        """Read ``model`` on held-out ``tokens`` (n_seq, n_ctx); leave the model as found."""
        raise NotImplementedError

    def measure_gradients(self, model: nn.Module) -> Measurement:
        """Read the ``.grad`` of ``model``'s parameters, just after a training step's backward."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a resumed run must match (the probe's name, type and settings)."""
        return {"name": self.name, "type": type(self).__name__}


def _numeric(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.integer, np.floating)) and not isinstance(value, complex)


class ResultProbe(TrainingProbe):
    """Run a :mod:`normlens.probes` probe on held-out windows and keep its summary.

    Args:
        probe: a probe instance (a fresh copy is used per measurement) or a function
            ``model -> Probe`` (for sites that depend on the model).
        name: the key in the history; default the probe's own name.
        summary: keep every numeric entry of ``result.summary()`` as a scalar metric.
        frame: ``{column: (axis, ...)}``: the mean of ``result.to_frame()[column]`` over
            the rows of each combination of the axis columns (labels in first-seen order),
            recorded as ``"column[axis,...]"``.
        where: keep only rows of ``to_frame()`` whose columns equal these values.
        batch_size: windows per forward pass.
    """

    def __init__(self, probe: Any, *, name: str | None = None, summary: bool = True,
                 frame: Mapping[str, Sequence[str]] | None = None, where: Mapping[str, Any] | None = None,
                 batch_size: int = 16):
        from normlens.probes import Probe

        if not (isinstance(probe, Probe) or callable(probe)):
            raise ValueError(f"probe must be a normlens Probe or a function model -> Probe, got {probe!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self._probe = probe
        self.name = name or getattr(probe, "name", None) or "probe"
        self.summary = summary
        self.frame = {str(c): tuple(by) for c, by in (frame or {}).items()}
        for column, by in self.frame.items():
            split_key(f"{column}[{','.join(by)}]")  # validates the names
        self.where = dict(where or {})
        self.batch_size = batch_size

    def describe(self) -> dict[str, Any]:
        from normlens.probes import Probe

        probe_type = (type(self._probe).__name__ if isinstance(self._probe, Probe)
                      else getattr(self._probe, "__qualname__", "function"))
        return {"name": self.name, "type": type(self).__name__, "probe": probe_type, "summary": self.summary,
                "frame": {c: list(by) for c, by in self.frame.items()},
                "where": {k: str(v) for k, v in self.where.items()}}

    def _fresh(self, model: nn.Module):
        from normlens.probes import Probe

        if isinstance(self._probe, Probe):
            return copy.deepcopy(self._probe)
        probe = self._probe(model)
        if not isinstance(probe, Probe):
            raise ValueError(f"the probe factory of {self.name!r} returned {type(probe).__name__}, not a Probe")
        return probe

    def measure(self, model: nn.Module, tokens: torch.Tensor) -> Measurement:
        from normlens.probes import attach

        probe = self._fresh(model)
        with preserved_state(model), torch.no_grad(), attach(model, probe):
            for start in range(0, tokens.shape[0], self.batch_size):
                model(tokens[start:start + self.batch_size])
        result = probe.result()
        values: dict[str, Any] = {}
        axes: dict[str, list[list[Any]]] = {}
        if self.summary and hasattr(result, "summary"):
            values |= {k: float(v) for k, v in result.summary().items() if _numeric(v)}
        if self.frame:
            table = result.to_frame()
            for column, value in self.where.items():
                table = table[table[column] == value]
            for column, by in self.frame.items():
                key = f"{column}[{','.join(by)}]"
                array, labels = _grid_means(table, column, by)
                values[key], axes[key] = array, labels
        return Measurement(values, axes)


def _label(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else str(value)
    return value if isinstance(value, (int, str)) else str(value)


def _grid_means(table, column: str, by: tuple[str, ...]) -> tuple[np.ndarray, list[list[Any]]]:
    """Mean of ``column`` per combination of ``by`` as a dense array (NaN where no row)."""
    for name in (column, *by):
        if name not in table.columns:
            raise ValueError(f"the probe's to_frame() has no column {name!r}; it has {list(table.columns)}")
    labels = [list(dict.fromkeys(table[axis].tolist())) for axis in by]
    index = [{label: i for i, label in enumerate(axis)} for axis in labels]
    array = np.full([len(axis) for axis in labels], np.nan)
    for keys, group in table.groupby(list(by), sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        array[tuple(ix[k] for ix, k in zip(index, keys))] = float(np.mean(group[column].to_numpy(np.float64)))
    return array, [[_label(v) for v in axis] for axis in labels]


class GradientNormProbe(TrainingProbe):
    """L2 norm of the training step's gradient (before clipping): total, per layer, per parameter group.

    Records ``total``, ``norm[layer]`` (over each block's parameters) and
    ``norm[group]`` (attn, mlp, norm, embed, unembed, ... as in
    ``normlens.probes.effectiveness.param_group``); with ``per_parameter``
    also ``norm[param]``. Mix-LN compares these per-layer norms across placements.
    """

    name = "grad_norm"
    reads_gradients = True

    def __init__(self, *, per_parameter: bool = False):
        self.per_parameter = per_parameter

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"per_parameter": self.per_parameter}

    def measure_gradients(self, model: nn.Module) -> Measurement:
        from normlens.probes.effectiveness import param_group

        squares: dict[str, float] = {}
        layers: dict[int, float] = {}
        groups: dict[str, float] = {}
        for name, param in model.named_parameters():
            if param.grad is None:
                continue
            clean = S.clean_name(name)
            square = float(param.grad.detach().double().pow(2).sum())
            squares[clean] = square
            layer = S.layer_of(clean)
            if layer is not None:
                layers[layer] = layers.get(layer, 0.0) + square
            group = param_group(name)
            groups[group] = groups.get(group, 0.0) + square
        layer_ids = sorted(layers)
        values: dict[str, Any] = {"total": math.sqrt(sum(squares.values())),
                                  "norm[layer]": [math.sqrt(layers[i]) for i in layer_ids],
                                  "norm[group]": [math.sqrt(v) for v in groups.values()]}
        axes = {"norm[layer]": [layer_ids], "norm[group]": [list(groups)]}
        if self.per_parameter:
            values["norm[param]"] = [math.sqrt(v) for v in squares.values()]
            axes["norm[param]"] = [list(squares)]
        return Measurement(values, axes)


def attention_entropy_probe(**kwargs: Any) -> ResultProbe:
    """Mean attention entropy per head (``entropy[layer,head]``, nats) and the entropy summary.

    The per-head mean is over query positions of full windows, the raw entropy
    that "ReLU's Revival" tracks over training. ``kwargs`` go to
    :class:`normlens.probes.AttentionEntropyProbe`.
    """
    from normlens.probes import AttentionEntropyProbe

    return ResultProbe(AttentionEntropyProbe(**kwargs), name="attention",
                       frame={"entropy": ("layer", "head")})


def residual_variance_probe() -> ResultProbe:
    """Residual-stream variance at each depth (``variance[site]``: resid_pre of every
    block, then the last resid_post), over all positions but the first, as in
    "The Curse of Depth"."""
    from normlens.probes import ActivationStatsProbe

    def build(model: nn.Module):
        n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
        if not n_layers:
            raise ValueError("residual_variance_probe needs a model with blocks (a zoo model or a bridge)")
        return ActivationStatsProbe(sites=S.residual_sites(n_layers))

    return ResultProbe(build, name="residual", summary=False, frame={"variance": ("site",)},
                       where={"group": "body"})


def default_training_probes() -> list[TrainingProbe]:
    """Attention entropy per head, residual variance per depth, gradient norm per layer."""
    return [attention_entropy_probe(), residual_variance_probe(), GradientNormProbe()]

