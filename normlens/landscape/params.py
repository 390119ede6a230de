"""Parameters as named tensors: reading them from a model, hashing, flat views.

Every landscape routine works on a ``dict[str, Tensor]`` keyed by
``model.named_parameters()`` names. These helpers never change the model.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Union

import numpy as np
import torch
import torch.nn as nn

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


def parameter_slots(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Canonical parameter name -> every distinct (module, attribute) slot holding that tensor.

    A TransformerBridge reaches the same submodule by several paths, and tied weights
    (e.g. GPT-2's embedding and unembedding) are one tensor in two modules. Slots are
    deduplicated by (module, attribute), so each is swapped once.
    """
    canonical = {id(p): name for name, p in model.named_parameters()}
    slots: dict[str, list[tuple[nn.Module, str]]] = {name: [] for name in canonical.values()}
    seen: set[tuple[int, str]] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path) if path else model
        key = (id(module), attr)
        if key in seen:
            continue
        seen.add(key)
        slots[canonical[id(p)]].append((module, attr))
    return slots


def buffer_slots(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Canonical buffer name -> every distinct (module, attribute) slot holding that buffer
    (as :func:`parameter_slots` does for parameters)."""
    canonical = {id(b): name for name, b in model.named_buffers()}
    slots: dict[str, list[tuple[nn.Module, str]]] = {name: [] for name in canonical.values()}
    seen: set[tuple[int, str]] = set()
    for name, b in model.named_buffers(remove_duplicate=False):
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path) if path else model
        if (id(module), attr) in seen or id(b) not in canonical:
            continue
        seen.add((id(module), attr))
        slots[canonical[id(b)]].append((module, attr))
    return slots


def float_buffers(model: nn.Module) -> Params:
    """Detached floating-point buffers (e.g. BatchNorm running statistics) by canonical name."""
    return {name: b.detach() for name, b in model.named_buffers() if b.is_floating_point()}


def check_finite(tensors: Mapping[str, torch.Tensor], what: str = "the model") -> None:
    """Raise ValueError naming the first tensors that hold NaN or inf."""
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(
            f"{what} has non-finite (NaN/inf) weights in {len(bad)} tensor(s), e.g. {bad[:3]}: a diverged "
            "checkpoint has no loss landscape; use an earlier checkpoint or fix the training run"
        )


@contextmanager
def swapped_parameters(slots: Mapping[str, list[tuple[nn.Module, str]]],
                       tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Run the model with ``tensors`` in place of the named parameters (or buffers); restore the originals.

    A replacement for ``torch.func.functional_call``, whose restore step leaves
    replaced tensors behind when one module is reachable by several paths (as in
    TransformerLens bridges). Works under ``vmap`` and autograd. The original
    Parameter objects are put back (in reverse order) even if the forward raises.
    """
    saved: list[tuple[nn.Module, str, Any]] = []
    try:
        for name, tensor in tensors.items():
            if name not in slots:
                raise KeyError(f"the model has no parameter or buffer named {name!r}")
            for module, attr in slots[name]:
                store = module._parameters if attr in module._parameters else module._buffers
                saved.append((store, attr, store[attr]))
                store[attr] = tensor
        yield
    finally:
        for store, attr, original in reversed(saved):
            store[attr] = original


def functional_forward(model: nn.Module, slots: Mapping[str, list[tuple[nn.Module, str]]],
                       tensors: Mapping[str, torch.Tensor], *args: Any) -> Any:
    """``model(*args)`` evaluated with ``tensors`` substituted for the named parameters."""
    with swapped_parameters(slots, tensors):
        return model(*args)
