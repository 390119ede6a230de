"""ModelSet: the trained models and the held-out tokens that every analysis of a study reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: importing TransformerLens takes seconds
    import torch
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class ModelSet:
    """Inputs shared by the analyses of one study.

    Args:
        models: key ("ln", "rms", ...) -> trained model in eval mode, in report order. Analyses
            leave them exactly as found.
        eval_tokens: (n_seq, n_ctx) int64 held-out token ids.
        labels: key -> the name a reader meets ("LayerNorm (Pre-LN)"); the key when absent.
        seed: seed of every stochastic estimate.
        diverged: keys of models whose training diverged (weights may be non-finite; analyses show
            them as such instead of crashing).
    """

    models: dict[str, TransformerBridge]
    eval_tokens: torch.Tensor
    labels: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    diverged: set[str] = field(default_factory=set)

    def label(self, key: str) -> str:
        return self.labels.get(key, key)
