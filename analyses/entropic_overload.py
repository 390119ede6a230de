"""entropic_overload: does GELU overload attention heads in norm-free decoders, and does ReLU avoid it?

"ReLU's Revival: On the Entropic Overload in Normalization-Free LLMs" (Jha & Reagen 2024) trains
12-layer GPT-2 models (context 128) with LayerNorm replaced by the identity and finds that with GELU
many early-layer heads sit at near-maximum attention entropy ("entropic overload": a head's mean
entropy in [3/4 · log T, log T], so it attends almost uniformly and stops selecting), while ReLU
avoids it and reaches an 8.2 % lower perplexity.

This study trains the same decoder with no normalization and with Pre-LN, each with GELU and ReLU,
from the same initial weights and batches per seed, records the per-head entropy along training
(:func:`normlens.train_probes.attention_entropy_probe`), measures the final heads on held-out
windows (:class:`normlens.probes.AttentionEntropyProbe`), and compares overload and collapse
fractions and validation perplexity over seeds, paired by seed.

    normlens analyze entropic_overload [--quick | --full] [--out reports/entropic_overload.html]
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from analyses.common.names import LABELS
from analyses.common.overload_metrics import verdict_word
from normlens.io import as_json_value, read_json, write_json
from normlens.report.manifest import SectionRef
from normlens.study import BaseStudy, StudyConfig, StudyError, StudyRun

ACTIVATION_NAMES = {"gelu": "GELU", "relu": "ReLU"}
NORMS = ("none", "ln")
PAPER_PPL_REDUCTION = 0.082  # ReLU's perplexity is 8.2 % lower than GELU's without LayerNorm
COMPARISONS = "comparisons.json"
DATA = "overload"
OPTIONS = ("steps", "n_seeds", "models", "data")


def model_key(norm: str, act_fn: str) -> str:
    """("none", "gelu") -> "free-gelu"; ("ln", "relu") -> "ln-relu"."""
    return f"{'free' if norm == 'none' else norm}-{act_fn}"


def model_label(norm: str, act_fn: str) -> str:
    """The name a reader meets: "no normalization, GELU", "LayerNorm (Pre-LN), ReLU"."""
    return f"{LABELS[norm]}, {ACTIVATION_NAMES[act_fn]}"


@dataclasses.dataclass(frozen=True)
class OverloadSettings:
    """Everything a mode fixes (plain values, so the settings are JSON and the module imports fast).

    The decoder (``n_layers``, ``d_model``, ``n_heads``, ``n_ctx``) is trained for ``steps`` with AdamW
    (``lr``, linear warm-up, cosine decay) once per model of ``models`` ((norm, act_fn) pairs) and
    seed (``n_seeds`` seeds from the study's seed); validation loss on ``val_seqs`` fixed windows.
    The entropy probe reads the first ``probe_seqs`` of those windows every ``probe_every`` steps;
    the final heads are measured on ``entropy_seqs`` held-out windows. ``collapse_threshold``: mean
    entropy (nats) below which a head has collapsed. ``data``: the corpus (``normlens.data.load_corpus``).
    """

    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    n_ctx: int = 128
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 30
    eval_every: int = 50
    val_seqs: int = 64
    models: tuple[tuple[str, str], ...] = (("none", "gelu"), ("none", "relu"), ("ln", "gelu"))
    n_seeds: int = 3
    probe_every: int = 50
    probe_seqs: int = 8
    entropy_seqs: int = 32
    collapse_threshold: float = 0.1
    data: str = "embedded"

    def __post_init__(self) -> None:
        models = tuple(tuple(m) for m in self.models)
        for norm, act in models:
            if norm not in NORMS or act not in ACTIVATION_NAMES:
                raise StudyError(f"models are (norm, act_fn) pairs with norm in {NORMS} and act_fn in "
                                 f"{tuple(ACTIVATION_NAMES)}, got {(norm, act)!r}")
        if ("none", "gelu") not in models or ("none", "relu") not in models:
            raise StudyError("models must include ('none', 'gelu') and ('none', 'relu'): the comparison the "
                             f"study tests; got {list(models)}")
        if len(set(models)) != len(models):
            raise StudyError(f"models must be distinct, got {list(models)}")
        object.__setattr__(self, "models", models)
        for name in ("n_layers", "d_model", "n_heads", "steps", "batch_size", "eval_every", "val_seqs",
                     "n_seeds", "probe_every", "probe_seqs", "entropy_seqs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StudyError(f"{name} must be a positive integer, got {value!r}")
        if self.n_ctx < 2:
            raise StudyError(f"n_ctx must be at least 2 (the overload bar is a share of log T), got {self.n_ctx}")
        if self.n_seeds < 2:
            raise StudyError(f"n_seeds must be at least 2 (comparisons need paired seeds), got {self.n_seeds}")
        if self.probe_seqs > self.val_seqs:
            raise StudyError(f"probe_seqs={self.probe_seqs} exceeds val_seqs={self.val_seqs}; the training "
                             "probe reads the first validation windows")

    @property
    def keys(self) -> list[str]:
        return [model_key(n, a) for n, a in self.models]

    def label(self, key: str) -> str:
        return {model_key(n, a): model_label(n, a) for n, a in self.models}[key]



def default_modes() -> dict[str, OverloadSettings]:
    """quick: 4 layers, width 64, context 128 (the paper's), 300 steps, 3 seeds, norm-free GELU/ReLU and
    Pre-LN GELU (a few minutes on 2 CPU cores); full: GPT-2 small's shape (12 layers, width 768, 12
    heads, context 128 as in the paper), 5000 steps of 64 windows, all four models, meant for a GPU."""
    quick = OverloadSettings()
    full = OverloadSettings(n_layers=12, d_model=768, n_heads=12, n_ctx=128, steps=5000, batch_size=64, lr=6e-4,
                            warmup_steps=200, eval_every=250, val_seqs=256, probe_every=250, probe_seqs=16,
                            entropy_seqs=128, models=(("none", "gelu"), ("none", "relu"), ("ln", "gelu"),
                                                      ("ln", "relu")))
    return {"quick": quick, "full": full}


def mode_settings(config: StudyConfig, modes: Mapping[str, OverloadSettings] | None = None) -> OverloadSettings:
    """The settings of ``config.mode`` with the options applied (``steps``, ``n_seeds``, ``models``, ``data``)."""
    settings = (modes or default_modes())[config.mode]
    unknown = set(config.options) - set(OPTIONS)
    if unknown:
        raise StudyError(f"the entropic_overload study has no option {', '.join(sorted(unknown))}; "
                         f"it takes {', '.join(OPTIONS)}")
    changes = dict(config.options)
    if "models" in changes:
        changes["models"] = tuple(tuple(m) for m in changes["models"])
    return dataclasses.replace(settings, **changes)


def comparison_pairs(keys: list[str]) -> list[tuple[str, str]]:
    """The paired comparisons: free GELU - free ReLU (the paper's), then free - Pre-LN per activation."""
    pairs = [("free-gelu", "free-relu")]
    pairs += [(f"free-{act}", f"ln-{act}") for act in ACTIVATION_NAMES if f"ln-{act}" in keys]
    return pairs


# -- running --------------------------------------------------------------------------------------------

def _run_identity(model_config, train_config, settings: OverloadSettings) -> dict[str, Any]:
    return as_json_value({"model": model_config.to_dict(), "train": train_config.to_dict(),
                          "probe_every": settings.probe_every, "probe_seqs": settings.probe_seqs,
                          "collapse_threshold": settings.collapse_threshold, "data": settings.data})


def _train_run(norm: str, act_fn: str, seed: int, settings: OverloadSettings, splits, folder: Path, fresh: bool):
    """Train one (model, seed) in ``folder`` or reuse the finished run there; (model, result, reused)."""
    from normlens.models import build_model
    from normlens.models.config import ZooConfig
    from normlens.train import TrainConfig, train
    from normlens.train_probes import attention_entropy_probe

    model_config = ZooConfig(norm=norm, act_fn=act_fn, n_layers=settings.n_layers, d_model=settings.d_model,
                             n_heads=settings.n_heads, n_ctx=settings.n_ctx, d_vocab=max(256, splits.vocab_size),
                             seed=seed)
    train_config = TrainConfig(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                               warmup_steps=min(settings.warmup_steps, settings.steps - 1),
                               eval_every=settings.eval_every, eval_seqs=settings.val_seqs,
                               checkpoint_every=max(settings.steps, 1), seed=seed)
    identity = _run_identity(model_config, train_config, settings)
    marker = folder / "study_run.json"
    try:
        same = marker.is_file() and read_json(marker) == identity
    except (ValueError, UnicodeDecodeError):
        same = False
    if folder.exists() and (fresh or not same):
        shutil.rmtree(folder)  # another run's (or a damaged) folder: start over
    reused = same and not fresh and (folder / "train_result.json").is_file()
    write_json(marker, identity)
    model = build_model(model_config)
    result = train(model, splits, train_config, name=model_key(norm, act_fn), checkpoint_dir=folder,
                   progress=False, probes=[attention_entropy_probe(collapse_threshold=settings.collapse_threshold)],
                   every=settings.probe_every, probe_seqs=settings.probe_seqs)
    return model, result, reused


def measure_entropy(model, tokens, collapse_threshold: float):
    """The final heads of ``model`` on held-out ``tokens`` (n_seq, n_ctx): an AttentionEntropyResult
    (the paper's per-head mean entropy / log T and the variants), the model left as found."""
    import torch

    from normlens.hygiene import preserved_state
    from normlens.probes import AttentionEntropyProbe, attach

    probe = AttentionEntropyProbe(collapse_threshold=collapse_threshold)
    with preserved_state(model), torch.no_grad(), attach(model, probe):
        for start in range(0, tokens.shape[0], 16):
            model(tokens[start:start + 16])
    return probe.result()


def _finite_weights(model) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class EntropicOverloadStudy(BaseStudy):
    name = "entropic_overload"
    description = ("ReLU's Revival: attention-entropy overload of norm-free GELU vs ReLU decoders "
                   "(and Pre-LN), over seeds")
    title = "Entropic overload in norm-free decoders: GELU vs ReLU"

    def __init__(self, modes: Mapping[str, OverloadSettings] | None = None):
        self.modes = dict(modes) if modes is not None else None

    @property
    def renderers(self) -> Mapping[str, Any]:  # type: ignore[override]
        from analyses.common import overload_sections

        return overload_sections.RENDERERS

    def run(self, config: StudyConfig, results: Path, log: Callable[[str], None]) -> StudyRun:
        import pandas as pd

        from analyses.common import overload_metrics as M
        from analyses.common.threads import torch_threads
        from normlens.data import load_corpus
        from normlens.data.corpus import eval_windows
        from normlens.io import save_frame
        from normlens.report.sections.training import save_training

        settings = mode_settings(config, self.modes)
        seeds = [config.seed + i for i in range(settings.n_seeds)]
        wall: dict[str, float] = {}
        t0 = time.perf_counter()
        splits = load_corpus(settings.data, seed=config.seed)
        tokens = eval_windows(splits, n_seq=settings.entropy_seqs, n_ctx=settings.n_ctx, seed=config.seed + 7)
        out = results / DATA
        runs, heads, buckets, over_heads, over_summary, first_runs, training_rows = [], [], [], [], [], [], []
        with torch_threads(1 if config.mode == "quick" else None):
            for norm, act in settings.models:
                key = model_key(norm, act)
                for seed in seeds:
                    t1 = time.perf_counter()
                    model, result, reused = _train_run(norm, act, seed, settings, splits,
                                                       results / "runs" / key / f"seed-{seed}", config.fresh)
                    diverged = result.diverged or not _finite_weights(model)
                    entropy = None if diverged else measure_entropy(model, tokens, settings.collapse_threshold)
                    if entropy is not None:
                        entropy.save(out / "entropy" / key / f"seed-{seed}")
                        heads.append(M.head_table(entropy, model=key, seed=seed))
                        buckets.append(M.bucket_table(entropy, model=key, seed=seed))
                    over_heads.append(M.training_heads(result, model=key, seed=seed, n_ctx=settings.n_ctx))
                    over_summary.append(M.training_summaries(result, model=key, seed=seed))
                    runs.append({"model": key, "label": settings.label(key), "norm": norm, "act_fn": act,
                                 "seed": seed, **M.run_metrics(entropy, settings.n_layers, result.final_val_loss),
                                 "diverged": bool(diverged), "diverged_step": result.diverged_step,
                                 "train_seconds": result.wall_time_s, "reused": reused,
                                 "entropy_dir": f"entropy/{key}/seed-{seed}" if entropy is not None else None})
                    if seed == seeds[0]:
                        first_runs.append(dataclasses.replace(result, probes={}))
                        training_rows.append({"name": key, "label": settings.label(key),
                                              "final_val_loss": result.final_val_loss, "n_params": result.n_params,
                                              "diverged": result.diverged, "diverged_step": result.diverged_step,
                                              "train_seconds": result.wall_time_s, "reused": reused})
                    wall[f"{key} seed {seed}"] = time.perf_counter() - t1
                    row = runs[-1]
                    log(f"  {settings.label(key):<32} seed {seed}: val loss {row['val_loss']:.4f}, overloaded "
                        f"{row['overload_fraction']:.2f}, collapsed {row['collapse_fraction']:.2f}"
                        + (" (diverged)" if diverged else "")
                        + (f"  [reused; trained in {result.wall_time_s:.1f} s]" if reused
                           else f"  [{wall[f'{key} seed {seed}']:.1f} s]"))
        run_frame = pd.DataFrame(runs)
        save_frame(run_frame, out / "runs.parquet")
        save_frame(pd.concat(heads, ignore_index=True) if heads else pd.DataFrame(), out / "heads.parquet")
        save_frame(pd.concat(buckets, ignore_index=True) if buckets else pd.DataFrame(), out / "buckets.parquet")
        save_frame(pd.concat(over_heads, ignore_index=True), out / "training_heads.parquet")
        save_frame(pd.concat(over_summary, ignore_index=True), out / "training_summary.parquet")
        intervals = M.model_intervals(run_frame, settings.keys, seed=config.seed)
        paired = M.paired_comparisons(run_frame, comparison_pairs(settings.keys), seed=config.seed)
        save_frame(intervals, out / "model_intervals.parquet")
        save_frame(paired, out / "paired.parquet")
        write_json(out / COMPARISONS, {
            "mode": config.mode, "seeds": seeds, "n_ctx": settings.n_ctx, "n_layers": settings.n_layers,
            "n_heads": settings.n_heads, "d_model": settings.d_model, "steps": settings.steps,
            "overload_threshold": 0.75, "collapse_threshold": settings.collapse_threshold,
            "early_layers": M.early_layers(settings.n_layers), "uniform_ratio": M.uniform_head_ratio(settings.n_ctx),
            "models": [{"key": k, "label": settings.label(k)} for k in settings.keys],
            "entropy_seqs": settings.entropy_seqs, "probe_seqs": settings.probe_seqs, "data": splits.name,
            "interval": {"level": 0.95, "method": M.INTERVAL_METHOD, "over": "seeds"},
            "intervals": intervals.to_dict(orient="records"), "paired": paired.to_dict(orient="records")})
        save_training(results / "training", first_runs, training_rows, summary=(
            f"Seed {seeds[0]} of each model (the others are in the tables above). Same architecture, data, initial "
            "weights and batches per seed; only the normalization and the MLP activation differ. Loss is next-token "
            f"cross-entropy on byte tokens of the corpus ({splits.name})."))
        wall["total (train or load, measure)"] = time.perf_counter() - t0
        sections = [SectionRef("overload_summary", DATA), SectionRef("overload_heads", DATA),
                    SectionRef("overload_training", DATA), SectionRef("overload_positions", DATA),
                    SectionRef("training", "training", {"title": f"Training (seed {seeds[0]})"})]
        return StudyRun(sections=sections, config=dataclasses.asdict(settings), wall_seconds=wall,
                        seeds={"runs": seeds, "entropy_windows": config.seed + 7})

    def verdict(self, results: Path) -> str:
        return overload_verdict(results)


# -- the verdict ----------------------------------------------------------------------------------------


def _interval_text(row: Mapping[str, Any], scale: float = 100.0, unit: str = " %", signed: bool = False,
                   digits: int = 0) -> str:
    fmt = f"+.{max(digits, 1)}f" if signed else f".{digits}f"
    est = f"{scale * row['estimate']:{fmt}}{unit}" if math.isfinite(row["estimate"]) else "n/a"
    if not (math.isfinite(row["low"]) and math.isfinite(row["high"])):
        return f"{est} (no interval)"
    return f"{est} [{scale * row['low']:{fmt}}, {scale * row['high']:{fmt}}]"


def overload_verdict(results: Path) -> str:
    """One sentence from ``overload/comparisons.json``: norm-free GELU vs ReLU overload fractions and
    their paired difference (agrees / disagrees / inconclusive with ReLU's Revival), the perplexity
    comparison against the paper's 8.2 %, and the Pre-LN GELU reference."""
    path = Path(results) / DATA / COMPARISONS
    if not path.is_file():
        return "No verdict: the study's comparisons are missing (run it again)."
    data = read_json(path)
    per_model = {(r["model"], r["metric"]): r for r in data["intervals"]}
    paired = {(r["a"], r["b"], r["metric"]): r for r in data["paired"]}
    n_seeds = len(data["seeds"])
    gelu, relu = per_model.get(("free-gelu", "overload_fraction")), per_model.get(("free-relu", "overload_fraction"))
    diff = paired.get(("free-gelu", "free-relu", "overload_fraction"))
    ppl = paired.get(("free-gelu", "free-relu", "perplexity_reduction"))
    if not (gelu and relu and diff and ppl):
        return "No verdict: the norm-free GELU or ReLU runs are missing."
    if diff["n"] < 2:
        return (f"Inconclusive: fewer than two seeds of norm-free GELU and ReLU ended with finite weights "
                f"({diff['n']} of {n_seeds}), so there is no paired interval.")
    word = verdict_word(diff)
    overload = (f"Norm-free GELU has {_interval_text(gelu)} of heads overloaded (mean entropy ≥ ¾·log T, "
                f"T = {data['n_ctx']}) vs {_interval_text(relu)} for norm-free ReLU, a paired difference of "
                f"{_interval_text(diff, unit=' points', signed=True)} ({diff['n']} seeds, 95 % intervals): "
                + {"agrees": "this agrees with ReLU's Revival (GELU overloads more heads)",
                   "disagrees": "this disagrees with ReLU's Revival, which finds GELU overloading more heads",
                   "is inconclusive": "inconclusive at this scale on ReLU's Revival's claim that GELU overloads "
                                      "more heads"}[word])
    if data["uniform_ratio"] < data["overload_threshold"]:
        overload += (f" (at T = {data['n_ctx']} even a uniform head scores only {data['uniform_ratio']:.2f} of "
                     "log T, below the ¾ bar, so no head can be overloaded)")
    ppl_word = verdict_word(ppl)
    lower = ppl["estimate"] >= 0 or not math.isfinite(ppl["estimate"])
    shown = ppl if lower else {**ppl, "estimate": -ppl["estimate"], "low": -ppl["high"], "high": -ppl["low"]}
    loss = (f"norm-free ReLU's perplexity is {_interval_text(shown, signed=False, digits=1)} "
            f"{'lower' if lower else 'higher'} than GELU's (paper: {100 * PAPER_PPL_REDUCTION:.1f} % lower): "
            + {"agrees": "agrees in direction", "disagrees": "disagrees",
               "is inconclusive": "inconclusive at this scale"}[ppl_word])
    sentence = f"{overload}; {loss}"
    ln = per_model.get(("ln-gelu", "overload_fraction"))
    if ln is not None:
        sentence += f"; Pre-LN GELU has {_interval_text(ln)} overloaded"
        free_ln = paired.get(("free-gelu", "ln-gelu", "overload_fraction"))
        if free_ln is not None and free_ln["n"] >= 2:
            sentence += (f" (norm-free − Pre-LN GELU: {_interval_text(free_ln, unit=' points', signed=True)}, "
                         f"{free_ln['n']} paired seeds)")
    return sentence + f" ({data['mode']} mode)."


STUDY = EntropicOverloadStudy()

__all__ = ["EntropicOverloadStudy", "OverloadSettings", "STUDY", "comparison_pairs", "default_modes",
           "measure_entropy", "mode_settings", "model_key", "model_label", "overload_verdict"]
