"""The zoo: models that differ only in normalization, trained on the embedded corpus (or reused).

Trained models are saved under ``<results>/models/<key>`` and reused when a study runs again with
the same settings, so an interrupted study loses nothing; a reused model keeps the training time
of the run that trained it. "ln→lnfree" is the trained "ln" model with its LayerNorms removed by
fine-tuning (Baroni, Heimersheim et al. 2025).

:func:`sweep_zoo` trains the zoo over several seeds with :func:`normlens.sweep.run_sweep` (one
resumable folder per norm and seed, finished runs reused), removes LayerNorm from every seed's "ln"
model, and keeps the models of the first seed for the one-seed analyses. Every seed is evaluated
on the same fixed evaluation set (``TrainConfig.eval_seed``), so two norms trained with the same
seed form a pair (:func:`zoo_seed_tables`).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd
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
    """The zoo's architecture, training, LN removal and evaluation batch.

    ``n_seeds``: seeds of :func:`sweep_zoo` (the study's seed and the next ones); ``probe_every``:
    steps between training-probe records (0: none); ``threads``: torch threads while training
    (one thread per tiny run wastes the least CPU time on a shared machine; None: leave it).
    """

    model: ZooConfig = ZooConfig(n_layers=2, d_model=64, n_heads=4, n_ctx=64)
    train: TrainConfig = TrainConfig(steps=300, eval_every=25)
    removal: LNRemovalConfig = LNRemovalConfig()
    norms: tuple[str, ...] = ZOO_NORMS
    eval_seqs: int = 16
    n_seeds: int = 3
    probe_every: int = 0
    threads: Optional[int] = 1


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


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a zoo model's tensors (names, shapes and bytes): two models with equal digests are the same."""
    import hashlib

    from normlens.models.checkpoint import model_tensors

    digest = hashlib.sha256()
    for name, tensor in sorted(model_tensors(model).items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(array.shape)}|{array.dtype}|".encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


def _removal_or_reuse(ln_model, settings: ZooSettings, splits: TokenSplits, folder: Path,
                      fresh: bool) -> tuple[torch.nn.Module, LNRemovalResult, bool]:
    result_path = folder / "removal_result.json"
    # the removal's settings and those of the "ln" model it starts from: a retrained
    # "ln" model (other model or training settings, other seed) invalidates it
    key = {"removal": dataclasses.asdict(settings.removal), "train": dataclasses.asdict(settings.train),
           "model": get_config(ln_model).to_dict(), "weights": weights_digest(ln_model)}
    if not fresh and result_path.is_file():
        try:
            data = read_json(result_path)
            if data.get("config") == as_json_value(key):
                result = LNRemovalResult(**{k: v for k, v in data.items() if k != "config"})
                return load_checkpoint(folder / "model"), result, True
        except (CheckpointError, ValueError, TypeError):
            pass
    model, result = remove_layernorm(ln_model, splits, settings.removal, progress=False)
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


# -- the zoo over seeds ---------------------------------------------------------------------------

SWEEP_IDENTITY = "zoo_sweep.json"
SEEDS_FILE = "seeds.json"
BASELINE = "ln"
PROBE_SEQS = 16  # windows the training probes read (normlens.train.train's probe_seqs default)


def zoo_training_probes() -> list:
    """The probes recorded during training: attention entropy per head with the entropy summary
    (overload, collapse, sink rate) and residual-stream variance per depth."""
    from normlens.train_probes import attention_entropy_probe, residual_variance_probe

    return [attention_entropy_probe(), residual_variance_probe()]


@dataclass
class ZooSweep:
    """The zoo trained over ``seeds``: one row per (norm, seed) in ``sweep``, the LN removal of every
    seed's "ln" model, and ``detail``, the first seed's models for the one-seed analyses.

    ``removed_loss[seed]`` is the LN-removed model's loss on the fixed evaluation set (the one every
    training run is validated on); ``removals[seed]`` the removal's own record.
    """

    sweep: Any  # normlens.sweep.SweepResult
    seeds: tuple[int, ...]
    detail: TrainedZoo
    removals: dict[int, LNRemovalResult] = field(default_factory=dict)
    removed_loss: dict[int, float] = field(default_factory=dict)
    reused: dict[tuple[str, int], bool] = field(default_factory=dict)
    eval: dict[str, int] = field(default_factory=dict)


def _sweep_config(settings: ZooSettings, seeds: Sequence[int], split_seed: int):
    from normlens.sweep import SweepConfig

    return SweepConfig(model=settings.model, train=settings.train, seeds=tuple(seeds),
                       grid={"norm": tuple(settings.norms)}, data="embedded", split_seed=split_seed)


def _clear_stale_sweep(root: Path, identity: dict, fresh: bool) -> None:
    """Remove the cached sweep when it was trained with other shared settings or probes (or ``fresh``)."""
    path = root / SWEEP_IDENTITY
    if root.is_dir() and (fresh or not path.is_file()):
        shutil.rmtree(root)
        return
    if path.is_file():
        try:
            same = read_json(path) == as_json_value(identity)
        except (ValueError, UnicodeDecodeError):
            same = False
        if not same:
            shutil.rmtree(root)


def sweep_zoo(settings: ZooSettings, splits: TokenSplits, models_dir: Path, *, seed: int = 0,
              fresh: bool = False, log: Callable[[str], None] = print) -> ZooSweep:
    """Train (or reuse) every norm of ``settings.norms`` on seeds ``seed, seed + 1, ...``
    (``settings.n_seeds``) and remove LayerNorm from every seed's "ln" model.

    The runs are a :func:`normlens.sweep.run_sweep` under ``models_dir/sweep`` (split seed ``seed``,
    ``splits`` must be ``load_embedded(seed=seed)``); each seed sets a run's initialization and batch
    order, and every run is validated on the same fixed evaluation set. A cached sweep trained with
    other settings is trained again. The returned ``detail`` holds the first seed's models in eval mode.
    """
    from normlens.data.corpus import eval_windows
    from normlens.sweep import run_sweep
    from analyses.common.threads import torch_threads

    if not isinstance(settings.n_seeds, int) or settings.n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {settings.n_seeds!r}")
    if settings.probe_every and settings.train.eval_seqs < PROBE_SEQS:
        raise ValueError(f"training probes read the first {PROBE_SEQS} windows of the evaluation set, but "
                         f"train.eval_seqs is {settings.train.eval_seqs}; raise eval_seqs or set probe_every=0")
    seeds = tuple(range(seed, seed + settings.n_seeds))
    config = _sweep_config(settings, seeds, seed)
    root = Path(models_dir) / "sweep"
    probes = zoo_training_probes if settings.probe_every else None
    every = settings.probe_every or 50
    identity = {"sweep": config.base_spec(),
                "probes": [p.describe() for p in probes()] if probes else [], "every": every if probes else None}
    _clear_stale_sweep(root, identity, fresh)
    reused = {(norm, s): (config.run_folder(root, {"norm": norm}, s) / "train_result.json").is_file()
              for norm in settings.norms for s in seeds}
    with torch_threads(settings.threads):
        started = time.perf_counter()
        result = run_sweep(config, root, probes=probes, every=every, progress=False, log=log)
        write_json(root / SWEEP_IDENTITY, identity)
        result.runs["name"] = [cell.split("=", 1)[1] for cell in result.runs.cell]
        sweep_seconds = time.perf_counter() - started

        detail = TrainedZoo(models={}, runs=[], removal=None)
        for norm in settings.norms:
            folder = config.run_folder(root, {"norm": norm}, seeds[0])
            run = dataclasses.replace(TrainResult.from_dict(read_json(folder / "train_result.json")), name=norm)
            detail.models[norm] = load_checkpoint(folder / "model")
            detail.runs.append(run)
            detail.reused[norm] = reused[(norm, seeds[0])]
            detail.seconds[norm] = sweep_seconds / max(len(result.runs), 1)
        zoo = ZooSweep(sweep=result, seeds=seeds, detail=detail, reused=reused,
                       eval={"eval_seed": settings.train.eval_seed, "eval_seqs": settings.train.eval_seqs,
                             "n_ctx": settings.model.n_ctx})
        if BASELINE in settings.norms:
            from normlens.train import evaluate

            eval_tokens = eval_windows(splits, n_seq=settings.train.eval_seqs, n_ctx=settings.model.n_ctx,
                                       seed=settings.train.eval_seed)
            for s in seeds:
                t0 = time.perf_counter()
                row = result.runs[(result.runs.name == BASELINE) & (result.runs.seed == s)].iloc[0]
                if row.diverged:
                    log(f"  LN removal, seed {s}: skipped (the LayerNorm model diverged)")
                    continue
                ln_model = (detail.models[BASELINE] if s == seeds[0]
                            else load_checkpoint(config.run_folder(root, {"norm": BASELINE}, s) / "model"))
                per_seed = dataclasses.replace(settings, train=settings.train.replace(seed=s),
                                               removal=dataclasses.replace(settings.removal, seed=s))
                removed, removal, was_reused = _removal_or_reuse(ln_model, per_seed, splits,
                                                                 Path(models_dir) / "ln-removed" / f"seed-{s}", fresh)
                zoo.removals[s], zoo.reused[(LN_REMOVED, s)] = removal, was_reused
                zoo.removed_loss[s] = evaluate(removed, eval_tokens)
                if s == seeds[0]:
                    detail.models[LN_REMOVED], detail.removal, detail.reused[LN_REMOVED] = removed, removal, was_reused
                    detail.seconds[LN_REMOVED] = time.perf_counter() - t0
                    detail.runs.append(_removal_as_training(removal, settings.train.steps, settings.model.to_dict(),
                                                            count_parameters(removed)))
                log(f"  {LABELS[LN_REMOVED]:<34} seed {s}: val loss {zoo.removed_loss[s]:.4f} "
                    f"(LayerNorm {row.final_val_loss:.4f})" + ("  [reused]" if was_reused else ""))
    for model in detail.models.values():
        model.eval()
    return zoo


def _removal_cost(zoo: ZooSweep, ln_loss: dict[int, float], level: float) -> dict[str, Any]:
    """LN removal's cost per seed with an interval over seeds: against the LayerNorm-kept control
    when the removal records one (``gap_to_control``), else against the model before removal
    (on the fixed evaluation set)."""
    from normlens.uncertainty import bootstrap_interval

    seeds = sorted(zoo.removals)
    gaps = [getattr(zoo.removals[s], "gap_to_control", math.nan) for s in seeds]
    controlled = bool(seeds) and all(isinstance(g, (int, float)) and math.isfinite(g) for g in gaps)
    if controlled:
        values, baseline = [float(g) for g in gaps], "control"
        label = "the same model fine-tuned for the same steps with LayerNorm kept (control)"
    else:
        values = [zoo.removed_loss.get(s, math.nan) - ln_loss.get(s, math.nan) for s in seeds]
        baseline, label = "before", "the LayerNorm model before removal (no LayerNorm-kept control recorded)"
    interval = bootstrap_interval(values, level=level, seed=0)
    return {"baseline": baseline, "baseline_label": label, "seeds": seeds, "values": values,
            **interval.to_dict()}


def zoo_seed_tables(zoo: ZooSweep, labels: dict[str, str] = LABELS, *, level: float = 0.95) -> dict[str, Any]:
    """The seeds' numbers as saved in ``training/seeds.json``: per-run final validation losses,
    per-model means with t intervals over seeds, paired differences against LayerNorm
    (same seed, same evaluation set) and the LN removal's cost per seed."""
    from normlens.uncertainty import bootstrap_interval, paired_difference_interval

    runs = zoo.sweep.runs
    ln_loss = {int(r.seed): float(r.final_val_loss) for r in runs[runs.name == BASELINE].itertuples()}
    rows = [{"name": r.name, "label": labels.get(r.name, r.name), "seed": int(r.seed),
             "final_val_loss": float(r.final_val_loss), "diverged": bool(r.diverged),
             "diverged_step": None if pd.isna(r.diverged_step) else int(r.diverged_step),
             "train_seconds": float(r.wall_time_s), "reused": bool(zoo.reused.get((r.name, int(r.seed)), False))}
            for r in runs.itertuples()]
    for s, loss in sorted(zoo.removed_loss.items()):
        rows.append({"name": LN_REMOVED, "label": labels.get(LN_REMOVED, LN_REMOVED), "seed": s,
                     "final_val_loss": float(loss), "diverged": bool(zoo.removals[s].diverged), "diverged_step": None,
                     "train_seconds": float(zoo.removals[s].wall_time_s),
                     "reused": bool(zoo.reused.get((LN_REMOVED, s), False))})
    frame = pd.DataFrame(rows)
    summary, paired = [], []
    for name, group in frame.groupby("name", sort=False):
        interval = bootstrap_interval(group.final_val_loss.to_numpy(float), level=level, seed=0)
        summary.append({"name": name, "label": labels.get(name, name), "n_runs": len(group),
                        "n_diverged": int(group.diverged.sum()), **interval.to_dict()})
        if name == BASELINE or not ln_loss:
            continue
        seeds = [s for s in group.seed if s in ln_loss]
        mine = dict(zip(group.seed, group.final_val_loss))
        a = [mine[s] for s in seeds]
        b = [ln_loss[s] for s in seeds]
        interval = paired_difference_interval(a, b, level=level, seed=0)
        paired.append({"name": name, "label": labels.get(name, name), "baseline": BASELINE,
                       "baseline_label": labels.get(BASELINE, BASELINE), "seeds": [int(s) for s in seeds],
                       "values": [x - y for x, y in zip(a, b)], "n_seeds": len(seeds),
                       "excludes_zero": interval.excludes(0.0), **interval.to_dict()})
    return {"seeds": list(zoo.seeds), "detail_seed": zoo.seeds[0], "baseline": BASELINE, "level": level,
            "eval": dict(zoo.eval), "runs": rows, "summary": summary, "paired": paired,
            "removal": [{"seed": s, **{k: getattr(r, k, math.nan) for k in
                                       ("val_loss_before", "val_loss_after", "val_loss_control", "gap_to_control",
                                        "diverged")},
                         "fixed_before": ln_loss.get(s, math.nan), "fixed_after": zoo.removed_loss.get(s, math.nan)}
                        for s, r in sorted(zoo.removals.items())],
            "removal_cost": _removal_cost(zoo, ln_loss, level) if zoo.removals else None}


def save_zoo_seeds(zoo: ZooSweep, folder: Path, labels: dict[str, str] = LABELS) -> Path:
    """``folder/seeds.json``: :func:`zoo_seed_tables` of the sweep (read by the training section and the verdict)."""
    return write_json(Path(folder) / SEEDS_FILE, zoo_seed_tables(zoo, labels))
