"""Parameters as named tensors: reading them from a model, hashing, flat views.

Every landscape routine works on a ``dict[str, Tensor]`` keyed by
``model.named_parameters()`` names. These helpers never change the model.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, Union

import numpy as np
import torch
import torch.nn as nn

from normlens.parameters import swapped_parameters

Params = dict[str, torch.Tensor]
ParamSource = Union[nn.Module, Mapping[str, torch.Tensor]]


def parameters_of(source: ParamSource) -> Params:
    """Detached views of the parameters of a module, or a copy of a name -> tensor mapping."""
    if isinstance(source, nn.Module):
        return {name: p.detach() for name, p in source.named_parameters()}
    if isinstance(source, Mapping):
        return {name: torch.as_tensor(t).detach() for name, t in source.items()}
    raise TypeError(
        f"expected an nn.Module or a mapping of parameter name -> tensor, got {type(source).__name__}"
    )


def is_one_d(tensor: torch.Tensor) -> bool:
    """Biases, norm gains and scalars (DyT's alpha): tensors with at most one dimension."""
    return tensor.dim() <= 1


def check_same_shapes(expected: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor],
                      what: str = "direction") -> None:
    """Raise ValueError naming the first mismatches if names or shapes differ."""
    missing = [n for n in expected if n not in received]
    extra = [n for n in received if n not in expected]
    wrong = [
        f"{n}: {tuple(received[n].shape)} (model has {tuple(expected[n].shape)})"
        for n in expected
        if n in received and tuple(received[n].shape) != tuple(expected[n].shape)
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameter(s), e.g. {missing[:2]}")
        if extra:
            parts.append(f"{len(extra)} parameter(s) the model lacks, e.g. {extra[:2]}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:2]}")
        raise ValueError(
            f"the {what} does not fit the model: " + "; ".join(parts)
            + ". Directions must be built for a model with the same parameter names and shapes."
        )


def fingerprint(params: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes of every tensor (order independent)."""
    digest = hashlib.sha256()
    for name in sorted(params):
        tensor = params[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def tensor_fingerprint(tensor: torch.Tensor | np.ndarray) -> str:
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def flatten(params: Mapping[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """Concatenate ``params[name]`` for ``names`` into one (n_params,) vector."""
    return torch.cat([params[n].reshape(-1) for n in names])


def unflatten(vector: torch.Tensor, like: Mapping[str, torch.Tensor], names: list[str]) -> Params:
    """Split a (n_params,) vector back into tensors shaped like ``like``."""
    out, start = {}, 0
    for n in names:
        numel = like[n].numel()
        out[n] = vector[start:start + numel].view(like[n].shape).to(like[n].dtype)
        start += numel
    return out


def norm(a: Mapping[str, torch.Tensor]) -> float:
    """‖a‖ over every tensor of ``a`` (float64 accumulation)."""
    return float(sum(t.double().pow(2).sum() for t in a.values())) ** 0.5


def float_buffers(model: nn.Module) -> Params:
    """Detached floating-point buffers (e.g. BatchNorm running statistics) by canonical name."""
    return {name: b.detach() for name, b in model.named_buffers() if b.is_floating_point()}


def functional_forward(model: nn.Module, slots: Mapping[str, list[tuple[nn.Module, str]]],
                       tensors: Mapping[str, torch.Tensor], *args: Any) -> Any:
    """``model(*args)`` evaluated with ``tensors`` substituted for the named parameters."""
    with swapped_parameters(slots, tensors):
        return model(*args)
