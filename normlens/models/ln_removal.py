"""Remove LayerNorm by fine-tuning (Baroni, Heimersheim et al. 2025), on zoo and GPT-2 models.

Each LayerNorm becomes a :class:`FrozenStdLayerNorm`: it keeps the mean
subtraction and the affine gain/bias but divides by a stored average std
instead of the token's own. While still live, each tracks that average as an
EMA (momentum 0.9) of the mean per-token std over positions >= 1, starting
from a measured value (:func:`calibrate_frozen_std`). They are frozen one
stage at a time with fine-tuning in between, in the paper's order
(:func:`removal_stages`): the MLP-input LN (ln2) of each layer; the
attention-input LN (ln1) of each layer on the query/key path; ln1 of each
layer on the value path (which keeps its own divisor from then on); the
final LN; and last the first position, which divides by its own std until
then and by the common frozen divisor after, as in the released LN-free
checkpoints.

The honest cost of removal is measured against a control (the paper's
comparison): the same model fine-tuned for the same steps on the same
batches with LayerNorm kept. Works on zoo "ln" models and on GPT-2-class
Hugging Face models loaded by :func:`normlens.models.loading.load_model`;
:func:`normlens.models.export.export_lnfree` writes the result in the
eps = 1e12 format of the released checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

from normlens.data.corpus import TokenSplits, check_vocabulary, eval_windows, token_windows
from normlens.losses import next_token_loss
from normlens.models.checkpoint import model_tensors
from normlens.models.norms import FrozenStdLayerNorm, attach_value_path
from normlens.models.zoo import build_model, norm_modules
from normlens.sites import norm_slots
from normlens.train import evaluate

FIRST_POSITION = "first-position"


class LNRemovalError(ValueError):
    """A model or setting LN removal cannot work with; the message names the fix."""


@dataclass(frozen=True)
class LNRemovalConfig:
    """Schedule: ``warmup_steps`` of fine-tuning with every LN live (tracking
    its std), then one stage frozen every ``steps_per_removal`` steps, then
    ``final_steps`` with everything frozen. ``control``: also fine-tune a copy
    with LayerNorm kept for the same steps on the same batches. ``n_ctx``:
    tokens per sequence (default: the model's context)."""

    warmup_steps: int = 10
    steps_per_removal: int = 3
    final_steps: int = 20
    lr: float = 3e-4
    batch_size: int = 16
    eval_seqs: int = 32
    control: bool = True
    n_ctx: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "final_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise LNRemovalError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("steps_per_removal", "batch_size", "eval_seqs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LNRemovalError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise LNRemovalError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.n_ctx is not None and (not isinstance(self.n_ctx, int) or self.n_ctx < 2):
            raise LNRemovalError(f"n_ctx must be an integer >= 2 or None, got {self.n_ctx!r}")


@dataclass
class LNRemovalResult:
    """The record of one removal.

    ``val_loss_control`` is the control's loss (LayerNorm kept, same steps and
    batches) and ``gap_to_control`` = ``val_loss_after`` - ``val_loss_control``,
    the cost of removal itself; ``schedule`` lists (step, stage) in the order
    applied; ``frozen_std`` the divisor of each norm's output (the query/key
    path of ln1), ``frozen_std_value`` the value-path divisor of each ln1,
    ``first_position_std`` position 0's tracked std when its stage came.
    """

    val_loss_before: float
    val_loss_after: float
    val_loss_control: float = float("nan")
    gap_to_control: float = float("nan")
    schedule: list[tuple[int, str]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    control_train_loss: list[float] = field(default_factory=list)
    frozen_std: dict[str, float] = field(default_factory=dict)
    frozen_std_value: dict[str, float] = field(default_factory=dict)
    first_position_std: dict[str, float] = field(default_factory=dict)
    diverged: bool = False
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FrozenStdNormBridge(NormalizationBridge):
    """A Hugging Face bridge's norm slot running a :class:`FrozenStdLayerNorm`.

    TransformerLens's NormalizationBridge recomputes ``hook_scale`` from the
    token's own std; this one fires the slot's hooks with the divisor the
    module actually uses.
    """

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        hidden_states = self.hook_in(hidden_states)
        norm = self.original_component
        return self.hook_out(norm.normalize_with_hooks(hidden_states, self.hook_scale, self.hook_normalized))


def is_zoo_model(model: nn.Module) -> bool:
    return getattr(model, "normlens_config", None) is not None


def _block_placement(model: TransformerBridge, layer: int) -> str:
    return model.normlens_config.block_placement(layer) if is_zoo_model(model) else "pre"


def removal_stages(model: TransformerBridge) -> list[str]:
    """The paper's order of removal for ``model``'s LayerNorms.

    Each ln2; each ln1's query/key path ("blocks.{l}.ln1.qk"); each ln1's value
    path ("blocks.{l}.ln1.v"); the final LN; then "first-position". A Post-LN
    block's ln1 feeds the whole residual stream, so it is one stage
    ("blocks.{l}.ln1"); slots holding no LayerNorm are skipped.
    """
    norms = _fake_norms(model) if _has_fake_norms(model) else _layernorm_slots(model)
    n_layers = int(model.cfg.n_layers)
    stages = [f"blocks.{layer}.ln2" for layer in range(n_layers) if f"blocks.{layer}.ln2" in norms]
    ln1 = [layer for layer in range(n_layers) if f"blocks.{layer}.ln1" in norms]
    stages += [f"blocks.{layer}.ln1" + (".qk" if _block_placement(model, layer) == "pre" else "")
               for layer in ln1]
    stages += [f"blocks.{layer}.ln1.v" for layer in ln1 if _block_placement(model, layer) == "pre"]
    if "ln_final" in norms:
        stages.append("ln_final")
    return stages + [FIRST_POSITION]


def _has_fake_norms(model: TransformerBridge) -> bool:
    return any(isinstance(norm, FrozenStdLayerNorm) for norm in norm_modules(model).values())


def _layernorm_slots(model: TransformerBridge) -> dict[str, nn.Module]:
    return {slot: norm for slot, norm in norm_modules(model).items()
            if isinstance(norm, nn.LayerNorm) or getattr(norm, "kind", None) == "ln"}


def _fake_norms(model: TransformerBridge) -> dict[str, FrozenStdLayerNorm]:
    """Slot -> FrozenStdLayerNorm; a Post-LN model's final slot holds no norm and is left out."""
    return {slot: norm for slot, norm in norm_modules(model).items() if isinstance(norm, FrozenStdLayerNorm)}


def _copy_model(model: TransformerBridge) -> TransformerBridge:
    """An independent copy with the same weights (a zoo model is rebuilt from its config)."""
    if is_zoo_model(model):
        twin = build_model(model.normlens_config)
        source = model_tensors(model)
        with torch.no_grad():
            for name, tensor in model_tensors(twin).items():
                tensor.copy_(source[name])
        device = next(model.parameters()).device
        return twin if next(twin.parameters()).device == device else twin.to(device)
    return copy.deepcopy(model)


def fake_layernorm_copy(model: TransformerBridge) -> TransformerBridge:
    """A copy of ``model`` whose LayerNorms are live FrozenStdLayerNorms (model unchanged)."""
    if is_zoo_model(model):
        config = model.normlens_config
        if config.norm != "ln" or config.norm_kinds:
            raise LNRemovalError(
                f"LN removal needs a LayerNorm model (norm='ln'), got norm={config.norm!r}; build the "
                "model with norm='ln'")
        fake = build_model(config.replace(norm="lnfree"))
        source = model_tensors(model)
        with torch.no_grad():
            for name, tensor in model_tensors(fake).items():
                if name in source:
                    tensor.copy_(source[name])
        device = next(model.parameters()).device
        if next(fake.parameters()).device != device:
            fake = fake.to(device)
    else:
        fake = _hf_to_fake_layernorm(model)
    for norm in _fake_norms(fake).values():
        norm.live.fill_(True)
        norm.live_value.fill_(True)
    return fake


def _hf_to_fake_layernorm(model: TransformerBridge) -> TransformerBridge:
    hf_model = getattr(model, "original_model", None)
    transformer = getattr(hf_model, "transformer", None)
    if getattr(model, "normlens_source", None) is None or transformer is None or not hasattr(transformer, "h"):
        raise LNRemovalError(
            f"LN removal works on zoo models (norm='ln') and GPT-2-class Hugging Face models loaded with "
            f"normlens.models.loading.load_model; got {type(hf_model or model).__name__}")
    slots = norm_slots(int(model.cfg.n_layers))
    for slot in slots:
        bridge_part = model.get_submodule(slot)
        if not isinstance(bridge_part, NormalizationBridge) or not isinstance(
                bridge_part.original_component, nn.LayerNorm):
            raise LNRemovalError(
                f"{slot} of {model.normlens_source!r} is not a LayerNorm "
                f"({type(getattr(bridge_part, 'original_component', bridge_part)).__name__}); LN removal "
                "needs a GPT-2-class model with LayerNorm in every slot")
        if bridge_part.original_component.eps >= 1e3:
            raise LNRemovalError(f"{model.normlens_source!r} is already LayerNorm-free (eps = "
                                 f"{bridge_part.original_component.eps:g} in {slot})")
    fake = copy.deepcopy(model)
    for slot in slots:
        bridge_part = fake.get_submodule(slot)
        layer_norm = bridge_part.original_component
        norm = FrozenStdLayerNorm(layer_norm.normalized_shape[0], eps=float(layer_norm.eps), live=True)
        norm = norm.to(device=layer_norm.weight.device, dtype=layer_norm.weight.dtype)
        with torch.no_grad():
            norm.weight.copy_(layer_norm.weight)
            if layer_norm.bias is not None:
                norm.bias.copy_(layer_norm.bias)
        bridge_part.set_original_component(norm)
        bridge_part.__class__ = FrozenStdNormBridge
    for layer in range(int(model.cfg.n_layers)):
        attach_value_path(fake.get_submodule(f"blocks.{layer}.ln1").original_component,
                          fake.get_submodule(f"blocks.{layer}.attn.v"))
    fake.normlens_ln_free = False
    return fake


@torch.no_grad()
def calibrate_frozen_std(model: TransformerBridge, tokens: torch.Tensor) -> dict[str, float]:
    """Set every tracked std of ``model``'s FrozenStdLayerNorms to its measured value on ``tokens``.

    The value is the mean over sequences and positions >= 1 of the per-token
    std sqrt(var(x) + eps) of the norm's input (position 0: its own mean),
    measured with every norm live, so the EMA starts there instead of at 1.
    Returns slot -> std.
    """
    norms = _fake_norms(model)
    names = {f"{slot}.hook_in": slot for slot in norms}
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    measured = {}
    for name, slot in names.items():
        x = cache[name].double()  # (batch, pos, d_model)
        token_std = (x.var(-1, unbiased=False) + norms[slot].eps).sqrt()  # (batch, pos)
        norm = norms[slot]
        later = token_std[:, 1:] if token_std.shape[1] > 1 else token_std
        norm.std.fill_(later.mean().item())
        norm.std_value.fill_(later.mean().item())
        norm.std_first.fill_(token_std[:, :1].mean().item())
        measured[slot] = later.mean().item()
    return measured


def apply_removal_stage(model: TransformerBridge, stage: str) -> None:
    """Freeze one stage of :func:`removal_stages` in ``model`` (a model with FrozenStdLayerNorms)."""
    norms = _fake_norms(model)
    if stage != FIRST_POSITION and stage.removesuffix(".qk").removesuffix(".v") not in norms:
        raise LNRemovalError(f"unknown removal stage {stage!r}; stages are {removal_stages(model)}")
    if stage == FIRST_POSITION:
        for norm in norms.values():
            norm.freeze_first_position()
        return
    for suffix, path in ((".qk", "qk"), (".v", "value")):
        if stage.endswith(suffix):
            norms[stage[: -len(suffix)]].freeze(keep_first_position_live=True, path=path)
            return
    norms[stage].freeze(keep_first_position_live=True, path="both")


def _fine_tune(model: TransformerBridge, splits: TokenSplits, config: LNRemovalConfig, n_ctx: int,
               n_steps: int, *, before_step: Callable[[int], None] | None = None, desc: str,
               progress: bool) -> tuple[list[int], list[float], bool]:
    """AdamW language-model fine-tuning on seeded batches; returns (steps, losses, diverged)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed + 7)  # the same batches for every run
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    steps, losses = [], []
    model.train()
    try:
        for step in tqdm(range(n_steps), desc=desc, disable=not progress, leave=False):
            if before_step is not None:
                before_step(step)
            batch = token_windows(splits.train, n_seq=config.batch_size, n_ctx=n_ctx, generator=generator)
            loss = next_token_loss(model, batch.to(device))
            if not torch.isfinite(loss):
                return steps, losses, True
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            steps.append(step)
            losses.append(loss.item())
        return steps, losses, False
    finally:
        model.eval()


def remove_layernorm(
    model: TransformerBridge, splits: TokenSplits, config: LNRemovalConfig = LNRemovalConfig(),
    *, progress: bool = True,
) -> tuple[TransformerBridge, LNRemovalResult]:
    """Return an LN-free copy of ``model`` and the record of the removal.

    ``model`` is a zoo "ln" model or a GPT-2-class Hugging Face bridge; it is
    not changed. ``splits`` must be tokenized the way the model reads
    (:func:`normlens.data.corpus_for_model`). With ``config.control`` a copy
    of ``model`` is fine-tuned with LayerNorm kept for the same steps on the
    same batches, and ``result.gap_to_control`` is the cost of removal.
    """
    started = time.perf_counter()
    check_vocabulary(model, splits)
    n_ctx = min(config.n_ctx or int(model.cfg.n_ctx), int(model.cfg.n_ctx))
    device = next(model.parameters()).device
    val_tokens = eval_windows(splits, n_seq=config.eval_seqs, n_ctx=n_ctx, seed=config.seed).to(device)
    fake = fake_layernorm_copy(model)
    result = LNRemovalResult(val_loss_before=evaluate(model, val_tokens), val_loss_after=float("nan"))
    calibration = token_windows(splits.train, n_seq=config.batch_size, n_ctx=n_ctx,
                                generator=torch.Generator().manual_seed(config.seed + 3))
    calibrate_frozen_std(fake, calibration.to(device))
    norms = _fake_norms(fake)
    stages = removal_stages(fake)
    removal_at = {config.warmup_steps + i * config.steps_per_removal: stage for i, stage in enumerate(stages)}
    total = config.warmup_steps + len(stages) * config.steps_per_removal + config.final_steps

    def before_step(step: int) -> None:
        stage = removal_at.get(step)
        if stage is None:
            return
        if stage == FIRST_POSITION:
            result.first_position_std = {slot: float(norm.std_first) for slot, norm in norms.items()}
        apply_removal_stage(fake, stage)
        result.schedule.append((step, stage))

    result.steps, result.train_loss, result.diverged = _fine_tune(
        fake, splits, config, n_ctx, total, before_step=before_step, desc="LN removal", progress=progress)
    for step in range(len(result.steps) + 1, total):  # a diverged run still ends LayerNorm-free
        before_step(step)
    result.val_loss_after = evaluate(fake, val_tokens)
    result.frozen_std = {slot: float(norm.std) for slot, norm in norms.items()}
    result.frozen_std_value = {slot: float(norm.std_value) for slot, norm in norms.items()
                               if norm.feeds_value_path}
    if config.control:
        control = _copy_model(model)
        _, result.control_train_loss, _ = _fine_tune(control, splits, config, n_ctx, total,
                                                     desc="LN kept (control)", progress=progress)
        result.val_loss_control = evaluate(control, val_tokens)
        result.gap_to_control = result.val_loss_after - result.val_loss_control
        del control
    result.wall_time_s = time.perf_counter() - started
    return fake, result


def remaining_layernorms(model: TransformerBridge) -> list[str]:
    """Norm slots that still divide by a per-token std (empty once LN is removed)."""
    live = []
    for slot, norm in norm_modules(model).items():
        if isinstance(norm, FrozenStdLayerNorm):
            if norm.divides_by_token_std:
                live.append(slot)
        elif isinstance(norm, nn.LayerNorm):
            if norm.eps < 1e3:
                live.append(slot)
        elif getattr(norm, "kind", None) in ("ln", "rms"):
            live.append(slot)
    return live
