"""ln_removal: remove LayerNorm from a Pre-LN model by fine-tuning, and check that DLA becomes exact.

The claim tested (Heimersheim 2024, "You can remove GPT2's LayerNorm by fine-tuning"; Baroni,
Heimersheim et al. 2025, "Transformers Don't Need LayerNorm at Inference Time"): every LayerNorm of
GPT-2 can be replaced by a frozen divisor, one group at a time with fine-tuning in between, at a
small cost in loss (OpenWebText cross-entropy, against the same fine-tuning with LayerNorm kept:
GPT-2 small +0.067 nats, about 2.3 % of its loss; medium to XL +0.014 to +0.025), and once it is
gone direct logit attribution equals the direct effect measured by ablation.

Per seed the study trains (or reuses) a small Pre-LN LayerNorm model of the zoo, removes its
LayerNorms with :func:`normlens.models.ln_removal.remove_layernorm` (stages: each ln2; each ln1 on
the query/key path; each ln1 on the value path; the final LN; the first position), which also
fine-tunes a LayerNorm-kept control for the same steps on the same batches, and computes per head
the DLA and the ablated direct effect on both the LayerNorm model and the LayerNorm-removed one.

Verdict (computed from ``removal/losses.json`` and ``attribution/gaps.json``): the removal cost is
``val_loss_after - val_loss_control`` per seed, read relative to the control's loss, with a
t interval over seeds. It **agrees** with the paper when the interval's upper bound is at
most :data:`AGREE_RELATIVE` (3 % of the loss: GPT-2 small's 2.3 % plus a margin), **disagrees**
when its lower bound is above it (or a removal diverged), and is **inconclusive at this scale**
otherwise (or with fewer than two finite seeds). DLA counts as exact when max |DLA - ablation| is
at most :data:`EXACT_RELATIVE` times the largest |ablated effect| (float32 round-off).

    normlens analyze ln_removal [--quick | --full] [--out reports/ln_removal.html]

Options (``StudyConfig.options``, Python API): ``steps`` (training steps of the LayerNorm model),
``seeds`` (how many), ``corpus`` ("embedded", a text file, or "hf:NAME" for a ``datasets``
corpus), and ``model``: a Hugging Face folder or hub id of a GPT-2-class model (loaded by
:func:`normlens.models.loading.load_model`; no training, the corpus tokenized with its own
tokenizer), e.g. ``run_study(STUDY, StudyConfig(mode="full", options={"model": "gpt2",
"corpus": "hf:openwebtext"}))`` on a GPU machine with the model and data cached.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np

from normlens.io import read_json, write_json
from normlens.report.manifest import SectionRef
from normlens.report.section import ReportSection, Table
from normlens.study import BaseStudy, StudyConfig, StudyError, StudyRun

if TYPE_CHECKING:  # TransformerLens takes seconds to import: only when the study runs
    from normlens.models.config import ZooConfig
    from normlens.models.ln_removal import LNRemovalConfig
    from normlens.train import TrainConfig

AGREE_RELATIVE = 0.03  # removal cost / control loss counted as "costs little" (GPT-2 small: ~0.023)
PAPER_SMALL_NATS = 0.067  # GPT-2 small, OpenWebText validation CE increase
PAPER_SMALL_RELATIVE = 0.023
EXACT_RELATIVE = 1e-4  # max |DLA - ablation| / max |ablation| counted as exact (float32)
LEVEL = 0.95
OPTIONS = ("steps", "seeds", "corpus", "model")

BEFORE, REMOVED, CONTROL = "LayerNorm model", "LayerNorm removed", "LayerNorm kept (control)"
ATTRIBUTION_MODELS = {"ln": BEFORE, "lnfree": REMOVED}


@dataclasses.dataclass(frozen=True)
class LNRemovalModeSettings:
    """A mode: the LayerNorm model, its training, the removal schedule, seeds, the attribution batch,
    the corpus (``corpus_bytes``: how much of the embedded one, all when None), an optional Hugging Face
    model (``hf_model``: no training) and torch threads."""

    model: ZooConfig
    train: TrainConfig
    removal: LNRemovalConfig
    n_seeds: int = 3
    attribution_seqs: int = 8
    corpus: str = "embedded"
    corpus_bytes: Optional[int] = None
    hf_model: Optional[str] = None
    threads: Optional[int] = 1


def default_modes() -> dict[str, LNRemovalModeSettings]:
    """quick: 4 layers, width 64, context 64, 400 steps, 3 seeds (about two CPU minutes); full: 12
    layers, width 256, context 512, 2000 steps and a longer removal, meant for a GPU."""
    from normlens.models.config import ZooConfig
    from normlens.models.ln_removal import LNRemovalConfig
    from normlens.train import TrainConfig

    quick = LNRemovalModeSettings(
        model=ZooConfig(n_layers=4, d_model=64, n_heads=4, n_ctx=64, norm="ln"),
        train=TrainConfig(steps=400, eval_every=100, eval_seqs=32),
        removal=LNRemovalConfig(warmup_steps=10, steps_per_removal=3, final_steps=40, eval_seqs=64))
    full = LNRemovalModeSettings(
        model=ZooConfig(n_layers=12, d_model=256, n_heads=8, n_ctx=512, norm="ln"),
        train=TrainConfig(steps=2000, eval_every=200, eval_seqs=64),
        removal=LNRemovalConfig(warmup_steps=20, steps_per_removal=3, final_steps=200, eval_seqs=128),
        attribution_seqs=16, threads=None)
    return {"quick": quick, "full": full}


def mode_settings(config: StudyConfig, modes: Mapping[str, LNRemovalModeSettings] | None = None
                  ) -> LNRemovalModeSettings:
    """The settings of ``config.mode`` with ``config.options`` applied (see the module docstring)."""
    settings = (modes or default_modes())[config.mode]
    unknown = set(config.options) - set(OPTIONS)
    if unknown:
        raise StudyError(f"the ln_removal study has no option {', '.join(sorted(unknown))}; it takes "
                         + ", ".join(OPTIONS))
    options = dict(config.options)
    for name in ("steps", "seeds"):
        if name in options and (isinstance(options[name], bool) or not isinstance(options[name], int)
                                or options[name] < 1):
            raise StudyError(f"option {name} must be an integer >= 1, got {options[name]!r}")
    if "steps" in options:
        settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, steps=options["steps"]))
    if "seeds" in options:
        settings = dataclasses.replace(settings, n_seeds=options["seeds"])
    if "corpus" in options:
        settings = dataclasses.replace(settings, corpus=str(options["corpus"]))
    if "model" in options:
        settings = dataclasses.replace(settings, hf_model=str(options["model"]))
    return settings


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def loss_row(seed: int, removal: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One seed's numbers: the three losses, the removal cost (removed - control), its ratio to the
    control's loss, and the change from before (removed - before)."""
    before, after, control = (float(removal[k]) for k in ("val_loss_before", "val_loss_after", "val_loss_control"))
    cost = after - control
    return {"seed": seed, "val_loss_before": before, "val_loss_after": after, "val_loss_control": control,
            "cost": cost, "relative_cost": cost / control if _finite(control) and control != 0 else math.nan,
            "change": after - before, "diverged": bool(removal.get("diverged", False)), **extra}


def summarize_losses(rows: list[Mapping[str, Any]], level: float = LEVEL) -> dict[str, dict[str, Any]]:
    """Per quantity: mean over seeds with its t interval (differences paired by seed)."""
    from normlens.uncertainty import bootstrap_interval, paired_difference_interval

    def column(name: str) -> np.ndarray:
        return np.array([r[name] for r in rows], dtype=np.float64)

    out = {name: bootstrap_interval(column(name), level=level).to_dict()
           for name in ("val_loss_before", "val_loss_after", "val_loss_control", "relative_cost")}
    out["cost"] = paired_difference_interval(column("val_loss_after"), column("val_loss_control"), level=level).to_dict()
    out["change"] = paired_difference_interval(column("val_loss_after"), column("val_loss_before"),
                                               level=level).to_dict()
    return out


def gap_row(seed: int, key: str, gap: Mapping[str, float]) -> dict[str, Any]:
    effect = gap["max_abs_effect"]
    return {"seed": seed, "model": key, **gap,
            "relative_gap": gap["max_abs_gap"] / effect if _finite(effect) and effect > 0 else math.nan}


class LNRemovalStudy(BaseStudy):
    name = "ln_removal"
    description = "remove LayerNorm by fine-tuning: loss cost against an LN-kept control, and DLA made exact"
    title = "normlens ln_removal: removing LayerNorm by fine-tuning"

    def __init__(self, modes: Mapping[str, LNRemovalModeSettings] | None = None):
        self.modes = dict(modes) if modes is not None else None
        self.renderers = {"ln_removal_losses": render_losses, "ln_removal_schedule": render_schedule,
                          "ln_removal_attribution": render_attribution}

    def run(self, config: StudyConfig, results: Path, log: Callable[[str], None]) -> StudyRun:
        import torch

        from analyses.common.attribution import attribution_gap, compare_head_attribution, save_head_attribution
        from analyses.common.names import LN_REMOVED
        from analyses.common.threads import torch_threads
        from analyses.common.zoo_models import ZooSettings, train_zoo
        from normlens.data.corpus import corpus_for_model, eval_windows, load_corpus
        from normlens.models.ln_removal import remove_layernorm

        settings = mode_settings(config, self.modes)
        seeds = [config.seed + i for i in range(settings.n_seeds)]
        wall: dict[str, float] = {}
        rows, gaps = [], []
        with torch_threads(settings.threads):
            t0 = time.perf_counter()
            hf_model = None
            corpus_kwargs = ({"max_bytes": settings.corpus_bytes}
                             if settings.corpus == "embedded" and settings.corpus_bytes is not None else {})
            if settings.hf_model is not None:
                from normlens.models.loading import load_model

                hf_model = load_model(settings.hf_model, device="cuda" if torch.cuda.is_available() else None)
                splits = corpus_for_model(hf_model, settings.corpus, seed=config.seed, **corpus_kwargs)
            else:
                splits = load_corpus(settings.corpus, seed=config.seed, **corpus_kwargs)
            wall["data and model loading"] = time.perf_counter() - t0
            for seed in seeds:
                t0 = time.perf_counter()
                removal_config = dataclasses.replace(settings.removal, seed=seed)
                if hf_model is not None:
                    ln_model = hf_model
                    removed, result = remove_layernorm(hf_model, splits, removal_config, progress=False)
                    reused, train_seconds = False, math.nan
                else:
                    zoo = train_zoo(ZooSettings(model=settings.model, train=dataclasses.replace(settings.train, seed=seed),
                                                removal=removal_config, norms=("ln",)),
                                    splits, results / "models" / f"seed{seed}", seed=seed, fresh=config.fresh, log=log)
                    ln_model, removed, result = zoo.models["ln"], zoo.models[LN_REMOVED], zoo.removal
                    reused, train_seconds = zoo.reused["ln"], zoo.runs[0].wall_time_s
                removal = result.to_dict()
                write_json(results / "removal" / f"seed{seed}.json", {"seed": seed, **removal})
                rows.append(loss_row(seed, removal, ln_reused=reused, ln_train_seconds=train_seconds,
                                     removal_seconds=result.wall_time_s))
                wall[f"seed {seed}: train and remove"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                n_ctx = min(int(removed.cfg.n_ctx), settings.removal.n_ctx or int(removed.cfg.n_ctx))
                tokens = eval_windows(splits, n_seq=settings.attribution_seqs, n_ctx=n_ctx, seed=seed)
                tokens = tokens.to(next(removed.parameters()).device)
                attribution = {"ln": compare_head_attribution(ln_model, tokens),
                               "lnfree": compare_head_attribution(removed, tokens)}
                save_head_attribution(results / "attribution" / f"seed{seed}.npz", attribution)
                gaps += [gap_row(seed, key, attribution_gap(a.dla, a.ablation)) for key, a in attribution.items()]
                heads = list(attribution["ln"].heads)
                wall[f"seed {seed}: attribution"] = time.perf_counter() - t0
                log(f"  seed {seed}: val loss {rows[-1]['val_loss_before']:.4f} before, "
                    f"{rows[-1]['val_loss_after']:.4f} LN removed, {rows[-1]['val_loss_control']:.4f} LN kept; "
                    f"max |DLA - ablation| {gaps[-2]['max_abs_gap']:.2e} (LN) vs {gaps[-1]['max_abs_gap']:.2e} (LN-free)")
        source = settings.hf_model or "zoo Pre-LN LayerNorm model"
        write_json(results / "removal" / "losses.json", {
            "mode": config.mode, "model": source, "corpus": settings.corpus, "seeds": seeds, "rows": rows,
            "summary": summarize_losses(rows), "level": LEVEL, "agree_relative": AGREE_RELATIVE,
            "paper_small_nats": PAPER_SMALL_NATS, "paper_small_relative": PAPER_SMALL_RELATIVE})
        write_json(results / "attribution" / "gaps.json", {
            "mode": config.mode, "seeds": seeds, "heads": heads, "n_seqs": settings.attribution_seqs,
            "rows": gaps, "exact_relative": EXACT_RELATIVE})
        sections = [SectionRef("ln_removal_losses", "removal"), SectionRef("ln_removal_schedule", "removal"),
                    SectionRef("ln_removal_attribution", "attribution")]
        return StudyRun(sections=sections, config=dataclasses.asdict(settings), wall_seconds=wall,
                        seeds={"seeds": seeds}, device="cuda" if hf_model is not None and torch.cuda.is_available()
                        else "cpu")

    def verdict(self, results: Path) -> str:
        return ln_removal_verdict(results)


def _interval(summary: Mapping[str, Any]) -> tuple[float, float, float, int]:
    return (float(summary["estimate"]), float(summary["low"]), float(summary["high"]), int(summary["n"]))


def ln_removal_verdict(results: Path) -> str:
    """One sentence from the saved numbers: the removal cost against the control, and whether DLA is exact."""
    data = read_json(Path(results) / "removal" / "losses.json")
    rows = data["rows"]
    threshold = float(data.get("agree_relative", AGREE_RELATIVE))
    diverged = [r["seed"] for r in rows if r.get("diverged") or not _finite(r.get("val_loss_after"))]
    summary = summarize_losses(rows, float(data.get("level", LEVEL)))
    cost, _, _, _ = _interval(summary["cost"])
    rel, low, high, n = _interval(summary["relative_cost"])
    claim = (f"the LN-removal paper's claim that removal costs little (GPT-2 small: +{PAPER_SMALL_NATS} nats, "
             f"about {PAPER_SMALL_RELATIVE:.1%} of the loss; threshold {threshold:.0%})")
    if diverged:
        sentence = (f"Removing LayerNorm by fine-tuning diverged on seed(s) {', '.join(map(str, diverged))} of "
                    f"{len(rows)}, so this run disagrees with {claim}")
    elif n < 2 or not (_finite(low) and _finite(high)):
        sentence = (f"Removing LayerNorm by fine-tuning cost {cost:+.3f} nats against the LayerNorm-kept control "
                    f"({rel:+.1%} of its loss) but with {n} finite seed(s) there is no interval, so the result is "
                    f"inconclusive at this scale against {claim}")
    else:
        numbers = (f"Removing LayerNorm by fine-tuning cost {cost:+.3f} nats against the LayerNorm-kept control "
                   f"({rel:+.1%} of its loss, {LEVEL:.0%} interval [{low:+.1%}, {high:+.1%}] over {n} seeds)")
        if high <= threshold:
            sentence = f"{numbers}, within the threshold, so at this scale it agrees with {claim}"
        elif low > threshold:
            sentence = f"{numbers}, above the threshold, so at this scale it disagrees with {claim}"
        else:
            sentence = f"{numbers}, an interval that straddles the threshold, so it is inconclusive at this scale against {claim}"
    gaps_path = Path(results) / "attribution" / "gaps.json"
    if gaps_path.is_file():
        sentence += "; " + _attribution_clause(read_json(gaps_path))
    return sentence + "."


def _attribution_clause(data: Mapping[str, Any]) -> str:
    tolerance = float(data.get("exact_relative", EXACT_RELATIVE))

    def worst(key: str) -> tuple[float, float]:
        picked = [r for r in data["rows"] if r["model"] == key]
        gap = max((r["max_abs_gap"] for r in picked), default=math.nan)
        rel = max((r["relative_gap"] for r in picked), default=math.nan)
        return (gap, rel) if all(_finite(r["relative_gap"]) for r in picked) else (math.nan, math.nan)

    (free_gap, free_rel), (ln_gap, ln_rel) = worst("lnfree"), worst("ln")
    if not (_finite(free_rel) and _finite(ln_rel)):
        return "direct logit attribution could not be compared (non-finite values)"
    free_exact, ln_exact = free_rel <= tolerance, ln_rel <= tolerance
    text = (f"per head, direct logit attribution {'equals' if free_exact else 'does not equal'} the ablated direct "
            f"effect on the LayerNorm-removed model (max |gap| {free_gap:.1e} nats) and "
            f"{'also on' if ln_exact else 'differs from it on'} the LayerNorm model (max |gap| {ln_gap:.2g} nats)")
    if free_exact and not ln_exact:
        return text + ", as the paper says (DLA becomes exact)"
    return text + (", contrary to the paper" if not free_exact else ", so at this scale LayerNorm barely matters to DLA")


# ----------------------------------------------------------------------------------------------- renderers


def _fmt_interval(item: Mapping[str, Any], percent: bool = False) -> dict[str, Any]:
    scale = 100.0 if percent else 1.0
    return {"mean": item["estimate"] * scale, f"{LEVEL:.0%} low": item["low"] * scale,
            f"{LEVEL:.0%} high": item["high"] * scale, "seeds": item["n"]}


def render_losses(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """Validation loss before, after removal and of the control per seed, and the removal cost with its interval."""
    import pandas as pd

    from normlens.report.sections._common import one_axis

    data = read_json(Path(folder) / "losses.json")
    rows, summary = data["rows"], data["summary"]
    threshold = float(data["agree_relative"])
    per_seed = pd.DataFrame([{
        "seed": r["seed"], f"{BEFORE} (before)": r["val_loss_before"], REMOVED: r["val_loss_after"], CONTROL:
        r["val_loss_control"], "removal cost (removed − control)": r["cost"],
        "relative cost (%)": 100 * r["relative_cost"], "change (removed − before)": r["change"],
        "diverged": "yes" if r["diverged"] else "no",
        "LayerNorm model trained": "earlier run (reused)" if r.get("ln_reused") else "this run"} for r in rows])
    names = {"val_loss_before": f"{BEFORE} (before)", "val_loss_after": REMOVED, "val_loss_control": CONTROL,
             "cost": "removal cost (removed − control), nats", "relative_cost": "relative cost (% of control loss)",
             "change": "change (removed − before), nats"}
    across = pd.DataFrame([{"quantity": label, **_fmt_interval(summary[key], key == "relative_cost")}
                           for key, label in names.items()])

    def draw_losses(ax):
        x = np.arange(3)
        for r in rows:
            ax.plot(x, [r["val_loss_before"], r["val_loss_after"], r["val_loss_control"]], marker="o",
                    label=f"seed {r['seed']}")
        ax.set_xticks(x, [BEFORE, REMOVED, CONTROL])
        ax.set_ylabel("validation loss (nats per token)")
        ax.legend(frameon=False)

    def draw_cost(ax):
        costs = [100 * r["relative_cost"] for r in rows]
        ax.scatter(costs, np.zeros(len(costs)), color="0.4", zorder=3, label="one seed")
        item = summary["relative_cost"]
        if _finite(item["low"]) and _finite(item["high"]):
            ax.errorbar([100 * item["estimate"]], [0.4], xerr=[[100 * (item["estimate"] - item["low"])],
                                                               [100 * (item["high"] - item["estimate"])]],
                        fmt="s", color="C0", capsize=4, label=f"mean, {LEVEL:.0%} interval")
        ax.axvline(0, color="0.6", lw=0.8)
        ax.axvline(100 * threshold, color="C3", ls="--", label=f"threshold {threshold:.0%}")
        ax.axvline(100 * data["paper_small_relative"], color="C2", ls=":",
                   label=f"paper, GPT-2 small ({data['paper_small_relative']:.1%})")
        ax.set_yticks([])
        ax.set_ylim(-0.5, 1.0)
        ax.set_xlabel("removal cost: (LayerNorm removed − LayerNorm kept) / LayerNorm kept, %")
        ax.legend(frameon=False, loc="upper left", fontsize=7)

    n = len(rows)
    figures = [
        one_axis(draw_losses, (6.5, 3.6), f"Validation loss of the {BEFORE}, after its LayerNorms are removed by "
                 f"fine-tuning, and of the same model fine-tuned as long with LayerNorm kept; one line per seed ({n}).",
                 alt=f"Line plot with three points per seed: {BEFORE}, {REMOVED}, {CONTROL}; y is validation loss.",
                 name="ln_removal_losses"),
        one_axis(draw_cost, (6.5, 2.4), "Removal cost relative to the control's loss per seed, its mean with a "
                 f"t interval over seeds, the verdict's threshold ({threshold:.0%}, dashed) and the paper's "
                 "GPT-2 small figure (dotted).",
                 alt="Dot plot of the relative removal cost per seed with the mean and interval, a dashed line at "
                     f"{threshold:.0%} and a dotted line at the paper's {data['paper_small_relative']:.1%}.",
                 name="ln_removal_cost")]
    summary_text = (f"{data['mode']} mode, {data['model']} on the {data['corpus']} corpus, {n} seeds. Each seed "
                    "trains a Pre-LN LayerNorm model, replaces every LayerNorm's per-token std by a frozen average "
                    "one stage at a time while fine-tuning, and fine-tunes a copy with LayerNorm kept for the same "
                    "steps on the same batches. The removal cost is the LayerNorm-removed model's validation loss "
                    "minus the control's (paired by seed).")
    notes = [f"Verdict rule: agrees when the upper bound of the relative cost's {LEVEL:.0%} t interval is at "
             f"most {threshold:.0%} of the control's loss, disagrees when its lower bound is above it, inconclusive "
             f"otherwise. The paper reports +{data['paper_small_nats']} nats for GPT-2 small on OpenWebText "
             f"(about {data['paper_small_relative']:.1%}) and +0.014 to +0.025 for medium to XL.",
             "Loss is next-token cross-entropy; byte-level losses of a small model are not comparable in size with "
             "GPT-2's, hence the relative threshold."]
    return ReportSection(title=options.get("title", "Validation loss before and after removing LayerNorm"),
                         summary=summary_text, figures=figures,
                         tables=[Table("Per seed: validation loss (nats per token)", per_seed),
                                 Table("Across seeds: mean and t interval", across)], notes=notes)


def render_schedule(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """Training loss of the removal and of the control along the removal schedule, with the stages marked."""
    import pandas as pd

    from normlens.report.sections._common import panel_grid
    from normlens.report.section import Figure

    data = read_json(Path(folder) / "losses.json")
    runs = [read_json(Path(folder) / f"seed{seed}.json") for seed in data["seeds"]]
    fig, (top, bottom) = panel_grid(2, size=(9.0, 2.9), columns=1)
    for i, run in enumerate(runs):
        steps = np.asarray(run["steps"])
        top.plot(steps, run["train_loss"], color=f"C{i}", lw=1, label=f"{REMOVED}, seed {run['seed']}")
        control = np.asarray(run["control_train_loss"][:len(steps)])
        top.plot(steps[:len(control)], control, color=f"C{i}", lw=1, ls="--", alpha=0.7,
                 label=f"{CONTROL}, seed {run['seed']}")
        if len(control):
            bottom.plot(steps[:len(control)], np.asarray(run["train_loss"][:len(control)]) - control, color=f"C{i}",
                        lw=1, label=f"seed {run['seed']}")
    schedule = runs[0]["schedule"] if runs else []
    for ax in (top, bottom):
        for step, _ in schedule:
            ax.axvline(step, color="0.8", lw=0.6, zorder=0)
        ax.set_xlabel("fine-tuning step")
    for step, stage in schedule:
        bottom.annotate(stage, (step, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                        va="top", ha="right", color="0.35")
    bottom.axhline(0, color="0.5", lw=0.8)
    top.set_ylabel("training loss")
    bottom.set_ylabel("removed − kept (same batch)")
    top.legend(frameon=False, fontsize=6, ncol=2)
    bottom.legend(frameon=False, fontsize=6, loc="lower right")
    figure = Figure.from_matplotlib(
        fig, "Training loss along the removal schedule (solid: LayerNorm being removed; dashed: the LayerNorm-kept "
        "control on the same batches) and their per-step difference; grey lines mark where each stage is frozen.",
        alt="Two line plots against fine-tuning step: training losses of the removal and the control per seed, "
            "and their difference, with vertical lines at the removal stages " + ", ".join(s for _, s in schedule) + ".",
        name="ln_removal_schedule")
    table = pd.DataFrame([{"step": step, "stage": stage} for step, stage in schedule])
    return ReportSection(title=options.get("title", "Loss along the removal schedule"),
                         summary="The library records the training loss of every fine-tuning step (the same batches "
                                 "for the removal and the control) and the step at which each stage was frozen; "
                                 "validation loss is measured only before and after.",
                         figures=[figure], tables=[Table(f"Stages in the order frozen (seed {data['seeds'][0]})", table)])


def render_attribution(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    """Per head: DLA against the ablated direct effect on the LayerNorm model and the LayerNorm-removed one."""
    import pandas as pd

    from analyses.common.attribution import load_head_attribution
    from normlens.report.section import Figure
    from normlens.report.sections._common import panel_grid

    data = read_json(Path(folder) / "gaps.json")
    fig, axes = panel_grid(len(ATTRIBUTION_MODELS), size=(3.8, 3.6))
    loaded = {seed: load_head_attribution(Path(folder) / f"seed{seed}.npz") for seed in data["seeds"]}
    for ax, (key, label) in zip(axes, ATTRIBUTION_MODELS.items()):
        low, high = math.inf, -math.inf
        for i, seed in enumerate(data["seeds"]):
            dla, ablation = loaded[seed][key]
            stride = max(1, dla.shape[1] // 400)  # at most ~400 tokens per head and seed
            x, y = dla[:, ::stride].ravel(), ablation[:, ::stride].ravel()
            finite = np.isfinite(x) & np.isfinite(y)
            ax.scatter(x[finite], y[finite], s=3, alpha=0.35, color=f"C{i}", label=f"seed {seed}", rasterized=True)
            if finite.any():
                low, high = min(low, x[finite].min(), y[finite].min()), max(high, x[finite].max(), y[finite].max())
        if math.isfinite(low):
            ax.plot([low, high], [low, high], color="0.2", lw=0.8, ls="--", label="identity")
        ax.set_title(label)
        ax.set_xlabel("direct logit attribution (nats)")
        ax.set_ylabel("ablated direct effect (nats)")
        ax.legend(frameon=False, fontsize=6, markerscale=3)
    figure = Figure.from_matplotlib(
        fig, "Every head's direct logit attribution against its direct effect measured by ablation, one point per "
        "head and predicted token (colour: seed; dashed: identity). Without LayerNorm the points lie on the identity.",
        alt=f"Two scatter plots, {BEFORE} and {REMOVED}: x is the direct logit attribution of a head on one token, "
            "y its ablated direct effect, with an identity line.", name="ln_removal_attribution")
    table = pd.DataFrame([{"seed": r["seed"], "model": ATTRIBUTION_MODELS.get(r["model"], r["model"]),
                           "max |DLA − ablation| (nats)": r["max_abs_gap"],
                           "max |gap| of per-head means": r["max_abs_gap_head_mean"],
                           "largest |ablated effect|": r["max_abs_effect"], "relative gap": r["relative_gap"]}
                          for r in data["rows"]])
    notes = [f"{len(data['heads'])} heads, {data['n_seqs']} held-out sequences per seed. DLA linearizes the final "
             "norm at its cached scale; the ablation removes the head's output from the final residual and reruns "
             "the final norm and unembedding. The verdict counts DLA exact when the relative gap is at most "
             f"{data['exact_relative']:.0e}."]
    return ReportSection(title=options.get("title", "Direct logit attribution against the ablated direct effect"),
                         summary="Baroni, Heimersheim et al. check that DLA equals the direct effect of ablating a head "
                                 "once LayerNorm is gone; the final LayerNorm's per-token scale makes them differ.",
                         figures=[figure], tables=[Table("max |DLA − ablation| per seed and model", table)], notes=notes)


STUDY = LNRemovalStudy()

__all__ = ["AGREE_RELATIVE", "EXACT_RELATIVE", "LNRemovalModeSettings", "LNRemovalStudy", "STUDY", "default_modes",
           "gap_row", "ln_removal_verdict", "loss_row", "mode_settings", "render_attribution", "render_losses",
           "render_schedule", "summarize_losses"]
