"""Remove LayerNorm by fine-tuning (Baroni, Heimersheim et al. 2025).

Each LayerNorm becomes a :class:`FrozenStdLayerNorm`: it keeps the mean
subtraction and the affine gain/bias but divides by a stored average std
instead of the token's own. While still live, each tracks that average as an
EMA (momentum 0.9) of the mean per-token std. They are frozen one group at a
time with fine-tuning in between: the MLP-input LNs (ln2) layer by layer,
then the attention-input LNs (ln1), then the final LN, and last the first
position, whose std is tracked apart from the rest.

Difference from the paper: ln1 is frozen for queries, keys and values at
once; the paper freezes the query/key path before the value path.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from normlens.data.corpus import TokenSplits, eval_windows, token_windows
from normlens.losses import next_token_loss
from normlens.models.checkpoint import model_tensors
from normlens.models.norms import FrozenStdLayerNorm
from normlens.models.zoo import build_model, get_config, norm_modules
from normlens.sites import FINAL_NORM, ln1, ln2, norm_scale
from normlens.train import evaluate


@dataclass(frozen=True)
class LNRemovalConfig:
    """Schedule: ``warmup_steps`` of fine-tuning with every LN live (tracking
    its std), then one group frozen every ``steps_per_removal`` steps, then
    ``final_steps`` with everything frozen."""

    warmup_steps: int = 10
    steps_per_removal: int = 3
    final_steps: int = 20
    lr: float = 3e-4
    batch_size: int = 16
    eval_seqs: int = 32
    seed: int = 0


@dataclass
class LNRemovalResult:
    val_loss_before: float
    val_loss_after: float
    schedule: list[tuple[int, str]] = field(default_factory=list)  # (step, group frozen)
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    frozen_std: dict[str, float] = field(default_factory=dict)
    diverged: bool = False
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def removal_groups(n_layers: int) -> list[list[str]]:
    """The order of the paper: each ln2, each ln1, the final LN, then position 0."""
    groups = [[ln2(layer)] for layer in range(n_layers)]
    groups += [[ln1(layer)] for layer in range(n_layers)]
    groups += [[FINAL_NORM], ["first-position"]]
    return groups


def _fake_norms(model: TransformerBridge) -> dict[str, FrozenStdLayerNorm]:
    """Slot -> FrozenStdLayerNorm; a Post-LN model's final slot holds no norm and is left out."""
    return {slot: norm for slot, norm in norm_modules(model).items() if isinstance(norm, FrozenStdLayerNorm)}


def _to_fake_layernorm(model: TransformerBridge) -> TransformerBridge:
    """A copy of an "ln" model whose LayerNorms are live FrozenStdLayerNorms."""
    config = get_config(model)
    if config.norm != "ln" or config.norm_kinds:
        raise ValueError(f"LN removal needs a LayerNorm model (norm='ln'), got norm={config.norm!r}")
    fake = build_model(config.replace(norm="lnfree"))
    source = model_tensors(model)
    with torch.no_grad():
        for name, tensor in model_tensors(fake).items():
            if name in source:
                tensor.copy_(source[name])
    for norm in _fake_norms(fake).values():
        norm.live.fill_(True)
    return fake


@torch.no_grad()
def _calibrate(model: TransformerBridge, tokens: torch.Tensor) -> None:
    """Start every tracked std at its measured mean instead of the EMA's 1.0."""
    norms = _fake_norms(model)
    names = [norm_scale(slot) for slot in norms]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    for slot, norm in norms.items():
        scale = cache[norm_scale(slot)]  # (batch, pos, 1)
        norm.std.fill_(scale[:, 1:].mean().item())
        norm.std_first.fill_(scale[:, :1].mean().item())


def remove_layernorm(
    model: TransformerBridge, splits: TokenSplits, config: LNRemovalConfig = LNRemovalConfig(),
    *, progress: bool = True,
) -> tuple[TransformerBridge, LNRemovalResult]:
    """Return an LN-free copy of ``model`` (an "ln" zoo model) and the record of the removal.

    ``model`` itself is not changed.
    """
    started = time.perf_counter()
    n_ctx = get_config(model).n_ctx
    val_tokens = eval_windows(splits, n_seq=config.eval_seqs, n_ctx=n_ctx, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed + 7)
    fake = _to_fake_layernorm(model)
    result = LNRemovalResult(val_loss_before=evaluate(model, val_tokens), val_loss_after=float("nan"))
    _calibrate(fake, token_windows(splits.train, n_seq=config.batch_size, n_ctx=n_ctx,
                                   generator=generator))
    norms = _fake_norms(fake)
    groups = [group for group in removal_groups(get_config(model).n_layers)
              if group == ["first-position"] or group[0] in norms]
    removal_at = {config.warmup_steps + i * config.steps_per_removal: group
                  for i, group in enumerate(groups)}
    total = config.warmup_steps + len(groups) * config.steps_per_removal + config.final_steps
    optimizer = torch.optim.AdamW(fake.parameters(), lr=config.lr, weight_decay=0.0)
    fake.train()
    for step in tqdm(range(total), desc="LN removal", disable=not progress, leave=False):
        for slot in removal_at.get(step, []):
            result.schedule.append((step, slot))
            if slot == "first-position":
                for norm in norms.values():
                    norm.freeze_first_position()
            else:
                norms[slot].freeze(keep_first_position_live=True)
        batch = token_windows(splits.train, n_seq=config.batch_size, n_ctx=n_ctx, generator=generator)
        loss = next_token_loss(fake, batch)
        if not torch.isfinite(loss):
            result.diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(fake.parameters(), 1.0)
        optimizer.step()
        result.steps.append(step)
        result.train_loss.append(loss.item())
    fake.eval()
    result.val_loss_after = evaluate(fake, val_tokens)
    result.frozen_std = {slot: float(norm.std) for slot, norm in norms.items()}
    result.wall_time_s = time.perf_counter() - started
    return fake, result


def remaining_layernorms(model: TransformerBridge) -> list[str]:
    """Norm slots that still divide by a per-token std (empty once LN is removed)."""
    live = []
    for slot, norm in norm_modules(model).items():
        if isinstance(norm, FrozenStdLayerNorm):
            if norm.divides_by_token_std:
                live.append(slot)
        elif norm.kind in ("ln", "rms"):
            live.append(slot)
    return live
