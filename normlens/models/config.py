"""ZooConfig: everything needed to rebuild a zoo model exactly."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from normlens.models.norms import NORM_KINDS

PLACEMENTS = ("pre", "post", "mix", "scaled")
ACTIVATIONS = ("gelu", "relu")


class ConfigError(ValueError):
    """A model configuration that cannot be built; the message names the fix."""


@dataclass(frozen=True)
class ZooConfig:
    """A small GPT-style decoder that differs from its siblings only in normalization.

    Args:
        norm: "ln", "rms", "dyt", "none" or "lnfree" (LayerNorm with a frozen std).
        placement: "pre" (Pre-LN), "post" (Post-LN), "mix" (Mix-LN: Post-LN in the
            first quarter of blocks, at least one, Pre-LN after) or "scaled"
            (Pre-LN with LayerNorm Scaling, norm output x 1/sqrt(layer index)).
        act_fn: "gelu" or "relu".
        dyt_alpha0: DyT's initial alpha.
        frozen_std: the stored std of an "lnfree" model built from scratch.
        norm_kinds: per-slot override of ``norm`` written by LN removal, a tuple
            of (slot name, kind) pairs, e.g. (("blocks.0.ln2", "lnfree"),).
    """

    norm: str = "ln"
    placement: str = "pre"
    act_fn: str = "gelu"
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_ctx: int = 64
    d_vocab: int = 256
    d_mlp: int | None = None
    dyt_alpha0: float = 0.5
    frozen_std: float = 1.0
    eps: float = 1e-5
    seed: int = 0
    norm_kinds: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.norm not in NORM_KINDS:
            raise ConfigError(
                f"unknown norm kind {self.norm!r}; choose one of {', '.join(NORM_KINDS)}"
            )
        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"unknown placement {self.placement!r}; choose one of {', '.join(PLACEMENTS)}"
            )
        if self.act_fn not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.act_fn!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        for name in ("n_layers", "d_model", "n_heads", "n_ctx", "d_vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                f"pick n_heads among the divisors of d_model, e.g. "
                f"{[h for h in range(1, min(self.d_model, 16) + 1) if self.d_model % h == 0]}"
            )
        if self.d_mlp is not None and self.d_mlp < 1:
            raise ConfigError(f"d_mlp must be positive or None (4*d_model), got {self.d_mlp}")
        if not math.isfinite(self.dyt_alpha0) or self.dyt_alpha0 <= 0:
            raise ConfigError(f"dyt_alpha0 must be a positive number, got {self.dyt_alpha0}")
        if not self.frozen_std > 0:
            raise ConfigError(f"frozen_std must be positive, got {self.frozen_std}")
        for slot, kind in self.norm_kinds:
            if kind not in NORM_KINDS:
                raise ConfigError(f"norm_kinds[{slot!r}]={kind!r} is not one of {NORM_KINDS}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def resolved_d_mlp(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    def block_placement(self, layer: int) -> str:
        """"pre" or "post" for block ``layer`` (0-based)."""
        if self.placement == "post":
            return "post"
        if self.placement == "mix":
            return "post" if layer < max(1, self.n_layers // 4) else "pre"
        return "pre"

    def output_scale(self, layer: int) -> float:
        """LayerNorm Scaling's 1/sqrt(layer index) (1-based) under "scaled"; else 1."""
        return 1.0 / math.sqrt(layer + 1) if self.placement == "scaled" else 1.0

    def slot_kind(self, slot: str) -> str:
        """The norm kind of slot ``slot`` ("blocks.{l}.ln1", "blocks.{l}.ln2", "ln_final")."""
        return dict(self.norm_kinds).get(slot, self.norm)

    def replace(self, **changes: Any) -> "ZooConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["norm_kinds"] = [list(pair) for pair in self.norm_kinds]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ZooConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ZooConfig fields {unknown}; known fields: {sorted(known)}")
        data = dict(data)
        data["norm_kinds"] = tuple(tuple(pair) for pair in data.get("norm_kinds", ()))
        return cls(**data)
