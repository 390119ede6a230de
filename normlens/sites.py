"""The one place that builds activation (hook) names.

Names are TransformerLens's canonical ones, so they work on zoo models and on
any TransformerLens bridge. Nothing else in normlens spells a hook name.
"""
from __future__ import annotations


def norm_slots(n_layers: int) -> list[str]:
    """Module paths of every norm slot, in forward order."""
    slots = []
    for layer in range(n_layers):
        slots += [f"blocks.{layer}.ln1", f"blocks.{layer}.ln2"]
    return slots + ["ln_final"]


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
