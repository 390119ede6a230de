"""Build zoo models: TransformerLens bridges that differ only in their norms.

A zoo model is a :class:`transformer_lens.model_bridge.TransformerBridge` around
TransformerLens's native GPT-style decoder, with two changes: every block is a
:class:`ZooBlock` (so Post-LN and Mix-LN placements exist) and every norm slot
holds one of :mod:`normlens.models.norms`, wrapped by :class:`ZooNormBridge`,
which runs our module and exposes its hook points under TransformerLens names.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
from transformer_lens.model_bridge.sources.native.init import initialize_native_model
from transformer_lens.model_bridge.sources.native.model import NativeModel

from normlens.models.checks import check_memory
from normlens.models.config import ZooConfig
from normlens.models.norms import FrozenStdLayerNorm, attach_value_path, build_norm
from normlens import sites
from normlens.sites import norm_slots

# TransformerLens's config value per norm kind: tools that branch on it (logit
# lens, DLA) then treat our models as they would theirs.
_TL_NORMALIZATION_TYPE = {"ln": "LN", "lnfree": "LN", "rms": "RMS", "dyt": None, "none": None}


class ZooBlock(nn.Module):
    """A transformer block with Pre-LN or Post-LN placement.

    Pre-LN:  h = h + attn(ln1(h));  h = h + mlp(ln2(h))
    Post-LN: h = ln1(h + attn(h));  h = ln2(h + mlp(h))
    """

    def __init__(self, cfg: TransformerBridgeConfig, placement: str, attn: nn.Module,
                 mlp: nn.Module, ln1: nn.Module, ln2: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.placement = placement
        self.ln1 = ln1
        self.attn = attn
        self.ln2 = ln2
        self.mlp = mlp

    def forward(
        self,
        hidden_states: torch.Tensor,  # (batch, pos, d_model)
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> tuple[torch.Tensor]:
        if self.placement == "pre":
            attn_out, _ = self.attn(
                self.ln1(hidden_states), attention_mask=attention_mask, position_ids=position_ids
            )
            hidden_states = hidden_states + attn_out
            hidden_states = hidden_states + self.mlp(self.ln2(hidden_states))
        else:
            attn_out, _ = self.attn(
                hidden_states, attention_mask=attention_mask, position_ids=position_ids
            )
            hidden_states = self.ln1(hidden_states + attn_out)
            hidden_states = self.ln2(hidden_states + self.mlp(hidden_states))
        return (hidden_states,)

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}"


class ZooNormBridge(GeneralizedComponent):
    """Runs the wrapped normlens norm module between ``hook_in`` and ``hook_out``.

    TransformerLens's own NormalizationBridge recomputes LayerNorm from scratch
    and would ignore DyT or a frozen std; this bridge calls our module instead
    and registers the module's hook points (``hook_scale``, ``hook_normalized``,
    ``hook_pre_tanh``) as its own, so they appear as ``blocks.{l}.ln1.hook_scale``.
    """

    def get_hooks(self) -> dict[str, HookPoint]:
        hooks = super().get_hooks()
        if self.original_component is not None:
            hooks.update(
                (name, child)
                for name, child in self.original_component.named_children()
                if isinstance(child, HookPoint)
            )
        return hooks

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states = self.hook_in(hidden_states)
        return self.hook_out(self.original_component(hidden_states))


def _tl_config(config: ZooConfig) -> TransformerBridgeConfig:
    return TransformerBridgeConfig(
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_ctx=config.n_ctx,
        d_head=config.d_head,
        n_heads=config.n_heads,
        d_vocab=config.d_vocab,
        d_mlp=config.resolved_d_mlp,
        act_fn=config.act_fn,
        normalization_type=_TL_NORMALIZATION_TYPE[config.norm],
        eps=config.eps,
        seed=config.seed,
    )


def _norm_for_slot(config: ZooConfig, slot: str, layer: int | None) -> nn.Module:
    kind = config.slot_kind(slot)
    if layer is None and config.placement == "post":
        kind = "none"  # a Post-LN stack already ends in a norm
    return build_norm(
        kind,
        config.d_model,
        eps=config.eps,
        output_scale=config.output_scale(layer) if layer is not None else 1.0,
        dyt_alpha0=config.dyt_alpha0_for(slot),
        frozen_std=config.frozen_std,
    )


def _swap_norm_bridges(adapter) -> None:
    mapping = adapter.component_mapping
    mapping[sites.FINAL_NORM] = ZooNormBridge(name="ln_out", config=adapter.cfg)
    block_submodules = mapping["blocks"].submodules
    for slot in sites.BLOCK_NORM_NAMES:
        block_submodules[slot] = ZooNormBridge(name=slot, config=adapter.cfg)


def build_model(config: ZooConfig | None = None, **overrides) -> TransformerBridge:
    """Build a zoo model from ``config`` (or ``ZooConfig(**overrides)``), offline.

    Weights follow TransformerLens's GPT-2 init seeded by ``config.seed``; the
    global RNG is left untouched. The config is kept as ``model.normlens_config``.
    A config whose model would not fit in this machine's memory is refused
    (ConfigError with the estimate) before anything is allocated.

    >>> model = build_model(norm="dyt", n_layers=1, d_model=32, n_heads=2)
    >>> model(torch.zeros(1, 4, dtype=torch.long)).shape
    torch.Size([1, 4, 256])
    """
    if config is None:
        config = ZooConfig(**overrides)
    elif overrides:
        config = config.replace(**overrides)
    check_memory(config)
    tl_cfg = _tl_config(config)
    native_cfg = copy.deepcopy(tl_cfg)
    native_cfg.normalization_type = "LN"  # built with nn.LayerNorm, then swapped below
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        native = NativeModel(native_cfg)
        initialize_native_model(native, native_cfg, seed=config.seed)
    for layer, block in enumerate(native.layers):
        native.layers[layer] = ZooBlock(
            native_cfg,
            config.block_placement(layer),
            attn=block.attn,
            mlp=block.mlp,
            ln1=_norm_for_slot(config, sites.ln1(layer), layer),
            ln2=_norm_for_slot(config, sites.ln2(layer), layer),
        )
    native.ln_out = _norm_for_slot(config, sites.FINAL_NORM, None)
    bridge = build_bridge_from_module(
        native,
        "TransformerLensNative",
        tl_config=tl_cfg,
        post_adapter_hook=_swap_norm_bridges,
        model_name=f"normlens-{config.norm}-{config.placement}",
    )
    bridge.normlens_config = config
    _attach_value_paths(bridge, config)
    return bridge


def _attach_value_paths(bridge: TransformerBridge, config: ZooConfig) -> None:
    """Frozen-std attention-input norms of Pre-LN blocks feed the value projection with their
    own divisor (see :class:`normlens.models.norms.FrozenStdLayerNorm`)."""
    for layer in range(config.n_layers):
        norm = bridge.get_submodule(f"blocks.{layer}.ln1").original_component
        if isinstance(norm, FrozenStdLayerNorm) and config.block_placement(layer) == "pre":
            attach_value_path(norm, bridge.get_submodule(f"blocks.{layer}.attn.v"))


def get_config(model: nn.Module) -> ZooConfig:
    """The ZooConfig a zoo model was built from (error for other models)."""
    config = getattr(model, "normlens_config", None)
    if not isinstance(config, ZooConfig):
        raise TypeError(
            f"{type(model).__name__} is not a normlens zoo model (no normlens_config); "
            "build one with normlens.build_model(...)"
        )
    return config


def norm_modules(model: TransformerBridge) -> dict[str, nn.Module]:
    """Slot name ("blocks.0.ln1", ..., "ln_final") -> the norm module in it."""
    modules = {}
    for slot in norm_slots(model.cfg.n_layers):
        bridge_part = model.get_submodule(slot)
        modules[slot] = getattr(bridge_part, "original_component", None) or bridge_part
    return modules


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
