"""ZooStudy: the trained models and data that every demo-report section analyses."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge


@dataclass
class ZooStudy:
    """Inputs shared by the analyses of one report.

    Args:
        models: display name ("ln", "rms", "dyt", "none", "ln→lnfree") -> trained
            zoo model, in eval mode. Analyses must leave them exactly as found.
        eval_tokens: (n_seq, n_ctx) int64 held-out token ids.
        data_dir: where a section saves its results as data (JSON/NPZ/Parquet).
        seed: seed for every stochastic estimate in the report.
        diverged: names of models whose training diverged (their weights may
            be non-finite; sections show them as such instead of crashing).
    """

    models: dict[str, TransformerBridge]
    eval_tokens: torch.Tensor
    data_dir: Path
    seed: int = 0
    diverged: set[str] = field(default_factory=set)
