"""The zoo: models that differ only in normalization, trained on the embedded corpus (or reused).

Trained models are saved under ``<results>/models/<key>`` and reused when a study runs again with
the same settings, so an interrupted study loses nothing; a reused model keeps the training time
of the run that trained it. "ln→lnfree" is the trained "ln" model with its LayerNorms removed by
fine-tuning (Baroni, Heimersheim et al. 2025).
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from analyses.common.names import LABELS, LN_REMOVED, ZOO_NORMS
from normlens.data.corpus import TokenSplits
from normlens.io import as_json_value, read_json, write_json
from normlens.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from normlens.models.config import ZooConfig
from normlens.models.ln_removal import LNRemovalConfig, LNRemovalResult, remove_layernorm
from normlens.models.norms import DyT
from normlens.models.zoo import build_model, count_parameters, get_config, norm_modules
from normlens.report.sections.training import save_training
from normlens.train import TrainConfig, TrainResult, saved_state_mismatch, train



@dataclass(frozen=True)
class ZooSettings:
    """The zoo's architecture, training, LN removal and evaluation batch."""

    model: ZooConfig = ZooConfig(n_layers=2, d_model=64, n_heads=4, n_ctx=64)
    train: TrainConfig = TrainConfig(steps=300, eval_every=25)
    removal: LNRemovalConfig = LNRemovalConfig()
    norms: tuple[str, ...] = ZOO_NORMS
    eval_seqs: int = 16


@dataclass
class TrainedZoo:
    """Trained models by key (report order), their histories, the LN removal and what was reused."""

    models: dict[str, torch.nn.Module]
    runs: list[TrainResult]
    removal: LNRemovalResult | None
    reused: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # this run's wall time per model (load or train)

    @property
    def diverged(self) -> set[str]:
        return {r.name for r in self.runs if r.diverged}


def _train_or_reuse(key: str, model_config: ZooConfig, train_config: TrainConfig, splits: TokenSplits,
                    folder: Path, fresh: bool) -> tuple[torch.nn.Module, TrainResult, bool]:
    result_path = folder / "train_result.json"
    if not fresh and result_path.is_file():
        try:
            saved = TrainResult.from_dict(read_json(result_path))
            model = load_checkpoint(folder / "model")
            if (model.normlens_config == model_config
                    and saved.train_config == as_json_value(dataclasses.asdict(train_config))):
                return model, saved, True
        except (CheckpointError, ValueError, TypeError):
            pass  # stale or damaged: train again
    # saved state of another run (other settings) or of this one when fresh: start over
    if fresh and (folder / "state").is_dir() or saved_state_mismatch(folder, model_config, train_config):
        shutil.rmtree(folder / "state")
    model = build_model(model_config)
    result = train(model, splits, train_config, name=key, checkpoint_dir=folder)
    return model, result, False


def _removal_or_reuse(ln_model, settings: ZooSettings, splits: TokenSplits, folder: Path,
                      fresh: bool) -> tuple[torch.nn.Module, LNRemovalResult, bool]:
    result_path = folder / "removal_result.json"
    # the removal's settings and those of the "ln" model it starts from: a retrained
    # "ln" model (other model or training settings, other seed) invalidates it
    key = {"removal": dataclasses.asdict(settings.removal), "train": dataclasses.asdict(settings.train),
           "model": get_config(ln_model).to_dict()}
    if not fresh and result_path.is_file():
        try:
            data = read_json(result_path)
            if data.get("config") == as_json_value(key):
                result = LNRemovalResult(**{k: v for k, v in data.items() if k != "config"})
                return load_checkpoint(folder / "model"), result, True
        except (CheckpointError, ValueError, TypeError):
            pass
    model, result = remove_layernorm(ln_model, splits, settings.removal)
    save_checkpoint(model, folder / "model")
    write_json(result_path, result.to_dict() | {"config": key})
    return model, result, False


def _removal_as_training(result: LNRemovalResult, offset: int, model_config: dict, n_params: int) -> TrainResult:
    """Draw the removal's fine-tuning after the "ln" run on the training plot."""
    return TrainResult(
        name=LN_REMOVED, model_config=model_config, train_config={}, n_params=n_params,
        steps=[offset + s for s in result.steps], train_loss=result.train_loss,
        val_steps=[offset + (result.steps[-1] + 1 if result.steps else 0)],
        val_loss=[result.val_loss_after], diverged=result.diverged, wall_time_s=result.wall_time_s,
    )


def train_zoo(settings: ZooSettings, splits: TokenSplits, models_dir: Path, *, seed: int = 0, fresh: bool = False,
              log: Callable[[str], None] = print) -> TrainedZoo:
    """Train (or reuse) one model per norm kind of ``settings.norms`` and, when "ln" is among them, the
    LN-removed copy of it; every model is returned in eval mode."""
    torch.manual_seed(seed)
    zoo = TrainedZoo(models={}, runs=[], removal=None)
    for norm in settings.norms:
        t0 = time.perf_counter()
        model_config = settings.model.replace(norm=norm, seed=seed)
        model, result, reused = _train_or_reuse(norm, model_config, settings.train, splits, models_dir / norm, fresh)
        zoo.models[norm], zoo.reused[norm] = model, reused
        zoo.runs.append(result)
        zoo.seconds[norm] = time.perf_counter() - t0
        log(f"  {LABELS.get(norm, norm):<34} val loss {result.final_val_loss:.4f}"
            + (f"  (diverged at step {result.diverged_step})" if result.diverged else "")
            + (f"  [reused; trained in {result.wall_time_s:.1f} s]" if reused else f"  [{zoo.seconds[norm]:.1f} s]"))
    if "ln" in zoo.models:
        t0 = time.perf_counter()
        removed, removal, reused = _removal_or_reuse(zoo.models["ln"], settings, splits, models_dir / "ln-removed",
                                                     fresh)
        zoo.models[LN_REMOVED], zoo.removal, zoo.reused[LN_REMOVED] = removed, removal, reused
        zoo.seconds[LN_REMOVED] = time.perf_counter() - t0
        zoo.runs.append(_removal_as_training(removal, settings.train.steps, settings.model.to_dict(),
                                             count_parameters(removed)))
        log(f"  {LABELS[LN_REMOVED]:<34} val loss {removal.val_loss_after:.4f} (was {removal.val_loss_before:.4f})"
            + (f"  [reused; fine-tuned in {removal.wall_time_s:.1f} s]" if reused
               else f"  [{zoo.seconds[LN_REMOVED]:.1f} s]"))
    for model in zoo.models.values():
        model.eval()
    return zoo


def save_zoo_training(zoo: TrainedZoo, folder: Path, labels: dict[str, str] = LABELS) -> None:
    """The training section's data: curves, final numbers, original training times, what was reused."""
    rows = []
    for run in zoo.runs:
        alphas = [m.alpha.item() for m in norm_modules(zoo.models[run.name]).values() if isinstance(m, DyT)]
        rows.append({"name": run.name, "label": labels.get(run.name, run.name), "final_val_loss": run.final_val_loss,
                     "n_params": run.n_params, "diverged": run.diverged, "diverged_step": run.diverged_step,
                     "dyt_alpha_mean": sum(alphas) / len(alphas) if alphas else None,
                     "train_seconds": run.wall_time_s, "reused": zoo.reused.get(run.name, False)})
    notes = []
    if zoo.removal is not None:
        r = zoo.removal
        notes.append(f"LN removal: validation loss {r.val_loss_before:.4f} before, {r.val_loss_after:.4f} after; "
                     "groups frozen at steps " + ", ".join(f"{slot}@{step}" for step, slot in r.schedule))
    notes += [f"{labels.get(r.name, r.name)} diverged at step {r.diverged_step}: its curve stops there"
              for r in zoo.runs if r.diverged]
    save_training(folder, zoo.runs, rows, notes=notes, summary=(
        "Every model has the same architecture, data, initial weights and optimizer; only the normalization "
        "differs. Loss is next-token cross-entropy on byte tokens of the embedded corpus (Python standard-library "
        "sources)."))
