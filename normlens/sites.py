"""The one place that builds activation (hook) names, and tells what a site is.

Names are TransformerLens's canonical ones, so they work on zoo models and on
any TransformerLens bridge. Nothing else in normlens spells a hook name, a norm
slot or a parameter-name pattern of the block layout.
"""
from __future__ import annotations

import re

import torch.nn as nn

FINAL_NORM = "ln_final"
"""Slot (module path) of the norm after the last block."""


def block(layer: int) -> str:
    """Module path of block ``layer``: block(3) -> "blocks.3"."""
    return f"blocks.{layer}"


def ln1(layer: int) -> str:
    """Slot of the norm before attention (Pre-LN) or after it (Post-LN): "blocks.{l}.ln1"."""
    return f"{block(layer)}.ln1"


def ln2(layer: int) -> str:
    """Slot of the norm before the MLP (Pre-LN) or after it (Post-LN): "blocks.{l}.ln2"."""
    return f"{block(layer)}.ln2"


BLOCK_NORM_NAMES = ("ln1", "ln2")
"""Attribute names of the two norm slots inside a block (ln1(l) == f"blocks.{l}.{BLOCK_NORM_NAMES[0]}")."""


def norm_slots(n_layers: int) -> list[str]:
    """Module paths of every norm slot, in forward order.

    >>> norm_slots(1)
    ['blocks.0.ln1', 'blocks.0.ln2', 'ln_final']
    """
    slots = []
    for layer in range(n_layers):
        slots += [ln1(layer), ln2(layer)]
    return slots + [FINAL_NORM]


# --- parameter-name patterns (regular expressions over TransformerLens names) ---

def layer_params(layer: int) -> str:
    """Regex selecting every parameter of block ``layer``.

    >>> bool(re.search(layer_params(1), "blocks.1.attn.W_Q")), bool(re.search(layer_params(1), "blocks.10.mlp.W_in"))
    (True, False)
    """
    return rf"^{re.escape(block(layer))}\."


ATTN_PARAMS = r"(^|\.)attn\."
"""Regex found in the name of every attention parameter (any layout that names it ``attn``)."""

MLP_PARAMS = r"(^|\.)mlp\."
"""Regex found in the name of every MLP parameter."""


def block_param_groups(n_layers: int) -> dict[str, str]:
    """Block label -> regex over parameter names: embeddings, attn / mlp / norms of each layer,
    the final norm and the unembedding, in forward order."""
    groups = {"embed": r"^(embed|pos_embed)\."}
    for layer in range(n_layers):
        prefix = re.escape(block(layer))
        groups[f"{block(layer)}.attn"] = rf"^{prefix}\.attn\."
        groups[f"{block(layer)}.mlp"] = rf"^{prefix}\.mlp\."
        groups[f"{block(layer)}.norms"] = rf"^{prefix}\.(?:{'|'.join(BLOCK_NORM_NAMES)})\."
    groups[FINAL_NORM] = rf"^{FINAL_NORM}\."
    groups["unembed"] = r"^unembed\."
    return groups


def norm_hook(slot: str, hook: str) -> str:
    """e.g. norm_hook("blocks.0.ln1", "hook_scale") -> "blocks.0.ln1.hook_scale"."""
    return f"{slot}.{hook}"


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def attn_hook(layer: int, hook: str) -> str:
    """e.g. attn_hook(0, "hook_pattern") -> "blocks.0.attn.hook_pattern"."""
    return f"blocks.{layer}.attn.{hook}"


def mlp_post(layer: int) -> str:
    """Input of the MLP's output projection: the activation after GELU/ReLU."""
    return f"blocks.{layer}.mlp.out.hook_in"


# --- probes (issue 6) -------------------------------------------------------

def block_in(layer: int) -> str:
    """The block's input: the residual stream before block ``layer`` (alias of hook_resid_pre)."""
    return resid_pre(layer)


def block_out(layer: int) -> str:
    """The block's output: the residual stream after block ``layer`` (alias of hook_resid_post)."""
    return resid_post(layer)


def attn_q(layer: int) -> str:
    """Output of the query projection, (batch, pos, n_heads, d_head) or (batch, pos, n_heads*d_head)."""
    return f"blocks.{layer}.attn.q.hook_out"


def attn_k(layer: int) -> str:
    """Output of the key projection, same layout as :func:`attn_q`."""
    return f"blocks.{layer}.attn.k.hook_out"


def attn_pattern(layer: int) -> str:
    """The full (batch, head, query, key) attention pattern (the reference path)."""
    return attn_hook(layer, "hook_pattern")


def norm_in(slot: str) -> str:
    return norm_hook(slot, "hook_in")


def norm_out(slot: str) -> str:
    return norm_hook(slot, "hook_out")


def norm_scale(slot: str) -> str:
    """The per-token divisor of LN/RMSNorm (sqrt(var + eps)), shape (batch, pos, 1)."""
    return norm_hook(slot, "hook_scale")


def module_input(path: str) -> str:
    """Probe site for the first positional input of submodule ``path`` of a plain nn.Module."""
    return f"{path}.hook_in" if path else "hook_in"


def module_output(path: str) -> str:
    """Probe site for the output of submodule ``path`` of a plain nn.Module."""
    return f"{path}.hook_out" if path else "hook_out"


def split_module_site(site: str) -> tuple[str, str]:
    """Inverse of module_input/module_output: ("a.b.hook_in") -> ("a.b", "in")."""
    for suffix, which in ((".hook_in", "in"), (".hook_out", "out")):
        if site.endswith(suffix):
            return site[: -len(suffix)], which
    if site in ("hook_in", "hook_out"):
        return "", site[5:]
    raise ValueError(f"{site!r} is not a module site; expected '<module path>.hook_in' or '.hook_out'")


def layer_of(site: str) -> int | None:
    """The block index in a site name ("blocks.3.ln1.hook_scale" -> 3), None outside blocks."""
    parts = site.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("blocks", "layers", "h") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def residual_sites(n_layers: int) -> list[str]:
    """Residual-stream points in depth order: resid_pre of each block, then the last resid_post."""
    return [resid_pre(layer) for layer in range(n_layers)] + [resid_post(n_layers - 1)]


def site_kind(site: str) -> str:
    """What a site name holds: norm_scale, attn_out, mlp_out, mlp_post, norm_in, norm_out, resid or other."""
    for kind, suffix in (("norm_scale", ".hook_scale"), ("attn_out", "hook_attn_out"),
                         ("mlp_out", "hook_mlp_out"), ("mlp_post", "mlp.out.hook_in")):
        if site.endswith(suffix):
            return kind
    if ".ln" in site or site.startswith("ln_final"):
        return "norm_in" if site.endswith("hook_in") else "norm_out"
    if "hook_resid" in site:
        return "resid"
    return "other"


def clean_name(name: str) -> str:
    """A bridge name without TransformerLens's wrapping:
    "blocks.0._original_component.attn.q.weight" -> "blocks.0.attn.q.weight"."""
    return name.replace("._original_component", "").replace("_original_component.", "")


def is_norm_module(module: nn.Module) -> bool:
    """torch's LayerNorm/GroupNorm/BatchNorm/RMSNorm, and any class whose name says norm or DyT
    (ours, TransformerLens's and Hugging Face's norms, e.g. ``LlamaRMSNorm``)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
        return True
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return True
    name = type(module).__name__.lower()
    return "norm" in name or "dyt" in name
