"""curse_of_depth: Pre-LN, LayerNorm Scaling, Mix-LN and Post-LN decoders compared layer by layer.

The claims it checks at small scale:

* "The Curse of Depth in Large Language Models" (Sun et al. 2025): under Pre-LN the residual-stream
  variance grows with depth, so deep layers come close to the identity (small angular distance between
  a layer's input and output, almost no loss change when a deep layer is skipped); LayerNorm Scaling,
  the norm's output multiplied by 1/sqrt(layer index), curbs the growth and makes deep layers count.
* "Mix-LN" (Li et al. 2024): Pre-LN gives deep layers small gradients, Post-LN early layers;
  Mix-LN (Post-LN in the first quarter of the layers, Pre-LN after) spreads gradient norms more evenly.

Every placement is trained from the same initial weights on the same batches for each seed
(:mod:`normlens.sweep`), so placements are compared seed by seed (paired t intervals); the
per-layer measurements on held-out sequences also get bootstrap intervals over sequences.

    normlens analyze curse_of_depth [--quick | --full] [--out reports/curse_of_depth.html]
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from normlens.io import as_json_value, read_json, write_json
from normlens.report.manifest import SectionRef
from normlens.study import BaseStudy, StudyConfig, StudyError, StudyRun

if TYPE_CHECKING:  # TransformerLens takes seconds to import: only when the study runs
    from normlens.models.config import ZooConfig
    from normlens.train import TrainConfig

PLACEMENTS = ("pre", "scaled", "mix", "post")
SUMMARY = "summary.json"
DATA_DIR = "depth"
OPTIONS = ("steps", "n_seeds", "data")
PROBE_SEQS = 16  # evaluation windows the training probes read (normlens.train's probe_seqs default)


def placement_labels(n_layers: int) -> dict[str, str]:
    """The placements named in words (Mix-LN's Post-LN layers as ZooConfig.block_placement builds them)."""
    n_post = max(1, n_layers // 4)
    post = "layer 1" if n_post == 1 else f"layers 1–{n_post}"
    return {"pre": "Pre-LN", "scaled": "LayerNorm Scaling (Pre-LN, norm output × 1/√ℓ)",
            "mix": f"Mix-LN (Post-LN in {post}, Pre-LN after)", "post": "Post-LN"}


def short_placement_labels() -> dict[str, str]:
    return {"pre": "Pre-LN", "scaled": "LayerNorm Scaling", "mix": "Mix-LN", "post": "Post-LN"}


@dataclasses.dataclass(frozen=True)
class DepthSettings:
    """Everything a mode fixes.

    Args:
        model: the architecture (every placement shares it; ``placement`` is replaced per run).
        train: optimization; ``seed`` is replaced by each run's seed.
        n_seeds: seeds ``seed, seed+1, ...``; each trains every placement from the same initial weights.
        n_measure_seqs: held-out sequences measured (windows of the validation split, drawn as the
            evaluation set is, with ``train.eval_seed``).
        probe_every: steps between the training probes (gradient norm per layer, residual variance).
        ineffective_nats: a layer whose skip changes the loss by less than this is "ineffective".
        data: the corpus (``normlens.data.load_corpus`` source; "hf:NAME" for a ``datasets`` corpus).
        threads: torch threads while the study runs (None: leave them); tiny models run best on one.
        level: confidence level of every interval.
        n_resamples: bootstrap resamples of the intervals over sequences.
    """

    model: ZooConfig
    train: TrainConfig
    n_seeds: int = 3
    n_measure_seqs: int = 64
    probe_every: int = 25
    ineffective_nats: float = 0.01
    data: str = "embedded"
    threads: Optional[int] = 1
    level: float = 0.95
    n_resamples: int = 2000
    placements: tuple[str, ...] = PLACEMENTS

    def __post_init__(self) -> None:
        if self.train.eval_seqs < PROBE_SEQS:
            raise StudyError(f"train.eval_seqs must be at least {PROBE_SEQS} (the training probes read that many "
                             f"evaluation windows), got {self.train.eval_seqs}")
        for name in ("n_seeds", "n_measure_seqs", "probe_every", "n_resamples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StudyError(f"{name} must be a positive integer, got {value!r}")
        unknown = set(self.placements) - set(PLACEMENTS)
        if unknown or not self.placements:
            raise StudyError(f"placements must be among {', '.join(PLACEMENTS)}, got {list(self.placements)}")


def default_modes() -> dict[str, DepthSettings]:
    """quick: 8 layers, width 64, context 32, 250 steps, 3 seeds (about 3 CPU-minutes);
    full: 12 layers, width 256, context 512, 2000 steps, 3 seeds, meant for a GPU."""
    from normlens.models.config import ZooConfig
    from normlens.train import TrainConfig

    quick = DepthSettings(model=ZooConfig(n_layers=8, d_model=64, n_heads=4, n_ctx=32),
                          train=TrainConfig(steps=250, batch_size=8, eval_every=50, eval_seqs=64))
    full = DepthSettings(model=ZooConfig(n_layers=12, d_model=256, n_heads=8, n_ctx=512),
                         train=TrainConfig(steps=2000, batch_size=16, lr=1e-3, warmup_steps=200, eval_every=100,
                                           eval_seqs=64),
                         probe_every=100, threads=None)
    return {"quick": quick, "full": full}


def mode_settings(config: StudyConfig, modes: Mapping[str, DepthSettings] | None = None) -> DepthSettings:
    """The settings of ``config.mode`` with the options applied: ``steps`` (training steps per run),
    ``n_seeds``, ``data`` (a corpus source such as "hf:NAME")."""
    settings = (modes or default_modes())[config.mode]
    unknown = set(config.options) - set(OPTIONS)
    if unknown:
        raise StudyError(f"the curse_of_depth study has no option {', '.join(sorted(unknown))}; "
                         f"it takes {', '.join(OPTIONS)}")
    options = dict(config.options)
    for name in ("steps", "n_seeds"):
        value = options.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise StudyError(f"option {name} must be a positive integer, got {value!r}")
    if not isinstance(options.get("data", ""), str):
        raise StudyError(f"option data must be a corpus source (\"embedded\", a text file, \"hf:NAME\"), "
                         f"got {options['data']!r}")
    steps = options.get("steps", settings.train.steps)
    train = settings.train.replace(steps=steps, warmup_steps=min(settings.train.warmup_steps, steps - 1))
    return dataclasses.replace(settings, train=train, n_seeds=options.get("n_seeds", settings.n_seeds),
                               data=options.get("data", settings.data))


# -- judging a comparison ------------------------------------------------------------------------

def judge(low: float, high: float, n: int, direction: str | None) -> str:
    """"agrees" when the whole interval lies on the claimed side of 0 (``direction`` "lower" or
    "higher"), "disagrees" when it lies on the other side, else "inconclusive" (also with n < 2);
    "no claim" when ``direction`` is None (a difference reported for context)."""
    if direction is None:
        return "no claim"
    if direction not in ("lower", "higher"):
        raise ValueError(f"direction must be 'lower' or 'higher', got {direction!r}")
    if n < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    sign = -1.0 if direction == "lower" else 1.0
    if sign * low > 0 and sign * high > 0:
        return "agrees"
    if sign * low < 0 and sign * high < 0:
        return "disagrees"
    return "inconclusive"


def judge_comparison(comparison: Mapping[str, Any]) -> str:
    """The judgement of a saved comparison: over seeds, and when it has one, also over sequences
    (both must agree, or both disagree; otherwise inconclusive)."""
    seeds = judge(comparison["low"], comparison["high"], comparison["n"], comparison["direction"])
    sequences = comparison.get("sequences")
    if not sequences:
        return seeds
    other = judge(sequences["low"], sequences["high"], sequences["n"], comparison["direction"])
    return seeds if seeds == other else "inconclusive"


# -- the study -----------------------------------------------------------------------------------

class CurseOfDepthStudy(BaseStudy):
    name = "curse_of_depth"
    description = ("Pre-LN vs LayerNorm Scaling vs Mix-LN vs Post-LN at depth: residual variance, layer "
                   "effectiveness, gradient norms (Curse of Depth; Mix-LN)")
    title = "The curse of depth: Pre-LN, LayerNorm Scaling, Mix-LN and Post-LN layer by layer"

    def __init__(self, modes: Mapping[str, DepthSettings] | None = None):
        self.modes = dict(modes) if modes is not None else None  # None: default_modes(), built when run

    renderers: Mapping[str, Any] = {}  # set below: the section renderers, imported when first drawn

    def run(self, config: StudyConfig, results: Path, log: Callable[[str], None]) -> StudyRun:
        from analyses.common.threads import torch_threads

        settings = mode_settings(config, self.modes)
        seeds = tuple(config.seed + i for i in range(settings.n_seeds))
        wall: dict[str, float] = {}
        with torch_threads(settings.threads):
            t0 = time.perf_counter()
            sweep = train_placements(settings, seeds, results / "models", split_seed=config.seed,
                                     fresh=config.fresh, log=log)
            wall["training (this run: train or load)"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            records = measure_runs(settings, sweep, results / "models", results / DATA_DIR / "runs",
                                   split_seed=config.seed, log=log)
            wall["measurements"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = summarize(records, settings, seeds, seed=config.seed)
        write_json(results / DATA_DIR / SUMMARY, summary)
        wall["intervals"] = time.perf_counter() - t0
        sections = [SectionRef(f"depth_{part}", DATA_DIR) for part in SECTIONS]
        return StudyRun(sections=sections, config=as_json_value(dataclasses.asdict(settings)),
                        seeds={"runs": list(seeds), "split": config.seed, "bootstrap": config.seed},
                        wall_seconds=wall)

    def verdict(self, results: Path) -> str:
        return depth_verdict(results)


def _sweep_spec(settings: DepthSettings, split_seed: int) -> dict[str, Any]:
    return as_json_value({"model": settings.model.to_dict(), "train": settings.train.to_dict(),
                          "probe_every": settings.probe_every, "data": settings.data, "split_seed": split_seed})


def train_placements(settings: DepthSettings, seeds: Sequence[int], folder: Path, *, split_seed: int,
                     fresh: bool, log: Callable[[str], None]):
    """Train every placement x seed under ``folder`` (:func:`normlens.sweep.run_sweep`), reusing the
    finished runs of an earlier call with the same settings; returns the SweepResult."""
    from normlens.sweep import SweepConfig, run_sweep
    from normlens.train_probes import GradientNormProbe, residual_variance_probe

    spec_path = folder / "study.json"
    spec = _sweep_spec(settings, split_seed)
    if folder.exists() and (fresh or not spec_path.is_file() or read_json(spec_path) != spec):
        shutil.rmtree(folder)  # another mode's or another version's runs: they cannot be reused
    folder.mkdir(parents=True, exist_ok=True)
    write_json(spec_path, spec)
    config = SweepConfig(model=settings.model, train=settings.train, seeds=tuple(seeds),
                         grid={"placement": tuple(settings.placements)}, data=settings.data, split_seed=split_seed)
    return run_sweep(config, folder, probes=lambda: [GradientNormProbe(), residual_variance_probe()],
                     every=settings.probe_every, progress=False, log=log)


def _training_arrays(history, n_layers: int, warmup: int) -> dict[str, np.ndarray]:
    """Gradient norm per layer (records after warm-up), residual variance per depth over training, val loss."""
    from normlens import sites as S

    arrays: dict[str, np.ndarray] = {"val_steps": np.asarray(history.val_steps, np.int64),
                                     "val_loss": np.asarray(history.val_loss, np.float64)}
    if "grad_norm" in history.probes:
        steps, values = history.probe_series("grad_norm", "norm[layer]")  # (R,), (R, L)
        layers = history.probes["grad_norm"]["axes"]["norm[layer]"][0]
        grads = np.full((len(steps), n_layers), np.nan)
        grads[:, [int(layer) for layer in layers]] = values
        keep = steps >= warmup
        arrays |= {"grad_steps": steps[keep].astype(np.int64), "grad_norm_train": grads[keep]}
    if "residual" in history.probes:
        steps, values = history.probe_series("residual", "variance[site]")  # (R, L+1) in label order
        sites = history.probes["residual"]["axes"]["variance[site]"][0]
        order = [S.residual_sites(n_layers).index(site) for site in sites]
        variance = np.full((len(steps), n_layers + 1), np.nan)
        variance[:, order] = values
        arrays |= {"variance_steps": steps.astype(np.int64), "variance_train": variance}
    return arrays


def measure_runs(settings: DepthSettings, sweep, models: Path, out: Path, *, split_seed: int,
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Measure every trained run on the held-out sequences; save each run's arrays as NPZ under ``out``
    and return one record per run (placement, seed, arrays, training facts)."""
    import torch

    from analyses.common.depth import measure_depth, nan_measurement
    from normlens.data import load_corpus
    from normlens.data.corpus import eval_windows
    from normlens.io import write_npz
    from normlens.models.checkpoint import load_checkpoint
    from normlens.train import load_train_result

    n_layers, n_seq = settings.model.n_layers, settings.n_measure_seqs
    splits = load_corpus(settings.data, seed=split_seed)
    tokens = eval_windows(splits, n_seq=n_seq, n_ctx=settings.model.n_ctx, seed=settings.train.eval_seed)
    records = []
    for row in sweep.runs.to_dict(orient="records"):
        run_folder = models / row["folder"]
        history = load_train_result(run_folder / "train_result.json")
        model = load_checkpoint(run_folder / "model")
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        arrays = (measure_depth(model, tokens) if finite and not row["diverged"]
                  else nan_measurement(n_layers, n_seq))
        arrays |= _training_arrays(history, n_layers, settings.train.warmup_steps)
        name = f"{row['placement']}_seed-{row['seed']}"
        write_npz(out / f"{name}.npz", **arrays)
        records.append({"placement": row["placement"], "seed": int(row["seed"]), "file": f"runs/{name}.npz",
                        "diverged": bool(row["diverged"]), "diverged_step": row["diverged_step"],
                        "final_val_loss": float(row["final_val_loss"]), "train_seconds": float(row["wall_time_s"]),
                        "arrays": arrays})
        log(f"  measured {row['placement']:<7} seed {row['seed']}: skip-loss of layer 1 "
            f"{np.nanmean(arrays['skip_delta'][:, 0]):+.4f} nats, variance at depth {n_layers} "
            f"{arrays['variance'][-1]:.3g}")
    return records


# -- intervals and comparisons -------------------------------------------------------------------

def _interval(values: Sequence[float] | np.ndarray, level: float, seed: int, n_resamples: int) -> dict:
    from normlens.uncertainty import bootstrap_interval

    iv = bootstrap_interval(np.asarray(values, np.float64), level=level, seed=seed, n_resamples=n_resamples)
    return iv.to_dict()


def _band(stack: np.ndarray) -> dict[str, list[float]]:
    """Mean, min and max over seeds (rows) of per-depth curves, NaN rows (diverged runs) left out."""
    finite = stack[np.isfinite(stack).all(axis=1)] if stack.size else stack
    if not len(finite):
        nan = [math.nan] * (stack.shape[1] if stack.ndim == 2 else 0)
        return {"mean": nan, "low": nan, "high": nan, "n": 0}
    return {"mean": finite.mean(0).tolist(), "low": finite.min(0).tolist(), "high": finite.max(0).tolist(),
            "n": int(len(finite))}


def _per_layer_intervals(per_sequence: np.ndarray, level: float, seed: int, n_resamples: int) -> dict:
    """Per layer: bootstrap interval over sequences of the seed-averaged per-sequence values (n_seq, L)."""
    columns = [_interval(per_sequence[:, layer], level, seed, n_resamples) for layer in range(per_sequence.shape[1])]
    return {key: [c[key] for c in columns] for key in ("estimate", "low", "high", "n")}


COMPARISONS = (
    # key, metric, b, a (b - a), claimed direction of b - a, the claim
    ("variance", "variance_log_slope", "scaled", "pre", "lower",
     "LayerNorm Scaling curbs the growth of the residual variance with depth (Curse of Depth)"),
    ("variance_linear", "variance_slope", "scaled", "pre", "lower",
     "the same, as the slope of the variance itself against depth (Curse of Depth)"),
    ("skip", "skip_deep", "scaled", "pre", "higher",
     "skipping a deep layer costs more under LayerNorm Scaling (Curse of Depth)"),
    ("angular", "angular_deep", "scaled", "pre", "higher",
     "deep layers change the last token's residual stream more under LayerNorm Scaling (Curse of Depth)"),
    ("ineffective", "ineffective_deep", "scaled", "pre", "lower",
     "fewer deep layers are ineffective under LayerNorm Scaling (Curse of Depth)"),
    ("pre_gradients", "log_grad_deep_early", "pre", None, "lower",
     "Pre-LN gives deep layers smaller gradients than early ones (Mix-LN)"),
    ("post_gradients", "log_grad_deep_early", "post", None, "higher",
     "Post-LN gives early layers smaller gradients than deep ones (Mix-LN)"),
    ("mix_vs_pre", "grad_spread", "mix", "pre", "lower",
     "Mix-LN spreads gradient norms over depth more evenly than Pre-LN (Mix-LN)"),
    ("mix_vs_post", "grad_spread", "mix", "post", "lower",
     "Mix-LN spreads gradient norms over depth more evenly than Post-LN (Mix-LN)"),
    ("scaled_loss", "final_val_loss", "scaled", "pre", "lower",
     "LayerNorm Scaling reaches a lower validation loss than Pre-LN (Curse of Depth)"),
    ("mix_loss", "final_val_loss", "mix", "pre", "lower",
     "Mix-LN reaches a lower validation loss than Pre-LN (Mix-LN)"),
    ("post_loss", "final_val_loss", "post", "pre", None, "Post-LN against Pre-LN (reported, not a claim tested)"),
)
SEQUENCE_METRICS = {"skip_deep": "skip_delta", "angular_deep": "angular"}


def summarize(records: Sequence[Mapping[str, Any]], settings: DepthSettings, seeds: Sequence[int], *,
              seed: int = 0) -> dict[str, Any]:
    """Everything the report and the verdict read: per-run metrics, per-placement curves with
    intervals, and the papers' comparisons as paired differences with intervals over seeds (and,
    for per-sequence quantities, over held-out sequences)."""
    from analyses.common.depth import deep_layers, deep_sequence_means, run_metrics

    n_layers, level = settings.model.n_layers, settings.level
    labels = placement_labels(n_layers)
    runs, by_key = [], {}
    for record in records:
        arrays = record["arrays"]
        metrics = run_metrics(arrays, ineffective_nats=settings.ineffective_nats)
        if record["diverged"]:  # its training gradients before the blow-up are no measurement of the model
            metrics = {key: math.nan for key in metrics}
        ratio = metrics["grad_deep_early"]
        metrics["log_grad_deep_early"] = math.log(ratio) if ratio > 0 else math.nan
        metrics["final_val_loss"] = math.nan if record["diverged"] else record["final_val_loss"]
        row = {k: record[k] for k in ("placement", "seed", "file", "diverged", "diverged_step", "train_seconds")}
        runs.append(row | {"label": labels[record["placement"]]} | metrics)
        by_key[(record["placement"], record["seed"])] = (metrics, arrays)

    placements = [p for p in settings.placements if any(r["placement"] == p for r in runs)]
    curves, metric_intervals = {}, {}
    for placement in placements:
        items = [by_key[(placement, s)] for s in seeds if (placement, s) in by_key]
        arrays = [a for _, a in items]
        stack = lambda key: np.stack([np.asarray(a[key], np.float64) for a in arrays])  # noqa: E731
        ok = [a for a in arrays if np.isfinite(a["skip_delta"]).all()]
        curve = {"variance": _band(stack("variance")), "grad_end": _band(stack("grad_norm_end")),
                 "angular_matrix": (np.mean([a["angular_matrix"] for a in ok], 0).tolist() if ok else None)}
        if all("grad_norm_train" in a for a in arrays):
            curve["grad_train"] = _band(np.stack([np.nanmean(a["grad_norm_train"], 0) for a in arrays]))
        for key, name in (("skip_delta", "skip"), ("angular", "angular")):
            per_sequence = np.mean([a[key] for a in ok], 0) if ok else np.full((settings.n_measure_seqs, n_layers), np.nan)
            curve[name] = _per_layer_intervals(per_sequence, level, seed, settings.n_resamples)
        if all("variance_train" in a for a in arrays):
            curve["variance_train"] = {"steps": np.asarray(arrays[0]["variance_steps"]).tolist(),
                                       "last_depth": _band(np.stack([a["variance_train"][:, -1] for a in arrays]))}
        curve["val"] = {"steps": np.asarray(arrays[0]["val_steps"]).tolist(),
                        "per_seed": [np.asarray(a["val_loss"]).tolist() for a in arrays]}
        curves[placement] = curve
        metric_intervals[placement] = {
            name: _interval([m[name] for m, _ in items], level, seed, settings.n_resamples)
            for name in ("variance_log_slope", "variance_slope", "variance_last_over_first", "angular_deep",
                         "skip_deep", "ineffective_deep", "grad_spread", "grad_deep_early", "final_val_loss")}

    comparisons = []
    for key, metric, b, a, direction, claim in COMPARISONS:
        if b not in placements or (a is not None and a not in placements):
            continue
        paired = [s for s in seeds if (b, s) in by_key and (a is None or (a, s) in by_key)]
        values = np.array([by_key[(b, s)][0][metric] - (by_key[(a, s)][0][metric] if a else 0.0) for s in paired])
        entry = {"key": key, "metric": metric, "b": b, "a": a, "direction": direction, "claim": claim,
                 "b_value": float(np.nanmean([by_key[(b, s)][0][metric] for s in paired])) if paired else math.nan,
                 "a_value": (float(np.nanmean([by_key[(a, s)][0][metric] for s in paired])) if a and paired
                             else None),
                 **_interval(values, level, seed, settings.n_resamples), "per_seed": values.tolist(), "seeds": list(paired),
                 "sequences": None}
        if metric in SEQUENCE_METRICS and a is not None:
            array_key = SEQUENCE_METRICS[metric]
            diffs = [deep_sequence_means(by_key[(b, s)][1], array_key) - deep_sequence_means(by_key[(a, s)][1], array_key)
                     for s in paired]
            diffs = [d for d in diffs if np.isfinite(d).all()]
            if diffs:
                entry["sequences"] = _interval(np.mean(diffs, 0), level, seed, settings.n_resamples)
        comparisons.append(entry)

    return {"n_layers": n_layers, "deep_layers": (deep_layers(n_layers) + 1).tolist(),
            "ineffective_nats": settings.ineffective_nats, "level": level, "seeds": list(seeds),
            "n_sequences": settings.n_measure_seqs, "n_ctx": settings.model.n_ctx, "d_model": settings.model.d_model,
            "steps": settings.train.steps, "grad_from_step": settings.train.warmup_steps, "data": settings.data,
            "placements": placements, "labels": {p: labels[p] for p in placements},
            "runs": runs, "curves": curves, "metrics": metric_intervals, "comparisons": comparisons}


# -- the verdict ---------------------------------------------------------------------------------

def _iv(c: Mapping[str, Any], fmt: str = "+.3f") -> str:
    if not (math.isfinite(c["low"]) and math.isfinite(c["high"])):
        return f"{c['estimate']:{fmt}} (no interval)"
    return f"{c['estimate']:{fmt}} [{c['low']:{fmt}}, {c['high']:{fmt}}]"


def _word(judgement: str) -> str:
    return "inconclusive at this scale" if judgement == "inconclusive" else judgement


def _seeds(c: Mapping[str, Any]) -> str:
    return f"{c['n']} seed{'s' if c['n'] != 1 else ''}"


def _with_sequences(c: Mapping[str, Any], fmt: str) -> str:
    text = f"difference {_iv(c, fmt)} over {_seeds(c)}"
    if c.get("sequences"):
        text += f", {_iv(c['sequences'], fmt)} over {c['sequences']['n']} held-out sequences"
    return text


def depth_verdict(results: Path) -> str:
    """Sentences from the saved comparisons (``depth/summary.json``): each names a paper's claim, gives
    the numbers with their interval and seed count, and ends in agrees / disagrees / inconclusive."""
    path = Path(results) / DATA_DIR / SUMMARY
    if not path.is_file():
        return "No verdict: the study's summary (depth/summary.json) is missing."
    summary = read_json(path)
    found = {c["key"]: c for c in summary.get("comparisons", [])}
    level = f"{summary.get('level', 0.95):.0%}"
    deep = summary.get("deep_layers", [])
    deep_text = f"layers {deep[0]}–{deep[-1]}" if len(deep) > 1 else "the last layer"
    sentences = []
    if "variance" in found:
        c = found["variance"]
        sentences.append(
            f"LayerNorm Scaling curbs the growth of the residual variance with depth (Curse of Depth): ln(variance) "
            f"grows {c['a_value']:.3f} per layer under Pre-LN and {c['b_value']:.3f} under LayerNorm Scaling "
            f"(difference {_iv(c)}, {level} paired interval over {_seeds(c)}) — {_word(judge_comparison(c))}"
            + (f"; fitted linearly, the variance grows {found['variance_linear']['a_value']:.3g} vs "
               f"{found['variance_linear']['b_value']:.3g} per layer (difference {_iv(found['variance_linear'], '+.3g')})"
               f" — {_word(judge_comparison(found['variance_linear']))}" if "variance_linear" in found else "")
            + ".")
    if "skip" in found and "angular" in found:
        s, a = found["skip"], found["angular"]
        text = (f"LayerNorm Scaling makes the deep {deep_text} effective (Curse of Depth): skipping one raises the "
                f"loss by {s['a_value']:.4f} nats under Pre-LN and {s['b_value']:.4f} under LayerNorm Scaling "
                f"({_with_sequences(s, '+.4f')}) — {_word(judge_comparison(s))}; their last-token angular distance "
                f"is {a['a_value']:.3f} vs {a['b_value']:.3f} ({_with_sequences(a, '+.3f')}) — "
                f"{_word(judge_comparison(a))}")
        if "ineffective" in found:
            e = found["ineffective"]
            text += (f"; {e['a_value']:.0%} vs {e['b_value']:.0%} of them are ineffective (a skip costs less than "
                     f"{summary.get('ineffective_nats', 0.01):g} nats)")
        sentences.append(text + ".")
    for key, claim in (("pre_gradients", "Pre-LN gives deep layers smaller gradients than early ones"),
                       ("post_gradients", "Post-LN gives early layers smaller gradients than deep ones")):
        if key in found:
            c = found[key]
            sentences.append(f"{claim} (Mix-LN): the deep/early ratio of training gradient norms after warm-up is "
                             f"{math.exp(c['b_value']):.2f} (ln ratio {_iv(c)}, {level} interval over {_seeds(c)}) "
                             f"— {_word(judge_comparison(c))}.")
    if "mix_vs_pre" in found and "mix_vs_post" in found:
        m, n = found["mix_vs_pre"], found["mix_vs_post"]
        sentences.append(
            f"Mix-LN spreads gradient norms over depth more evenly (Mix-LN): the s.d. of ln‖g‖ over layers is "
            f"{m['b_value']:.3f} for Mix-LN against {m['a_value']:.3f} for Pre-LN (difference {_iv(m)} over "
            f"{_seeds(m)}) — {_word(judge_comparison(m))}, and against {n['a_value']:.3f} for Post-LN (difference "
            f"{_iv(n)}) — {_word(judge_comparison(n))}.")
    names = {"scaled": "LayerNorm Scaling", "mix": "Mix-LN"}
    losses = [found[k] for k in ("scaled_loss", "mix_loss") if k in found]
    if losses:
        parts = [f"{names[c['b']]} {_iv(c)} nats against Pre-LN ({_seeds(c)}) — {_word(judge_comparison(c))}"
                 for c in losses]
        sentences.append(f"Both reach a lower validation loss than Pre-LN (both papers; {level} paired intervals): "
                         + "; ".join(parts) + ".")
    if not sentences:
        return "No verdict: the Pre-LN, LayerNorm Scaling, Mix-LN or Post-LN runs are missing."
    diverged = [f"{summary.get('labels', {}).get(r['placement'], r['placement'])} seed {r['seed']}"
                for r in summary.get("runs", []) if r.get("diverged")]
    if diverged:
        sentences.append(f"Diverged (left out of the pairs): {', '.join(diverged)}.")
    return " ".join(sentences)


def _lazy_renderer(part: str) -> Callable[[Path, Mapping[str, Any]], Any]:
    def render(folder: Path, options: Mapping[str, Any]):
        from analyses import curse_of_depth_sections

        return getattr(curse_of_depth_sections, f"render_{part}")(folder, options)

    render.__name__ = f"render_{part}"
    return render


SECTIONS = ("claims", "loss", "variance", "effectiveness", "gradients")
CurseOfDepthStudy.renderers = {f"depth_{part}": _lazy_renderer(part) for part in SECTIONS}
STUDY = CurseOfDepthStudy()

__all__ = ["COMPARISONS", "CurseOfDepthStudy", "DepthSettings", "PLACEMENTS", "STUDY", "default_modes",
           "depth_verdict", "judge", "judge_comparison", "measure_runs", "mode_settings", "placement_labels",
           "summarize", "train_placements"]
