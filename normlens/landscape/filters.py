"""Which axis of each weight indexes its output units: the "filters" of filter normalization.

Li et al. 2018 (*Visualizing the Loss Landscape of Neural Nets*) rescale a random
direction per filter: per output unit of a layer (an output neuron of a fully
connected layer, an output channel of a convolution). Where the output units sit
in a weight depends on the layer that uses it, not on the tensor:

* ``nn.Linear`` (and subclasses), ``nn.Bilinear``: weight (out, in[, in2]), axis 0;
* ``nn.Embedding``, ``nn.EmbeddingBag``: (vocab, d), one unit per token row, axis 0;
* ``nn.Conv1d/2d/3d``: (out, in/groups, *k), per output channel, axis 0;
* ``nn.ConvTranspose1d/2d/3d``: (in, out/groups, *k), per output channel, axis 1
  (within each group);
* Hugging Face ``transformers`` ``Conv1D`` (GPT-2): (in, out) with y = x W + b, axis 1;
* ``nn.MultiheadAttention`` in-projections ((3·d or d, d), used as a linear layer), axis 0;
* ``nn.RNN/LSTM/GRU`` weights (gates·hidden, in), axis 0.

TransformerLens 4.x bridges keep the wrapped model's own modules (reached through
``_original_component``): the zoo's q/k/v/o and MLP weights are ``nn.Linear``; a
bridged Hugging Face GPT-2 has q/k/v split into ``nn.Linear`` (stored (out, in)),
while its attention output and MLP weights stay ``Conv1D`` (stored (in, out)).
A weight is classified by the module that owns it; a tensor held by several
modules (tied embedding and unembedding) must get one answer from all of them.
Weights of modules not in the table get axis 0 (:data:`DEFAULT_AXIS`) with a
warning naming them; pass ``output_axes`` to say otherwise.
"""
from __future__ import annotations

import sys
import warnings
from typing import Mapping, NamedTuple, Optional

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

DEFAULT_AXIS = 0


class OutputAxis(NamedTuple):
    """The axis of a weight that indexes output units; ``groups`` > 1 only for grouped transposed convolutions,
    whose output channels are (group, channel-in-group) pairs spread over axes 0 and 1."""

    axis: int
    groups: int = 1


class UnknownLayerWarning(UserWarning):
    """A ≥2-D parameter belongs to a module type whose output axis is not known; axis 0 was assumed."""


def _is_hf_conv1d(module: nn.Module) -> bool:
    # Hugging Face's GPT-2 Conv1D; if transformers.pytorch_utils is not imported, no instance can exist
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


def module_output_axis(module: nn.Module, attr: str) -> Optional[OutputAxis]:
    """The output axis of ``module``'s parameter ``attr``, or None for a module type not in the table."""
    if _is_hf_conv1d(module):
        return OutputAxis(1)
    if isinstance(module, _ConvTransposeNd):
        return OutputAxis(1, module.groups)
    if isinstance(module, (nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag, _ConvNd, nn.RNNBase)):
        return OutputAxis(0)
    if isinstance(module, nn.MultiheadAttention) and attr.endswith("proj_weight"):
        return OutputAxis(0)
    return None


def output_axes(model: nn.Module, overrides: Optional[Mapping[str, int | OutputAxis]] = None, *,
                warn: bool = True) -> dict[str, OutputAxis]:
    """``named_parameters`` name -> output axis, for every parameter with ≥ 2 dimensions.

    ``overrides`` (name -> axis) are taken as given. Otherwise the owning modules decide:
    ValueError if modules sharing one tensor disagree; parameters of unknown module types
    get :data:`DEFAULT_AXIS` (with an :class:`UnknownLayerWarning` if ``warn``).
    """
    from normlens.parameters import parameter_slots

    by_name = dict(model.named_parameters())
    overrides = _checked_overrides(overrides, by_name)
    axes: dict[str, OutputAxis] = {}
    unknown: list[str] = []
    for name, slots in parameter_slots(model).items():
        if by_name[name].dim() < 2:
            continue
        if name in overrides:
            axes[name] = overrides[name]
            continue
        found = {}
        for module, attr in slots:
            axis = module_output_axis(module, attr)
            if axis is not None:
                found[type(module).__name__] = axis
        if len(set(found.values())) > 1:
            raise ValueError(
                f"parameter {name} is shared by layers with different output axes ({found}); "
                f"pass output_axes={{{name!r}: axis}} to choose one"
            )
        if found:
            axes[name] = next(iter(found.values()))
        else:
            axes[name] = OutputAxis(DEFAULT_AXIS)
            unknown.append(f"{name} ({type(slots[0][0]).__name__})")
    if unknown and warn:
        warnings.warn(
            f"filter normalization: output axis unknown for {len(unknown)} weight(s), e.g. {unknown[:3]}; "
            f"assumed axis {DEFAULT_AXIS}. Pass output_axes={{name: axis}} if that is wrong.",
            UnknownLayerWarning, stacklevel=3,
        )
    return axes


def _checked_overrides(overrides: Optional[Mapping[str, int | OutputAxis]],
                       params: Mapping[str, torch.Tensor]) -> dict[str, OutputAxis]:
    out = {}
    for name, value in (overrides or {}).items():
        if name not in params:
            raise ValueError(f"output_axes names {name!r}, which is not a parameter of the model")
        out[name] = value if isinstance(value, OutputAxis) else OutputAxis(int(value))
    return out


def _check_axis(shape: torch.Size, out: OutputAxis, name: str) -> None:
    if not 0 <= out.axis < len(shape) or out.groups < 1 or (out.groups > 1 and out.axis != 1):
        raise ValueError(f"output axis {tuple(out)} does not fit parameter {name} of shape {tuple(shape)}")


def unit_norms(tensor: torch.Tensor, out: OutputAxis) -> torch.Tensor:
    """‖tensor_i‖ over every entry feeding output unit i: shape (n_units,).

    A grouped transposed convolution's weight (in, out/g, *k) holds output channel
    (group j, channel c) in rows j·in/g … (j+1)·in/g − 1 of column c.
    """
    if out.groups == 1:
        return tensor.movedim(out.axis, 0).reshape(tensor.shape[out.axis], -1).norm(dim=1)
    g = out.groups
    grouped = tensor.reshape(g, tensor.shape[0] // g, *tensor.shape[1:])  # (g, in/g, out/g, *k)
    return grouped.movedim(2, 1).reshape(g * tensor.shape[1], -1).norm(dim=1)  # (g·out/g,)


def per_unit(values: torch.Tensor, shape: torch.Size, out: OutputAxis) -> torch.Tensor:
    """``values`` (n_units,) laid out to broadcast against a tensor of ``shape``."""
    if out.groups == 1:
        view = [1] * len(shape)
        view[out.axis] = shape[out.axis]
        return values.view(view)
    g = out.groups
    grid = values.view(g, 1, shape[1]).expand(g, shape[0] // g, shape[1])  # (g, in/g, out/g)
    return grid.reshape(shape[0], shape[1], *([1] * (len(shape) - 2)))


def filter_normalize(d: torch.Tensor, theta: torch.Tensor, out: OutputAxis, name: str = "") -> torch.Tensor:
    """d with each output unit's entries rescaled to θ's norm there: d_i / ‖d_i‖ · ‖θ_i‖.

    Units where d is zero stay zero. Computed in at least float32.
    """
    _check_axis(theta.shape, out, name)
    work = torch.promote_types(theta.dtype, torch.float32)
    d, t = d.to(work), theta.detach().to(work)
    d_norm, t_norm = unit_norms(d, out), unit_norms(t, out)  # (n_units,)
    scale = torch.where(d_norm > 0, t_norm / d_norm.clamp_min(torch.finfo(work).tiny), torch.zeros_like(d_norm))
    return d * per_unit(scale, d.shape, out)


def resolve_output_axes(model: object, params: Mapping[str, torch.Tensor],
                        overrides: Optional[Mapping[str, int | OutputAxis]] = None) -> dict[str, OutputAxis]:
    """Output axes for ``params``: from ``model``'s modules if it is an ``nn.Module``, else
    :data:`DEFAULT_AXIS`; ``overrides`` (name -> axis) win."""
    if isinstance(model, nn.Module):
        axes = output_axes(model, overrides)
    else:
        axes = _checked_overrides(overrides, params)
    return {n: axes.get(n, OutputAxis(DEFAULT_AXIS)) for n, p in params.items() if p.dim() >= 2}
