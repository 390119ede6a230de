"""`normlens demo`: train the zoo on the embedded corpus and write one report.

The zoo: "ln", "rms", "dyt", "none", plus "ln→lnfree" (the trained "ln" model
with its LayerNorms removed by fine-tuning). Trained models are saved under
``<report folder>/<report name>_data/models`` and reused when the demo runs
again with the same settings, so an interrupted demo loses nothing.
"""
from __future__ import annotations

import dataclasses
import platform
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd
import torch

from normlens.data.corpus import TokenSplits, eval_windows, load_embedded
from normlens.io import as_json_value, read_json, write_json
from normlens.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from normlens.models.config import ZooConfig
from normlens.models.ln_removal import LNRemovalConfig, LNRemovalResult, remove_layernorm
from normlens.models.norms import DyT
from normlens.models.zoo import build_model, count_parameters, get_config, norm_modules
from normlens.plots.training import plot_training_curves
from normlens.report import Figure, ReportSection, Table, write_report
from normlens.study import ZooStudy
from normlens.train import TrainConfig, TrainResult, saved_state_mismatch, train

ZOO_NORMS = ("ln", "rms", "dyt", "none")
LN_REMOVED = "ln→lnfree"

SectionBuilder = Callable[[ZooStudy], ReportSection]


@dataclass(frozen=True)
class DemoConfig:
    model: ZooConfig = ZooConfig(n_layers=2, d_model=64, n_heads=4, n_ctx=64)
    train: TrainConfig = TrainConfig(steps=300, eval_every=25)
    removal: LNRemovalConfig = LNRemovalConfig()
    eval_seqs: int = 16
    seed: int = 0
    out: Path = Path("reports/demo.html")
    fresh: bool = False
    norms: tuple[str, ...] = ZOO_NORMS
    analyses: tuple[str, ...] = field(default=())  # empty: every registered analysis

    @property
    def data_dir(self) -> Path:
        return self.out.parent / f"{self.out.stem}_data"


def analysis_sections() -> dict[str, SectionBuilder]:
    """The report sections that analyses contribute, in report order."""
    from normlens.curvature.section import build_section as hessian_section
    from normlens.landscape.section import build_section as landscape_section
    from normlens.probes.section import build_section as probes_section

    return {"probes": probes_section, "hessian": hessian_section, "landscape": landscape_section}


def _train_or_reuse(name: str, model_config: ZooConfig, config: DemoConfig, splits: TokenSplits,
                    folder: Path) -> tuple[torch.nn.Module, TrainResult]:
    result_path = folder / "train_result.json"
    if not config.fresh and result_path.is_file():
        try:
            saved = TrainResult.from_dict(read_json(result_path))
            model = load_checkpoint(folder / "model")
            if (model.normlens_config == model_config
                    and saved.train_config == as_json_value(dataclasses.asdict(config.train))):
                return model, saved
        except (CheckpointError, ValueError, TypeError):
            pass  # stale or damaged: train again
    # saved state of another run (other settings) or of this one when --fresh: start over
    if config.fresh and (folder / "state").is_dir() or saved_state_mismatch(folder, model_config, config.train):
        shutil.rmtree(folder / "state")
    model = build_model(model_config)
    result = train(model, splits, config.train, name=name, checkpoint_dir=folder)
    return model, result


def _removal_or_reuse(ln_model, config: DemoConfig, splits: TokenSplits, folder: Path):
    result_path = folder / "removal_result.json"
    # the removal's settings and those of the "ln" model it starts from: a retrained
    # "ln" model (other model or training settings, other seed) invalidates it
    key = {"removal": dataclasses.asdict(config.removal), "train": dataclasses.asdict(config.train),
           "model": get_config(ln_model).to_dict()}
    if not config.fresh and result_path.is_file():
        try:
            data = read_json(result_path)
            if data.get("config") == as_json_value(key):
                result = LNRemovalResult(**{k: v for k, v in data.items() if k != "config"})
                return load_checkpoint(folder / "model"), result
        except (CheckpointError, ValueError, TypeError):
            pass
    model, result = remove_layernorm(ln_model, splits, config.removal)
    save_checkpoint(model, folder / "model")
    write_json(result_path, result.to_dict() | {"config": key})
    return model, result


def _removal_as_training(result: LNRemovalResult, offset: int, model_config: dict,
                         n_params: int) -> TrainResult:
    """Draw the removal's fine-tuning after the "ln" run on the training plot."""
    return TrainResult(
        name=LN_REMOVED, model_config=model_config, train_config={}, n_params=n_params,
        steps=[offset + s for s in result.steps], train_loss=result.train_loss,
        val_steps=[offset + (result.steps[-1] + 1 if result.steps else 0)],
        val_loss=[result.val_loss_after], diverged=result.diverged,
    )


def _training_section(results: list[TrainResult], models: dict, removal: LNRemovalResult,
                      wall: dict[str, float]) -> ReportSection:
    rows = []
    for result in results:
        alphas = [m.alpha.item() for m in norm_modules(models[result.name]).values() if isinstance(m, DyT)]
        rows.append({
            "model": result.name,
            "final val loss": result.final_val_loss,
            "parameters": result.n_params,
            "diverged": f"yes (step {result.diverged_step})" if result.diverged else "no",
            "DyT α (mean)": sum(alphas) / len(alphas) if alphas else float("nan"),
            "train time (s)": wall.get(result.name, float("nan")),
        })
    fig, ax = plt.subplots(figsize=(8, 4.5))
    plot_training_curves(results, ax=ax)
    notes = [f"LN removal: validation loss {removal.val_loss_before:.4f} before, "
             f"{removal.val_loss_after:.4f} after; groups frozen at steps "
             + ", ".join(f"{slot}@{step}" for step, slot in removal.schedule)]
    notes += [f"{r.name} diverged at step {r.diverged_step}: its curve stops there" for r in results if r.diverged]
    return ReportSection(
        title="Training",
        summary=("Every model has the same architecture, data, initial weights and optimizer; "
                 "only the normalization differs. Loss is next-token cross-entropy on byte tokens "
                 "of the embedded corpus (Python standard-library sources)."),
        figures=[Figure.from_matplotlib(fig, "Training and validation loss of every zoo model")],
        tables=[Table("Final validation loss and parameter count", pd.DataFrame(rows))],
        notes=notes,
    )


def run_demo(config: DemoConfig = DemoConfig(), *, sections: dict[str, SectionBuilder] | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Train the zoo, run the analyses and write the report; return its path."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    splits = load_embedded(seed=config.seed)
    models_dir = config.data_dir / "models"
    models: dict[str, torch.nn.Module] = {}
    results: list[TrainResult] = []
    wall: dict[str, float] = {}
    for norm in config.norms:
        t0 = time.perf_counter()
        model_config = config.model.replace(norm=norm, seed=config.seed)
        models[norm], result = _train_or_reuse(norm, model_config, config, splits, models_dir / norm)
        results.append(result)
        wall[norm] = time.perf_counter() - t0
        log(f"  {norm:<10} val loss {result.final_val_loss:.4f}"
            + (f"  (diverged at step {result.diverged_step})" if result.diverged else "")
            + f"  [{wall[norm]:.1f} s]")
    t0 = time.perf_counter()
    removed, removal = _removal_or_reuse(models["ln"], config, splits, models_dir / "ln-removed")
    models[LN_REMOVED] = removed
    wall[LN_REMOVED] = time.perf_counter() - t0
    results.append(_removal_as_training(removal, config.train.steps, config.model.to_dict(),
                                        count_parameters(removed)))
    log(f"  {LN_REMOVED:<10} val loss {removal.val_loss_after:.4f} (was {removal.val_loss_before:.4f})"
        f"  [{wall[LN_REMOVED]:.1f} s]")
    write_json(config.data_dir / "training.json", [r.to_dict() for r in results])
    for model in models.values():
        model.eval()
    study = ZooStudy(
        models=models,
        eval_tokens=eval_windows(splits, n_seq=config.eval_seqs, n_ctx=config.model.n_ctx,
                                 seed=config.seed),
        data_dir=config.data_dir, seed=config.seed,
        diverged={r.name for r in results if r.diverged},
    )
    report_sections = [_training_section(results, models, removal, wall)]
    builders = sections if sections is not None else analysis_sections()
    for name, build in builders.items():
        if config.analyses and name not in config.analyses:
            continue
        t0 = time.perf_counter()
        try:
            report_sections.append(build(study))
        except Exception as error:  # a failed analysis must not lose the rest of the report
            report_sections.append(ReportSection(
                title=f"{name} (failed)", notes=[f"{type(error).__name__}: {error}"],
                summary=traceback.format_exc(limit=3)))
            log(f"  section {name} FAILED: {error}")
        log(f"  section {name:<10} [{time.perf_counter() - t0:.1f} s]")
    elapsed = time.perf_counter() - started
    subtitle = (f"normlens demo · {len(models)} models · {config.train.steps} steps each · "
                f"{elapsed:.0f} s on {torch.get_num_threads()} threads ({platform.machine()}) · "
                f"data in {config.data_dir}")
    path = write_report(config.out, report_sections, title="normlens: normalization in transformers",
                        subtitle=subtitle)
    log(f"wrote {path} in {elapsed:.1f} s")
    return path
