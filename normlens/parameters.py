"""Which parameters an analysis differentiates or perturbs: names, presets, selection.

Shared by curvature operators and loss landscapes, so both agree on what "the
parameters" of a model are. TransformerLens bridges reach one tensor by several
names (``blocks.0._original_component.attn.q.weight`` and
``blocks.0.attn.q.weight``); each parameter is listed once under its clean name.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import torch
import torch.nn as nn

from normlens.sites import ATTN_PARAMS, MLP_PARAMS, clean_name, is_norm_module, layer_params

ParamSelector = Union[None, str, Sequence[str], Callable[[str, nn.Parameter], bool]]


@dataclass(frozen=True)
class ParamInfo:
    """One parameter: ``key`` for functional_call, ``name`` to show, every alias."""

    key: str
    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    in_norm: bool


def describe_parameters(model: nn.Module) -> list[ParamInfo]:
    """Every trainable parameter once, with readable names.

    TransformerLens bridges wrap modules as ``_original_component``; the shown
    name drops that, giving e.g. ``blocks.0.attn.q.weight``. A pattern matches
    if it matches any alias of the parameter.
    """
    aliases: dict[int, list[str]] = {}
    in_norm: dict[int, bool] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            aliases.setdefault(id(param), [])
            if clean_name(full) not in aliases[id(param)]:
                aliases[id(param)].append(clean_name(full))
            in_norm[id(param)] = in_norm.get(id(param), False) or is_norm_module(module)
    infos = []
    for key, param in model.named_parameters():
        if not param.requires_grad:
            continue
        names = aliases.get(id(param), [])
        cleaned = clean_name(key)
        if cleaned not in names:
            names.append(cleaned)
        infos.append(
            ParamInfo(key, names[0], tuple(names), tuple(param.shape), in_norm.get(id(param), False))
        )
    return infos


_PRESETS: dict[str, Callable[[ParamInfo], bool]] = {
    "all": lambda info: True,
    "norms": lambda info: info.in_norm,
    "weights": lambda info: len(info.shape) >= 2,
    "attn": lambda info: any(re.search(ATTN_PARAMS, a) for a in info.aliases),
    "mlp": lambda info: any(re.search(MLP_PARAMS, a) for a in info.aliases),
}

PRESETS = tuple(_PRESETS)


layer_pattern = layer_params  # the regex selecting every parameter of block ``layer`` (one home: sites)


def select_parameters(model: nn.Module, params: ParamSelector = None, *,
                      allow_empty: bool = False) -> list[ParamInfo]:
    """The parameters a curvature operator differentiates with respect to.

    Args:
        params: None (all trainable), a preset ("all", "norms", "weights",
            "attn", "mlp"), a regular expression searched in each parameter's
            names (e.g. ``r"^blocks\\.0\\."``, see :func:`layer_pattern`), a list
            of those (union), or a predicate ``f(name, parameter) -> bool``.
        allow_empty: return [] instead of raising when nothing matches.
    """
    infos = describe_parameters(model)
    if not infos:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    if params is None:
        return infos
    by_key = dict(model.named_parameters())
    if callable(params):
        chosen = [info for info in infos if params(info.name, by_key[info.key])]
    else:
        selectors = [params] if isinstance(params, str) else list(params)
        if not selectors or not all(isinstance(s, str) for s in selectors):
            raise TypeError(
                f"params must be None, a string, a list of strings or a predicate, got {params!r}"
            )
        tests = []
        for selector in selectors:
            preset = _PRESETS.get(selector)
            if preset is None:
                try:
                    regex = re.compile(selector)
                except re.error as err:
                    raise ValueError(f"params pattern {selector!r} is not a valid regex: {err}") from None
                preset = lambda info, regex=regex: any(regex.search(a) for a in info.aliases)  # noqa: E731
            tests.append(preset)
        chosen = [info for info in infos if any(test(info) for test in tests)]
    if not chosen and not allow_empty:
        examples = ", ".join(info.name for info in infos[:6])
        raise ValueError(
            f"params={params!r} matches no trainable parameter of {type(model).__name__}; "
            f"presets are {PRESETS}, names look like: {examples}, ..."
        )
    return chosen


# ------------------------------------------------- parameters the forward uses

def _first_row(batch: object) -> object:
    """The first example of a batch (tensor, tuple/list or dict of tensors): usage is structural."""
    if isinstance(batch, torch.Tensor):
        return batch[:1] if batch.dim() else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_first_row(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _first_row(v) for k, v in batch.items()}
    return batch


def find_unused_parameters(model: nn.Module, batch: object,
                           loss_fn: Callable[[nn.Module, object], torch.Tensor] | None = None,
                           ) -> list[ParamInfo]:
    """Trainable parameters that receive no gradient from ``loss_fn(model, batch)``.

    TransformerLens bridges of Hugging Face GPT-2 keep fused ``qkv`` copies that the
    forward never reads (21 M of GPT-2 small's 145.7 M bridge parameters); a Hessian
    with respect to them is undefined and landscape directions along them are wasted.
    One forward and backward on the first example of ``batch`` (eval mode, RNG
    restored; no ``.grad`` is written) decides: a parameter whose gradient is
    ``None`` is unused. A parameter with an all-zero gradient is used.

    Args:
        batch: what ``loss_fn`` takes; default loss: (batch, pos) int64 tokens.
        loss_fn: ``f(model, batch) -> scalar``; default :func:`normlens.losses.next_token_loss`.
    """
    from normlens.hygiene import eval_mode, rng_preserved
    from normlens.losses import next_token_loss

    loss_fn = loss_fn or next_token_loss
    infos = describe_parameters(model)
    by_key = dict(model.named_parameters())
    tensors = [by_key[info.key] for info in infos]
    device = tensors[0].device if tensors else None
    with rng_preserved(device), eval_mode(model), torch.enable_grad():
        loss = loss_fn(model, _first_row(batch))
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [info for info, g in zip(infos, grads) if g is None]


def describe_exclusion(unused: Sequence[ParamInfo]) -> str:
    """One line for logs and reports, e.g. "excluded 21.3 M parameters that the forward does not use
    (blocks.0.attn.qkv.weight, ...)"; "" when nothing was excluded."""
    if not unused:
        return ""
    count = sum(math.prod(info.shape) for info in unused)
    size = f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count}"
    names = ", ".join(info.name for info in unused[:3]) + (", ..." if len(unused) > 3 else "")
    return f"excluded {size} parameters that the forward does not use ({names})"


class UnusedParameterError(ValueError):
    """Parameters asked for by name receive no gradient from the forward."""


def drop_unused(selected: Sequence[ParamInfo], unused: Sequence[ParamInfo],
                params: ParamSelector = None) -> tuple[list[ParamInfo], list[ParamInfo]]:
    """Split ``selected`` into (used, dropped) given the ``unused`` parameters of the forward.

    Parameters that the forward never reads get a zero gradient by construction, so
    curvature with respect to them is zero and directions along them are wasted: they
    are dropped (say so with :func:`describe_exclusion`). An explicit request is an
    error instead: ``params`` naming an unused parameter exactly (its name or an alias,
    alone or in a list), or a selection in which every parameter is unused.
    """
    unused_keys = {info.key for info in unused}
    used = [info for info in selected if info.key not in unused_keys]
    dropped = [info for info in selected if info.key in unused_keys]
    if not dropped:
        return used, dropped
    names = [params] if isinstance(params, str) else list(params) if isinstance(params, (list, tuple)) else []
    named = [info.name for info in dropped if any(n in info.aliases for n in names)]
    if named or not used:
        shown = named or [info.name for info in dropped]
        raise UnusedParameterError(
            f"params={params!r} asks for {', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''}, "
            "which the forward does not use (no gradient reaches them, so their curvature is zero); "
            "select parameters the forward uses, e.g. params=None for all of them"
        )
    return used, dropped


class NonFiniteWeightsError(FloatingPointError, ValueError):
    """A parameter holds NaN or inf (a diverged model or a bad checkpoint)."""


def check_finite(tensors: Mapping[str, torch.Tensor], what: str = "the model", kind: str = "parameter") -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first floating tensor with NaN/inf entries.

    Cheap (one pass); run it before any analysis that differentiates or perturbs a
    model, since NaN weights make every loss, curvature and landscape NaN.
    """
    with torch.no_grad():
        for name, tensor in tensors.items():
            if not tensor.is_floating_point():
                continue
            finite = torch.isfinite(tensor.detach())
            if not bool(finite.all()):
                bad = tensor.detach()[~finite]
                n_nan = int(torch.isnan(bad).sum())
                n_bad = bad.numel()
                raise NonFiniteWeightsError(
                    f"{what} has {n_bad} non-finite value{'s' if n_bad > 1 else ''} (NaN or inf) in {kind} "
                    f"{name!r} (shape {tuple(tensor.shape)}); it diverged in training or was loaded wrongly "
                    f"({n_nan} NaN, {n_bad - n_nan} inf of {tensor.numel()} entries): analyse a checkpoint from "
                    "before the divergence or retrain with a lower learning rate")


def check_finite_weights(model: nn.Module, *, name: str = "the model") -> None:
    """:func:`check_finite` over every parameter, then every floating buffer, of ``model`` under its shown name."""
    shown = {info.key: info.name for info in describe_parameters(model)}
    check_finite({shown.get(key, clean_name(key)): p for key, p in model.named_parameters()}, name)
    check_finite({clean_name(key): b for key, b in model.named_buffers()}, name, kind="buffer")


# ------------------------------------------------- running a model on other tensors

def _slots(model: nn.Module, store: str) -> dict[str, list[tuple[nn.Module, str]]]:
    """Canonical name -> every distinct (module, attribute) holding that tensor in ``store``
    ("_parameters" or "_buffers")."""
    named = model.named_parameters() if store == "_parameters" else model.named_buffers()
    key_of = {id(t): key for key, t in named}
    slots: dict[str, list[tuple[nn.Module, str]]] = {key: [] for key in key_of.values()}
    for module in model.modules():  # every module object once, so every slot once
        for attr, tensor in getattr(module, store).items():
            if tensor is not None and id(tensor) in key_of:
                slots[key_of[id(tensor)]].append((module, attr))
    return slots


def parameter_slots(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """``named_parameters`` key -> every distinct (module, attribute) that holds that tensor.

    One tensor can sit in several slots: a TransformerLens bridge reaches a module by
    two paths, and tied weights (GPT-2's embedding and unembedding) are one tensor in
    two modules. :func:`swapped_parameters` fills every slot, which
    ``torch.func.functional_call`` does not always do on a bridge (GPT-2's tied
    unembedding kept the original weight, so gradients missed that path).
    """
    return _slots(model, "_parameters")


def buffer_slots(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """``named_buffers`` key -> every distinct (module, attribute) holding that buffer."""
    return _slots(model, "_buffers")


@contextmanager
def swapped_parameters(slots: Mapping[str, list[tuple[nn.Module, str]]],
                       tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Run the model with ``tensors`` (by canonical name) in every slot of those parameters
    or buffers (slots from :func:`parameter_slots` / :func:`buffer_slots`).

    A replacement for ``torch.func.functional_call``, whose restore step leaves replaced
    tensors behind when one module is reachable by several paths (TransformerLens
    bridges). Works under autograd, ``vmap`` and other ``torch.func`` transforms; the
    original objects are put back, in reverse order, even if the forward raises.
    """
    saved: list[tuple[dict, str, Any]] = []
    try:
        for key, tensor in tensors.items():
            if key not in slots:
                raise KeyError(f"the model has no parameter or buffer named {key!r}")
            for module, attr in slots[key]:
                store = module._parameters if attr in module._parameters else module._buffers
                saved.append((store, attr, store[attr]))
                store[attr] = tensor
        yield
    finally:
        for store, attr, original in reversed(saved):
            store[attr] = original
