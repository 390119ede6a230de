"""curvature: do landscapes and spectra tell normalized and norm-free transformers apart?

The zoo's models with LayerNorm, RMSNorm, DyT and no normalization (the zoo's recipe: same
architecture, data, initial weights and optimizer), trained over several seeds with
:func:`normlens.sweep.run_sweep`, measured on the same held-out batches, and three published
claims tested at small scale (:mod:`analyses.common.curvature_claims`):

1. Li et al. 2018: filter-normalized random planes make networks comparable, and normalization
   (skip connections in the paper) smooths the landscape;
2. the LLA paper: random-direction plots can mislead when normalization layers are present; the
   top Hessian eigenvectors are better axes; re and Kh characterize the minimum;
3. FARMS: the weight ESD's heavy-tail α is biased by the matrix's aspect ratio; fixed-aspect-ratio
   windows remove the bias.

    normlens analyze curvature [--quick | --full] [--out reports/curvature.html]

Options (``StudyConfig.options``): ``steps`` (training steps per model), ``n_seeds`` (≥ 2),
``data`` (a corpus source of :func:`normlens.data.load_corpus`, e.g. "hf:NAME" in full mode).
"""
from __future__ import annotations

import dataclasses
import shutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from analyses.common.curvature_claims import UNITS, curvature_verdict
from analyses.common.names import LABELS, ZOO_NORMS
from normlens.io import as_json_value, read_json, write_json
from normlens.report.manifest import SectionRef
from normlens.study import BaseStudy, StudyConfig, StudyError, StudyRun

if TYPE_CHECKING:  # TransformerLens takes seconds to import: only when the study runs
    from analyses.common.curvature_measure import MeasureSettings
    from normlens.models.config import ZooConfig
    from normlens.sweep import SweepResult
    from normlens.train import TrainConfig

NORMALIZED = ("ln", "rms")  # normalization layers in the LLA paper's sense: statistics over features
REFERENCE = "none"
OPTIONS = ("steps", "n_seeds", "data")


@dataclasses.dataclass(frozen=True)
class CurvatureSettings:
    """Everything a mode fixes.

    Args:
        model, train: the zoo's architecture and training recipe (every norm kind, every seed).
        n_seeds: training seeds (study seed, seed + 1, ...); ≥ 2.
        norms: the norm kinds; must hold "none" and at least one of "ln", "rms".
        data: the corpus (:func:`normlens.data.load_corpus` source).
        n_batches, n_seq, n_ctx: the held-out batches every model is measured on.
        measure: the Hessian and landscape settings.
        threads: torch threads during the study (None: leave as is).
    """

    model: ZooConfig
    train: TrainConfig
    measure: MeasureSettings
    n_seeds: int = 2
    norms: tuple[str, ...] = ZOO_NORMS
    data: str = "embedded"
    n_batches: int = 4
    n_seq: int = 4
    n_ctx: int = 32
    threads: Optional[int] = 1

    def __post_init__(self) -> None:
        if isinstance(self.n_seeds, bool) or not isinstance(self.n_seeds, int) or self.n_seeds < 2:
            raise StudyError(f"n_seeds must be an integer ≥ 2 (every comparison needs seeds), got {self.n_seeds!r}")
        if REFERENCE not in self.norms or not set(NORMALIZED) & set(self.norms):
            raise StudyError(f"norms must hold {REFERENCE!r} and at least one of {NORMALIZED}, got {self.norms}")
        if self.n_batches < 2:
            raise StudyError(f"n_batches must be at least 2 (standard errors over batches), got {self.n_batches}")
        if self.n_ctx > self.model.n_ctx:
            raise StudyError(f"n_ctx={self.n_ctx} exceeds the model's context {self.model.n_ctx}")


def default_modes() -> dict[str, CurvatureSettings]:
    """quick: the zoo's demo models (2 layers, width 64, context 64, 300 steps) × 2 seeds, 4 batches
    of 4×32 tokens, 11×11 planes: a few minutes on 2 CPU cores. full: 12 layers, width 256, context
    512, 2000 steps × 3 seeds, 8 batches of 8×128 tokens, 25×25 planes, converged Lanczos; for a GPU."""
    from analyses.common.curvature_measure import MeasureSettings
    from analyses.common.zoo_models import ZooSettings
    from normlens.models.config import ZooConfig
    from normlens.train import TrainConfig

    zoo = ZooSettings()
    quick = CurvatureSettings(model=zoo.model, train=zoo.train, measure=MeasureSettings())
    full = CurvatureSettings(
        model=ZooConfig(n_layers=12, d_model=256, n_heads=8, n_ctx=512),
        train=TrainConfig(steps=2000, eval_every=100),
        measure=MeasureSettings(top_k=3, top_steps=40, max_steps=120, tol=1e-3, density_probes=4, density_steps=60,
                                hessian_steps=60, resolution=25, n_random_axes=8),
        n_seeds=3, n_batches=8, n_seq=8, n_ctx=128, threads=None)
    return {"quick": quick, "full": full}


def mode_settings(config: StudyConfig, modes: Mapping[str, CurvatureSettings] | None = None) -> CurvatureSettings:
    """The settings of ``config.mode`` with the options applied (checked before any work)."""
    settings = (modes or default_modes())[config.mode]
    unknown = set(config.options) - set(OPTIONS)
    if unknown:
        raise StudyError(f"the curvature study has no option {', '.join(sorted(unknown))}; it takes "
                         f"{', '.join(OPTIONS)}")
    options = dict(config.options)
    try:
        steps = int(options.get("steps", settings.train.steps))
        n_seeds = int(options.get("n_seeds", settings.n_seeds))
    except (TypeError, ValueError):
        raise StudyError(f"steps and n_seeds must be integers, got {options}") from None
    if steps < 1:
        raise StudyError(f"steps must be a positive integer, got {steps}")
    train = dataclasses.replace(settings.train, steps=steps)
    return dataclasses.replace(settings, train=train, n_seeds=n_seeds, data=str(options.get("data", settings.data)))


def label_of(kind: str, seed: int) -> str:
    return f"{LABELS.get(kind, kind)}, seed {seed}"


def stem_of(kind: str, seed: int) -> str:
    return f"{kind}-seed{seed}"


def _lazy(attribute: str) -> Callable[[Path, Mapping[str, Any]], Any]:
    """A renderer that imports the sections module (matplotlib, torch) only when drawing."""
    def render(folder: Path, options: Mapping[str, Any]):
        from analyses import curvature_sections

        return getattr(curvature_sections, attribute)(folder, options)

    render.__name__ = attribute
    return render


RENDERERS = {name: _lazy(f"render_{name}") for name in
             ("curvature_claims", "curvature_spectra", "curvature_landscapes", "curvature_weights")}


def train_models(settings: CurvatureSettings, folder: Path, seeds: tuple[int, ...], *, split_seed: int,
                 fresh: bool, log: Callable[[str], None]) -> tuple[SweepResult, dict[str, bool]]:
    """Train (or reuse) every norm kind × seed as one sweep under ``folder``; a folder holding a sweep
    with other settings, or any with ``fresh``, is cleared first. Returns the sweep and, per run
    folder, whether it was finished before this call."""
    from normlens.sweep import SWEEP_FILE, SweepConfig, run_sweep

    config = SweepConfig(model=settings.model, train=settings.train, seeds=seeds, grid={"norm": settings.norms},
                         data=settings.data, split_seed=split_seed)
    spec = folder / SWEEP_FILE
    if folder.exists() and (fresh or (spec.is_file() and read_json(spec) != as_json_value(config.base_spec()))):
        log(f"  clearing {folder} ({'fresh run' if fresh else 'trained with other settings'})")
        shutil.rmtree(folder)
    finished = {}
    for cell in config.cells():
        for seed in seeds:
            run = config.run_folder(folder, cell, seed)
            finished[run.relative_to(folder).as_posix()] = (run / "train_result.json").is_file()
    sweep = run_sweep(config, folder, progress=False, log=log)
    return sweep, finished


def _save_training(sweep: SweepResult, models: Mapping[tuple[str, int], Any], finished: Mapping[str, bool],
                   root: Path, out: Path) -> None:
    from normlens.models.norms import DyT
    from normlens.models.zoo import norm_modules
    from normlens.report.sections.training import save_training
    from normlens.train import TrainResult

    runs, rows = [], []
    for row in sweep.runs.itertuples():
        result = TrainResult.from_dict(read_json(root / row.folder / "train_result.json"))
        name = stem_of(row.norm, row.seed)
        runs.append(dataclasses.replace(result, name=name))
        model = models.get((row.norm, row.seed))
        alphas = [m.alpha.item() for m in norm_modules(model).values() if isinstance(m, DyT)] if model else []
        rows.append({"name": name, "label": label_of(row.norm, row.seed), "final_val_loss": result.final_val_loss,
                     "n_params": result.n_params, "diverged": result.diverged, "diverged_step": result.diverged_step,
                     "dyt_alpha_mean": sum(alphas) / len(alphas) if alphas else None,
                     "train_seconds": result.wall_time_s, "reused": finished.get(row.folder, False)})
    notes = []
    differences = sweep.paired_differences(baseline={"norm": REFERENCE})
    for d in differences.itertuples():
        notes.append(f"Final validation loss of {LABELS.get(d.norm, d.norm)} minus {LABELS[REFERENCE]}: "
                     f"{d.estimate:+.3f} nats, 95% interval [{d.low:+.3f}, {d.high:+.3f}] (paired over "
                     f"{d.n_seeds} seeds; Student's t intervals).")
    save_training(out, runs, rows, notes=notes, summary=(
        "The zoo's recipe for every norm kind and seed: same architecture, data and optimizer; a seed sets the "
        "initial weights (the same for every norm kind) and the batch order. Loss is next-token cross-entropy on "
        "byte tokens of the corpus."))


def _failed_row(kind: str, seed: int, error: BaseException) -> dict[str, Any]:
    return {"model": kind, "seed": seed, "label": label_of(kind, seed), "stem": stem_of(kind, seed),
            "status": f"failed: {type(error).__name__}: {error}"}


class CurvatureStudy(BaseStudy):
    name = "curvature"
    description = ("Hessian spectra, landscapes on random and Hessian axes, and weight-ESD α of normalized "
                   "vs norm-free models, against Li et al. 2018, the LLA paper and FARMS")
    title = "normlens curvature: landscapes and spectra of normalized and norm-free models"
    renderers = RENDERERS

    def __init__(self, modes: Mapping[str, CurvatureSettings] | None = None):
        self.modes = dict(modes) if modes is not None else None

    def run(self, config: StudyConfig, results: Path, log: Callable[[str], None]) -> StudyRun:
        settings = mode_settings(config, self.modes)

        from analyses.common.curvature_measure import measure_model
        from analyses.common.threads import torch_threads
        from analyses.common.weight_alpha import compute_alpha_rows
        from normlens.data import load_corpus
        from normlens.data.corpus import eval_windows
        from normlens.models.checkpoint import load_checkpoint
        from normlens.models.zoo import build_model

        seeds = tuple(range(config.seed, config.seed + settings.n_seeds))
        wall: dict[str, float] = {}
        with torch_threads(settings.threads):
            t0 = time.perf_counter()
            root = results / "models"
            sweep, finished = train_models(settings, root, seeds, split_seed=config.seed, fresh=config.fresh, log=log)
            models = {(row.norm, row.seed): load_checkpoint(root / row.folder / "model").eval()
                      for row in sweep.runs.itertuples() if not row.diverged}
            diverged = [label_of(row.norm, row.seed) for row in sweep.runs.itertuples() if row.diverged]
            _save_training(sweep, models, finished, root, results / "training")
            wall["training (this run: train or load)"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            splits = load_corpus(settings.data, seed=config.seed)
            tokens = eval_windows(splits, n_seq=settings.n_batches * settings.n_seq, n_ctx=settings.n_ctx,
                                  seed=config.seed)
            batches = list(tokens.split(settings.n_seq))  # n_batches x (n_seq, n_ctx)
            spectra, landscapes, landscape_units, ratio_units, unconverged, notes = [], [], [], [], [], []
            for (kind, seed), model in models.items():
                stem, label = stem_of(kind, seed), label_of(kind, seed)
                try:
                    found = measure_model(model, batches, settings.measure, results, stem, seed=config.seed,
                                          direction_seed=config.seed, label=label, keys={"model": kind, "seed": seed})
                except Exception as error:  # noqa: BLE001 - one model must not lose the others
                    log(f"  {label}: measurement FAILED: {error}")
                    notes.append(f"{label}: measurement failed ({type(error).__name__}: {error}); "
                                 + traceback.format_exc(limit=2).splitlines()[-1])
                    spectra.append(_failed_row(kind, seed, error))
                    landscapes.append(_failed_row(kind, seed, error))
                    continue
                ids = {"model": kind, "seed": seed, "label": label, "stem": stem, "status": "ok"}
                spectra.append({**ids, **found.spectra})
                landscapes.append({**ids, **found.landscape})
                landscape_units += found.landscape_units
                ratio_units += found.ratio_units
                if not found.spectra["converged"]:
                    unconverged.append(label)
                if found.warning:
                    notes.append(f"{label}: {found.warning}")
                log(f"  {label:<36} λ1 {found.spectra['lambda_1 mean']:.3g} ± {found.spectra['lambda_1 SE']:.2g}, "
                    f"random-axis share of λmax {sum(u['ratio'] for u in found.ratio_units) / len(batches):.2e} "
                    f"[{found.seconds:.1f} s]")
            for row in sweep.runs.itertuples():
                if row.diverged:
                    notes.append(f"{label_of(row.norm, row.seed)}: training diverged at step {row.diverged_step}; "
                                 "not measured.")
            measure = dataclasses.asdict(settings.measure)
            common = {"models": [{"name": stem_of(k, s), "label": label_of(k, s), "kind": k, "seed": s}
                                 for k, s in models], "seeds": list(seeds), "n_batches": settings.n_batches,
                      "batch_shape": [settings.n_seq, settings.n_ctx], "settings": measure}
            write_json(results / "spectra" / "summary.json", {**common, "rows": spectra, "notes": notes})
            write_json(results / "landscapes" / "summary.json", {**common, "rows": landscapes})
            wall["Hessian and landscapes"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            alpha = []
            for seed in seeds:  # the initial weights of every norm kind are the same for a seed
                alpha += compute_alpha_rows(build_model(settings.model.replace(norm=settings.norms[0], seed=seed)),
                                            {"phase": "init", "model": None, "seed": seed})
            for (kind, seed), model in models.items():
                alpha += compute_alpha_rows(model, {"phase": "trained", "model": kind, "seed": seed})
            write_json(results / "weights" / "alpha.json", {"rows": alpha, "seeds": list(seeds),
                                                             "labels": dict(LABELS)})
            wall["weight spectra"] = time.perf_counter() - t0

        write_json(results / UNITS, {
            "labels": dict(LABELS), "normalized": [k for k in NORMALIZED if k in settings.norms],
            "reference": REFERENCE, "others": [k for k in settings.norms if k not in NORMALIZED + (REFERENCE,)],
            "seeds": list(seeds), "n_batches": settings.n_batches, "radius": settings.measure.random_span,
            "n_models": len(models), "unconverged": unconverged, "diverged": diverged,
            "landscape": landscape_units, "ratio": ratio_units, "alpha": alpha})
        sections = [SectionRef("training", "training"), SectionRef("curvature_claims", "claims"),
                    SectionRef("curvature_spectra", "spectra"), SectionRef("curvature_landscapes", "landscapes"),
                    SectionRef("curvature_weights", "weights")]
        return StudyRun(sections=sections, config=as_json_value(dataclasses.asdict(settings)), wall_seconds=wall,
                        seeds={"train": list(seeds), "directions": config.seed, "lanczos": config.seed})

    def verdict(self, results: Path) -> str:
        return curvature_verdict(results)


STUDY = CurvatureStudy()

__all__ = ["CurvatureSettings", "CurvatureStudy", "NORMALIZED", "REFERENCE", "RENDERERS", "STUDY", "default_modes",
           "label_of", "mode_settings", "stem_of"]
