"""ZooConfig: everything needed to rebuild a zoo model exactly."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from normlens.models.norms import NORM_KINDS

PLACEMENTS = ("pre", "post", "mix", "scaled")

# DyT's initial alpha per slot kind when a config sets none (see ZooConfig). The DyT paper's
# default is 0.5 everywhere (its non-LLM models); at the demo size (2 layers, d_model 64, ctx 64,
# 300 steps, byte tokens) that trains 0.48 nats worse than LayerNorm, these 0.10 worse: the best
# of a search over alpha0 in {0.5, ..., 16} per kind (benchmarks/dyt_alpha0_search.py, README).
# Pass dyt_alpha0=0.5 for the paper's setting.
DEFAULT_DYT_ALPHA0 = {"attn": 4.0, "mlp": 2.0, "final": 4.0}
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
        dyt_alpha0: DyT's initial alpha for every DyT slot (the single-value
            spelling; ``None`` uses the per-kind defaults below).
        dyt_alpha0_attn, dyt_alpha0_mlp, dyt_alpha0_final: DyT's initial alpha
            per slot kind (attention-input norms ``ln1``, MLP-input norms
            ``ln2``, the final norm), as the DyT paper (Zhu et al. 2025, its
            LLaMA runs) tunes them separately. Each overrides ``dyt_alpha0``
            for its kind; unset kinds take ``dyt_alpha0``, else
            :data:`DEFAULT_DYT_ALPHA0`.
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
    dyt_alpha0: float | None = None
    dyt_alpha0_attn: float | None = None
    dyt_alpha0_mlp: float | None = None
    dyt_alpha0_final: float | None = None
    frozen_std: float = 1.0
    eps: float = 1e-5
    seed: int = 0
    norm_kinds: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name, choices in (("norm", NORM_KINDS), ("placement", PLACEMENTS), ("act_fn", ACTIVATIONS)):
            value = getattr(self, name)
            if value not in choices:
                what = {"norm": "norm kind", "act_fn": "activation"}.get(name, name)
                raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
        for name in ("n_layers", "d_model", "n_heads", "n_ctx", "d_vocab"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                f"pick n_heads among the divisors of d_model, e.g. "
                f"{[h for h in range(1, min(self.d_model, 16) + 1) if self.d_model % h == 0]}"
            )
        if self.d_mlp is not None and (not _is_int(self.d_mlp) or self.d_mlp < 1):
            raise ConfigError(f"d_mlp must be a positive integer or None (4*d_model), got {self.d_mlp!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("dyt_alpha0", "dyt_alpha0_attn", "dyt_alpha0_mlp", "dyt_alpha0_final"):
            value = getattr(self, name)
            if value is not None and not _is_positive_number(value):
                raise ConfigError(f"{name} must be a positive finite number or None, got {value!r}")
        if not _is_positive_number(self.frozen_std):
            raise ConfigError(f"frozen_std must be a positive finite number, got {self.frozen_std!r}")
        if not _is_positive_number(self.eps):
            raise ConfigError(f"eps must be a positive finite number (e.g. 1e-5), got {self.eps!r}")
        for entry in self.norm_kinds:
            if (not isinstance(entry, (tuple, list)) or len(entry) != 2
                    or not all(isinstance(part, str) for part in entry)):
                raise ConfigError(
                    f"norm_kinds entry {list(entry) if isinstance(entry, tuple) else entry!r} is not a "
                    "[slot, kind] pair of strings; write e.g. [[\"blocks.0.ln2\", \"lnfree\"]]")
            slot, kind = entry
            if kind not in NORM_KINDS:
                raise ConfigError(f"norm_kinds[{slot!r}]={kind!r} is not one of {', '.join(NORM_KINDS)}")
            if not _is_slot_of(slot, self.n_layers):
                raise ConfigError(
                    f"norm_kinds names slot {slot!r}, which a {self.n_layers}-layer model does not "
                    "have; slots are blocks.{l}.ln1, blocks.{l}.ln2 and ln_final")

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

    def dyt_alpha0_for(self, slot: str) -> float:
        """DyT's initial alpha in ``slot``: its kind's own value, else ``dyt_alpha0``, else
        :data:`DEFAULT_DYT_ALPHA0`."""
        kind = slot_family(slot)
        own = getattr(self, f"dyt_alpha0_{kind}")
        if own is not None:
            return float(own)
        if self.dyt_alpha0 is not None:
            return float(self.dyt_alpha0)
        return DEFAULT_DYT_ALPHA0[kind]

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
        if not isinstance(data, dict):
            raise ConfigError(f"a ZooConfig is a JSON object of fields, got {type(data).__name__}")
        data = dict(data)
        kinds = data.get("norm_kinds", ())
        if not isinstance(kinds, (list, tuple)):
            raise ConfigError(f"norm_kinds must be a list of [slot, kind] pairs, got {kinds!r}")
        data["norm_kinds"] = tuple(tuple(pair) if isinstance(pair, (list, tuple)) else pair
                                   for pair in kinds)
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _is_slot_of(slot: str, n_layers: int) -> bool:
    match = re.fullmatch(r"blocks\.(0|[1-9][0-9]*)\.ln[12]", slot)
    return slot == "ln_final" or (match is not None and int(match.group(1)) < n_layers)


def slot_family(slot: str) -> str:
    """"attn" (``blocks.{l}.ln1``), "mlp" (``blocks.{l}.ln2``) or "final" (``ln_final``)."""
    if slot == "ln_final":
        return "final"
    if slot.endswith(".ln1"):
        return "attn"
    if slot.endswith(".ln2"):
        return "mlp"
    raise ValueError(f"{slot!r} is not a norm slot (blocks.{{l}}.ln1, blocks.{{l}}.ln2, ln_final)")
