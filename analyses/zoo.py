"""zoo: LayerNorm, RMSNorm, DyT, no normalization and LayerNorm removed by fine-tuning, side by side.

Five decoders that differ only in normalization (same architecture, data, initial weights and
optimizer) go through every analysis: training curves, probes, Hessian spectra, loss landscapes.
The claims it checks at small scale: DyT matches LayerNorm (Zhu et al. 2025), and LayerNorm can be
removed by fine-tuning at a small loss increase (Baroni, Heimersheim et al. 2025: +0.014 to +0.067
nats on GPT-2).

Every model is trained on several seeds (three in both modes) and validated on one fixed evaluation
set, so the comparisons are paired differences with Student's t intervals over seeds; the detailed
analyses (probes, Hessian, landscapes) run on the first seed's models.

    normlens analyze zoo [--quick | --full] [--out reports/zoo.html]
    normlens demo                   # the same study, report at reports/demo.html
"""
from __future__ import annotations

import dataclasses
import math
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from analyses.common.names import LABELS, LN_REMOVED
from normlens.io import read_json, write_json
from normlens.report.manifest import SectionRef
from normlens.study import BaseStudy, StudyConfig, StudyError, StudyRun

if TYPE_CHECKING:  # the analyses import TransformerLens (seconds): only when the study runs
    from analyses.common.curvature import HessianSettings
    from analyses.common.landscape import LandscapeSettings
    from analyses.common.probes import ProbeSettings
    from analyses.common.zoo_models import ZooSettings

ANALYSES = ("probes", "hessian", "landscape")
PARITY_NATS = 0.05  # |DyT - LayerNorm| final validation loss counted as parity
REMOVAL_NATS = 0.07  # the largest increase the LN-removal paper reports (GPT-2 small, +0.067)
OPTIONS = ("steps", "analyses", "seeds")


@dataclasses.dataclass(frozen=True)
class ZooModeSettings:
    """Everything a mode fixes: the zoo and each analysis's settings."""

    zoo: ZooSettings
    probes: ProbeSettings
    hessian: HessianSettings
    landscape: LandscapeSettings


def default_modes() -> dict[str, ZooModeSettings]:
    """quick: the demo's zoo (2 layers, width 64, context 64, 300 steps), minutes on 2 CPU cores;
    full: 12 layers, width 256, context 512, 2000 steps, larger analyses, meant for a GPU."""
    from analyses.common.curvature import HessianSettings
    from analyses.common.landscape import LandscapeSettings
    from analyses.common.probes import ProbeSettings
    from analyses.common.zoo_models import ZooSettings
    from normlens.models.config import ZooConfig
    from normlens.train import TrainConfig

    quick = ZooModeSettings(ZooSettings(train=TrainConfig(steps=300, eval_every=25), n_seeds=3, probe_every=50),
                            ProbeSettings(), HessianSettings(), LandscapeSettings())
    full = ZooModeSettings(
        ZooSettings(model=ZooConfig(n_layers=12, d_model=256, n_heads=8, n_ctx=512),
                    train=TrainConfig(steps=2000, eval_every=100), eval_seqs=32, n_seeds=3, probe_every=100,
                    threads=None),
        ProbeSettings(n_seq=16, s_curve_samples=1024, probe_bytes=16 << 20, threads=None),
        HessianSettings(n_seq=8, n_ctx=128, top_k=5, top_steps=40, density_probes=4, density_steps=60,
                        block_steps=20, threads=None),
        LandscapeSettings(resolution=41, n_seq=16),
    )
    return {"quick": quick, "full": full}


def __getattr__(name: str) -> Any:  # QUICK and FULL are built on first use (PEP 562)
    if name in ("QUICK", "FULL"):
        return default_modes()[name.lower()]
    raise AttributeError(f"module 'analyses.zoo' has no attribute {name!r}")


def mode_settings(config: StudyConfig, modes: Mapping[str, ZooModeSettings] | None = None) -> ZooModeSettings:
    """The settings of ``config.mode`` with the options applied (``steps``: training steps per model,
    ``seeds``: how many seeds each model is trained on, ``analyses``: which detailed analyses run)."""
    settings = (modes or default_modes())[config.mode]
    unknown = set(config.options) - set(OPTIONS)
    if unknown:
        raise StudyError(f"the zoo study has no option {', '.join(sorted(unknown))}; it takes {', '.join(OPTIONS)}")
    zoo = settings.zoo
    n_seeds = config.options.get("seeds", zoo.n_seeds)
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise StudyError(f"the zoo's seeds option is the number of seeds (an integer >= 1), got {n_seeds!r}")
    train = dataclasses.replace(zoo.train, seed=config.seed, steps=int(config.options.get("steps", zoo.train.steps)))
    zoo = dataclasses.replace(zoo, train=train, removal=dataclasses.replace(zoo.removal, seed=config.seed),
                              n_seeds=n_seeds)
    return dataclasses.replace(settings, zoo=zoo)


def _run_analysis(name: str, compute: Callable[[], SectionRef], log: Callable[[str], None],
                  wall: dict[str, float]) -> SectionRef:
    """``compute()``, or a "failed" section with the error: a failed analysis must not lose the rest."""
    t0 = time.perf_counter()
    try:
        ref = compute()
    except Exception as error:  # noqa: BLE001
        ref = SectionRef("failed", ".", {"name": name, "error": f"{type(error).__name__}: {error}",
                                         "traceback": traceback.format_exc(limit=3)})
        log(f"  section {name} FAILED: {error}")
    wall[name] = time.perf_counter() - t0
    log(f"  section {name:<10} [{wall[name]:.1f} s]")
    return ref


class ZooStudy(BaseStudy):
    name = "zoo"
    description = "LayerNorm, RMSNorm, DyT, no norm and LN removed, side by side through every analysis"
    title = "normlens zoo: five normalizations side by side"
    renderers: Mapping[str, Any] = {}

    def __init__(self, modes: Mapping[str, ZooModeSettings] | None = None):
        self.modes = dict(modes) if modes is not None else None  # None: default_modes(), built when run

    def run(self, config: StudyConfig, results: Path, log: Callable[[str], None]) -> StudyRun:
        from analyses.common import curvature, landscape, probes
        from analyses.common.inputs import ModelSet
        from analyses.common.zoo_models import save_zoo_seeds, save_zoo_training, sweep_zoo
        from normlens.data.corpus import eval_windows, load_embedded

        settings = mode_settings(config, self.modes)
        chosen = tuple(config.options.get("analyses", ANALYSES))
        if set(chosen) - set(ANALYSES):
            raise StudyError(f"unknown zoo analyses {sorted(set(chosen) - set(ANALYSES))}; choose from {ANALYSES}")
        wall: dict[str, float] = {}
        t0 = time.perf_counter()
        splits = load_embedded(seed=config.seed)
        swept = sweep_zoo(settings.zoo, splits, results / "models", seed=config.seed, fresh=config.fresh, log=log)
        zoo = swept.detail
        wall["training (this run: train or load)"] = time.perf_counter() - t0
        save_zoo_training(zoo, results / "training")
        save_zoo_seeds(swept, results / "training")
        if zoo.removal is not None:
            write_json(results / "training" / "ln_removal.json", zoo.removal.to_dict())
        # the analyses read the fixed evaluation set every run is validated on (not the training seed's)
        models = ModelSet(models=zoo.models, labels=dict(LABELS), seed=config.seed, diverged=zoo.diverged,
                          eval_tokens=eval_windows(splits, n_seq=settings.zoo.eval_seqs,
                                                   n_ctx=settings.zoo.model.n_ctx, seed=settings.zoo.train.eval_seed))
        computes = {
            "probes": lambda: probes.run_probes(models, results, "probes", settings.probes),
            "hessian": lambda: curvature.run_hessians(models, results, "hessian", settings.hessian),
            "landscape": lambda: landscape.run_landscapes(models, results, "landscape", settings.landscape),
        }
        sections = [SectionRef("training", "training", {
            "band": PARITY_NATS, "band_label": f"±{PARITY_NATS:g} nats: the parity this study grants the DyT claim"})]
        sections += [_run_analysis(name, computes[name], log, wall) for name in ANALYSES if name in chosen]
        return StudyRun(sections=sections, config=dataclasses.asdict(settings), wall_seconds=wall,
                        seeds={"train": list(swept.seeds), "detailed analyses": swept.seeds[0],
                               "removal": sorted(swept.removals), "evaluation set": settings.zoo.train.eval_seed})

    def verdict(self, results: Path) -> str:
        return zoo_verdict(results)


def _interval(row: Mapping[str, Any]) -> tuple[float, float, float, int]:
    return (float(row.get("estimate", math.nan)), float(row.get("low", math.nan)), float(row.get("high", math.nan)),
            int(row.get("n", 0)))


def _ci(row: Mapping[str, Any]) -> str:
    estimate, low, high, n = _interval(row)
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{n} seed{'s' if n != 1 else ''}, no interval"
    return f"{float(row.get('level', 0.95)):.0%} CI [{low:+.3f}, {high:+.3f}] over {n} seeds"


def judge(low: float, high: float, lowest: float, highest: float) -> str:
    """"agrees" when the whole interval lies in [lowest, highest], "disagrees" when none of it does,
    else "inconclusive at this scale" (also without an interval)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive at this scale"
    if lowest <= low and high <= highest:
        return "agrees"
    if low > highest or high < lowest:
        return "disagrees"
    return "inconclusive at this scale"


def _relation(verdict: str) -> str:
    return {"agrees": "agrees with", "disagrees": "disagrees with"}.get(verdict, "is inconclusive at this scale about")


def _parity_clause(dyt: Mapping[str, Any], means: Mapping[str, float]) -> str | None:
    gap, low, high, n = _interval(dyt)
    if not math.isfinite(gap):
        return None
    verdict = judge(low, high, -PARITY_NATS, PARITY_NATS)
    losses = (f", mean final loss {means['dyt']:.3f} vs {means['ln']:.3f}"
              if math.isfinite(means.get("dyt", math.nan)) and math.isfinite(means.get("ln", math.nan)) else "")
    return (f"DyT ends {abs(gap):.3f} nats {'above' if gap > 0 else 'below'} LayerNorm (paired difference "
            f"{gap:+.3f}, {_ci(dyt)}{losses}), which {_relation(verdict)} the DyT paper's claim of parity "
            f"(±{PARITY_NATS} nats)")


def _removal_clause(cost: Mapping[str, Any]) -> str | None:
    change, low, high, n = _interval(cost)
    if not math.isfinite(change):
        return None
    verdict = judge(low, high, -math.inf, REMOVAL_NATS)
    against = ("the same model fine-tuned as long with LayerNorm kept" if cost.get("baseline") == "control"
               else "the model before removal (no LayerNorm-kept control was recorded)")
    return (f"removing LayerNorm by fine-tuning changes validation loss by {change:+.3f} nats against {against} "
            f"({_ci(cost)}), which {_relation(verdict)} the LN-removal paper's small increase (at most "
            f"+{REMOVAL_NATS} nats on GPT-2)")


def _seeds_verdict(data: Mapping[str, Any]) -> str:
    means = {row["name"]: float(row.get("estimate", math.nan)) for row in data.get("summary", [])}
    parts = []
    dyt = next((row for row in data.get("paired", []) if row.get("name") == "dyt"), None)
    if dyt is not None:
        parts.append(_parity_clause(dyt, means))
    if data.get("removal_cost"):
        parts.append(_removal_clause(data["removal_cost"]))
    parts = [p for p in parts if p]
    if not parts:
        return "No verdict: the LayerNorm, DyT or LN-removed model is missing or diverged on every seed."
    sentence = "; ".join(parts) + "."
    diverged = [f"{row['label']} ({row['n_diverged']} of {row['n_runs']} seeds)" for row in data.get("summary", [])
                if row.get("n_diverged")]
    if diverged:
        sentence += f" Diverged: {', '.join(diverged)}."
    return sentence[0].upper() + sentence[1:]


def zoo_verdict(results: Path) -> str:
    """One sentence from the saved numbers: DyT vs LayerNorm parity and the cost of removing LayerNorm,
    each with its interval over seeds (``training/seeds.json``); a results folder of one seed (written
    before the seeds were swept) is judged on its point values."""
    seeds = Path(results) / "training" / "seeds.json"
    if seeds.is_file():
        return _seeds_verdict(read_json(seeds))
    return _one_seed_verdict(results)


def _one_seed_verdict(results: Path) -> str:
    """The verdict of a one-seed results folder: point values, no intervals."""
    training = read_json(Path(results) / "training" / "training.json")
    loss = {m["name"]: m.get("final_val_loss") for m in training["models"]}
    diverged = [LABELS.get(m["name"], m["name"]) for m in training["models"]
                if m.get("diverged") or m.get("diverged_step") is not None]
    parts = []
    ln, dyt = loss.get("ln"), loss.get("dyt")
    if ln is not None and dyt is not None and math.isfinite(ln) and math.isfinite(dyt):
        gap = dyt - ln
        agrees = abs(gap) <= PARITY_NATS
        parts.append(f"DyT ends {abs(gap):.3f} nats {'above' if gap > 0 else 'below'} LayerNorm "
                     f"({dyt:.3f} vs {ln:.3f}, one seed, no interval), so at this scale the DyT paper's claim of "
                     "parity " + ("holds" if agrees else "does not hold") + f" (tolerance {PARITY_NATS} nats)")
    removal_path = Path(results) / "training" / "ln_removal.json"
    if removal_path.is_file():
        removal = read_json(removal_path)
        change = removal["val_loss_after"] - removal["val_loss_before"]
        if math.isfinite(change):
            small = change <= REMOVAL_NATS
            parts.append(f"removing LayerNorm by fine-tuning changed validation loss by {change:+.3f} nats, "
                         + ("within" if small else "more than") + f" the +{REMOVAL_NATS} the LN-removal paper "
                         "reports for GPT-2")
    if not parts:
        return "No verdict: the LayerNorm, DyT or LN-removed model is missing or diverged."
    sentence = "; ".join(parts) + "."
    if diverged:
        sentence += f" Diverged: {', '.join(diverged)}."
    return sentence[0].upper() + sentence[1:]


STUDY = ZooStudy()

__all__ = ["ANALYSES", "LN_REMOVED", "OPTIONS", "PARITY_NATS", "REMOVAL_NATS", "STUDY", "ZooModeSettings", "ZooStudy",
           "default_modes", "judge", "mode_settings", "zoo_verdict"]
