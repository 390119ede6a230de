"""Which parameters an analysis differentiates or perturbs: names, presets, selection.

Shared by curvature operators and loss landscapes, so both agree on what "the
parameters" of a model are. TransformerLens bridges reach one tensor by several
names (``blocks.0._original_component.attn.q.weight`` and
``blocks.0.attn.q.weight``); each parameter is listed once under its clean name.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence, Union

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


def layer_pattern(layer: int) -> str:
    """Regex selecting every parameter of block ``layer``."""
    return layer_params(layer)


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
