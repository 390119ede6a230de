"""Train a zoo model on a token stream: AdamW, warmup + cosine, clipping, validation.

A run that diverges (non-finite loss or gradient norm, as norm-free models
do) stops, and its result says so with the step; it never raises. With a
``checkpoint_dir`` the run saves its state atomically every
``checkpoint_every`` steps and resumes from there when started again.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from normlens.data.corpus import TokenSplits, eval_windows, token_windows
from normlens.io import as_json_value, atomic_path, read_json, write_json
from normlens.losses import next_token_loss
from normlens.models.checkpoint import load_checkpoint, model_tensors, read_checkpoint_meta, save_checkpoint
from normlens.models.zoo import count_parameters, get_config


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings. The learning rate warms up linearly for
    ``warmup_steps``, then follows a cosine down to ``lr * min_lr_ratio``."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_seqs: int = 32
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_seqs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + 0.5 * (self.lr - floor) * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """The history of one training run, as data."""

    name: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    n_params: int
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    diverged: bool = False
    diverged_step: int | None = None
    wall_time_s: float = 0.0

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1] if self.val_loss else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"final_val_loss": self.final_val_loss}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@torch.no_grad()
def evaluate(model: TransformerBridge, tokens: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token loss over (n_seq, n_ctx) ``tokens``, in eval mode, restoring the mode."""
    was_training = model.training
    model.eval()
    try:
        total, count = 0.0, 0
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start:start + batch_size]
            total += next_token_loss(model, batch).item() * batch.shape[0]
            count += batch.shape[0]
        return total / count
    finally:
        model.train(was_training)


def _grad_norm(model: torch.nn.Module, clip: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))


def train(
    model: TransformerBridge,
    splits: TokenSplits,
    config: TrainConfig = TrainConfig(),
    *,
    name: str = "",
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``splits`` and return its history.

    The model ends in eval mode. With ``checkpoint_dir``, the final model is
    saved there too (``model/``) along with ``train_result.json``.
    """
    model_config = get_config(model)
    n_ctx = model_config.n_ctx
    if splits.vocab_size > model_config.d_vocab:
        raise ValueError(f"the corpus has vocabulary {splits.vocab_size} but the model only "
                         f"{model_config.d_vocab}; build the model with d_vocab={splits.vocab_size}")
    val_tokens = eval_windows(splits, n_seq=config.eval_seqs, n_ctx=n_ctx, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    result = TrainResult(name or model_config.norm, model_config.to_dict(),
                         dataclasses.asdict(config), count_parameters(model))
    start_step = 0
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None and (folder / "state" / "trainer.pt").is_file():
        start_step = _resume(model, optimizer, generator, result, folder, model_config, config)
    started = time.perf_counter() - result.wall_time_s
    model.train()
    bar = tqdm(range(start_step, config.steps), desc=f"train {result.name}", disable=not progress,
               leave=False, initial=start_step, total=config.steps)
    for step in bar:
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = token_windows(splits.train, n_seq=config.batch_size, n_ctx=n_ctx, generator=generator)
        loss = next_token_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            _record_divergence(result, step, loss_value)
            break
        loss.backward()
        grad_norm = _grad_norm(model, config.grad_clip)
        if not math.isfinite(grad_norm):
            _record_divergence(result, step, loss_value)
            break
        optimizer.step()
        result.steps.append(step)
        result.train_loss.append(loss_value)
        result.grad_norm.append(grad_norm)
        result.lr.append(lr)
        last = step == config.steps - 1
        if (step + 1) % config.eval_every == 0 or last:
            result.val_steps.append(step + 1)
            result.val_loss.append(evaluate(model, val_tokens))
            bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{result.val_loss[-1]:.3f}")
        if folder is not None and ((step + 1) % config.checkpoint_every == 0 and not last):
            result.wall_time_s = time.perf_counter() - started
            _save_state(model, optimizer, generator, result, folder, step + 1)
    bar.close()
    model.eval()
    result.wall_time_s = time.perf_counter() - started
    if folder is not None:
        save_checkpoint(model, folder / "model", extra={"train_result": result.name})
        write_json(folder / "train_result.json", result.to_dict())
    return result


def _record_divergence(result: TrainResult, step: int, loss_value: float) -> None:
    result.diverged, result.diverged_step = True, step
    result.steps.append(step)
    result.train_loss.append(loss_value)
    result.grad_norm.append(float("nan"))
    result.lr.append(float("nan"))


def _save_state(model, optimizer, generator, result: TrainResult, folder: Path, step: int) -> None:
    state = folder / "state"
    save_checkpoint(model, state / "model")
    with atomic_path(state / "trainer.pt") as tmp:
        torch.save({"step": step, "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state()}, tmp)
    write_json(state / "history.json", result.to_dict())


def saved_state_mismatch(folder: str | Path, model_config, train_config: TrainConfig) -> str | None:
    """Why the resumable state in ``folder`` cannot continue this run (None if it can or there is none)."""
    state = Path(folder) / "state"
    if not (state / "trainer.pt").is_file():
        return None
    saved_model = read_checkpoint_meta(state / "model")["config"]
    if saved_model != as_json_value(model_config.to_dict()):
        return f"was written for another model ({saved_model.get('norm')})"
    saved_train = read_json(state / "history.json").get("train_config")
    if saved_train != as_json_value(dataclasses.asdict(train_config)):
        return "was written with other training settings"
    return None


def _resume(model, optimizer, generator, result: TrainResult, folder: Path, model_config,
            config: TrainConfig) -> int:
    """Load the saved state into ``model``/``optimizer``/``generator``/``result``; return the step."""
    state = folder / "state"
    problem = saved_state_mismatch(folder, model_config, config)
    if problem:
        raise ValueError(f"the checkpoint in {str(folder)!r} {problem}; use a fresh --out folder")
    with torch.no_grad():
        saved = model_tensors(load_checkpoint(state / "model"))
        for name, tensor in model_tensors(model).items():
            tensor.copy_(saved[name])
    trainer = torch.load(state / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    generator.set_state(trainer["generator"])
    history = TrainResult.from_dict(read_json(state / "history.json"))
    for name in ("steps", "train_loss", "grad_norm", "lr", "val_steps", "val_loss", "wall_time_s"):
        setattr(result, name, getattr(history, name))
    return int(trainer["step"])
