"""Synthetic token tasks for attention and induction studies."""
from __future__ import annotations

import torch


def repeated_sequences(
    n_seq: int, n_ctx: int, *, period: int | None = None, vocab_size: int = 256, seed: int = 0
) -> torch.Tensor:
    """Random token blocks repeated to fill the context: (n_seq, n_ctx) int64.

    Each row draws ``period`` uniform tokens (default n_ctx // 2) and repeats
    them, so every token after the first period is predictable by induction:
    tokens[:, t] == tokens[:, t - period] for t >= period.
    """
    period = period or max(1, n_ctx // 2)
    if not 1 <= period <= n_ctx:
        raise ValueError(f"period must be in [1, n_ctx={n_ctx}], got {period}")
    generator = torch.Generator().manual_seed(seed)
    block = torch.randint(0, vocab_size, (n_seq, period), generator=generator)
    repeats = -(-n_ctx // period)
    return block.repeat(1, repeats)[:, :n_ctx].contiguous()
