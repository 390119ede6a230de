"""Entropic overload per trained run and over seeds, as "ReLU's Revival" (Jha & Reagen 2024) defines it.

Per head: the attention entropy averaged over all T queries of a sequence, divided by its maximum
log T, averaged over sequences (``AttentionEntropyResult.head_frame()["entropy_ratio"]``). A head is
*overloaded* when that ratio lies in [3/4, 1] (the paper's [3/4 · log T, log T]), *collapsed* when its
mean entropy is below the probe's ``collapse_threshold`` (nats). A run's overload fraction is the
share of its heads that are overloaded; models are compared over seeds, pairing runs that share a
seed (same initial weights, batches and evaluation windows).

The per-query variant (each query's H_i / log(i+1), then averaged) is kept under its own name,
``overload_fraction_normalized``: it saturates (a head spread uniformly over k of the i+1 visible
keys scores log k / log(i+1), so any diffuse head passes 3/4) and is shown only as a labelled variant.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from normlens.uncertainty import Interval, bootstrap_interval, paired_difference_interval

if TYPE_CHECKING:
    from normlens.probes.attention import AttentionEntropyResult
    from normlens.train import TrainResult

RUN_METRICS = ("overload_fraction", "early_overload_fraction", "collapse_fraction", "mean_entropy_ratio",
               "overload_fraction_normalized", "val_loss", "perplexity")
PAIRED_METRICS = ("overload_fraction", "early_overload_fraction", "collapse_fraction", "mean_entropy_ratio",
                  "overload_fraction_normalized", "val_loss", "perplexity_reduction")
INTERVAL_METHOD = "t"  # the mean over 2-3 seeds: Student's t (a bootstrap of 3 values undercovers badly)


def uniform_head_ratio(n_ctx: int) -> float:
    """Mean entropy / log T of a head that attends uniformly under a causal mask:
    mean_i log(i + 1) / log T = log(T!) / (T log T) (0.771 at T = 64, 0.801 at T = 128).

    >>> round(uniform_head_ratio(64), 3)
    0.771
    """
    if n_ctx < 2:
        raise ValueError(f"n_ctx must be at least 2 for log T > 0, got {n_ctx}")
    return math.lgamma(n_ctx + 1) / (n_ctx * math.log(n_ctx))


def early_layers(n_layers: int) -> int:
    """How many layers count as "early": the first half (at least one)."""
    return max(1, n_layers // 2)


def head_table(result: AttentionEntropyResult, *, model: str, seed: int) -> pd.DataFrame:
    """``result.head_frame()`` with ``model`` and ``seed`` columns first (one row per layer and head)."""
    heads = result.head_frame()
    heads.insert(0, "seed", int(seed))
    heads.insert(0, "model", model)
    return heads


def bucket_table(result: AttentionEntropyResult, *, model: str, seed: int) -> pd.DataFrame:
    """``result.bucket_frame()`` (H / log(visible keys) per layer, head and query-position bucket)
    with ``model`` and ``seed`` columns first."""
    buckets = result.bucket_frame()
    buckets.insert(0, "seed", int(seed))
    buckets.insert(0, "model", model)
    return buckets


def run_metrics(result: AttentionEntropyResult | None, n_layers: int, val_loss: float) -> dict[str, float]:
    """One run's numbers: the paper's overload fraction (``summary()["overload_fraction"]``), the same over
    the early layers, the collapse fraction, the mean entropy ratio, the per-query variant, and the
    validation loss and perplexity. ``result`` None (a diverged run): every entropy number is NaN."""
    loss = float(val_loss) if val_loss is not None else math.nan
    out = {"val_loss": loss, "perplexity": math.exp(loss) if math.isfinite(loss) and loss < 700 else math.nan}
    if result is None:
        return {name: math.nan for name in RUN_METRICS if name not in out} | out
    summary = result.summary()
    heads = result.head_frame()
    defined = heads[heads.state != "undefined"]
    early = defined[defined.layer < early_layers(n_layers)]
    out |= {"overload_fraction": float(summary["overload_fraction"]),
            "early_overload_fraction": float(early.overloaded.mean()) if len(early) else math.nan,
            "collapse_fraction": float(summary["collapse_fraction"]),
            "mean_entropy_ratio": float(summary["mean_entropy_ratio"]),
            "overload_fraction_normalized": float(summary["overload_fraction_normalized"])}
    return {name: out[name] for name in RUN_METRICS}


FRACTIONS = ("overload_fraction", "early_overload_fraction", "collapse_fraction", "overload_fraction_normalized")


def _interval_columns(interval: Interval, bounds: tuple[float, float] | None = None) -> dict[str, float | int | str]:
    """The interval's columns; with ``bounds`` (a fraction's [0, 1], or [-1, 1] for a difference of two)
    the t interval is truncated to the values the quantity can take."""
    low, high = interval.low, interval.high
    if bounds is not None and np.isfinite(low) and np.isfinite(high):
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"estimate": interval.estimate, "low": low, "high": high, "n": interval.n,
            "level": interval.level, "method": interval.method}


def model_intervals(runs: pd.DataFrame, models: Sequence[str], metrics: Iterable[str] = RUN_METRICS, *,
                    level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per model and metric: the mean over seeds with its t interval (NaN runs left out)."""
    rows = []
    for model in models:
        part = runs[runs.model == model]
        for metric in metrics:
            interval = bootstrap_interval(part[metric].to_numpy(np.float64), level=level, seed=seed,
                                          method=INTERVAL_METHOD)
            rows.append({"model": model, "metric": metric,
                         **_interval_columns(interval, (0.0, 1.0) if metric in FRACTIONS else None)})
    return pd.DataFrame(rows, columns=["model", "metric", "estimate", "low", "high", "n", "level", "method"])


def paired_values(runs: pd.DataFrame, a: str, b: str, metric: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``metric`` of models ``a`` and ``b`` on the seeds both have, in seed order."""
    left = runs[runs.model == a].set_index("seed")
    right = runs[runs.model == b].set_index("seed")
    seeds = sorted(set(left.index) & set(right.index))
    column = "val_loss" if metric == "perplexity_reduction" else metric
    x, y = left.loc[seeds, column].to_numpy(np.float64), right.loc[seeds, column].to_numpy(np.float64)
    if metric == "perplexity_reduction":  # 1 - ppl_b / ppl_a: how much lower b's perplexity is than a's
        with np.errstate(over="ignore", invalid="ignore"):
            return -np.expm1(y - x), np.zeros_like(x), seeds
    return x, y, seeds


def paired_comparisons(runs: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                       metrics: Iterable[str] = PAIRED_METRICS, *, level: float = 0.95,
                       seed: int = 0) -> pd.DataFrame:
    """For each pair (a, b) and metric: the mean over shared seeds of ``metric(a) - metric(b)`` with a
    t interval over the per-seed differences. ``perplexity_reduction`` is instead the mean of
    1 - ppl(b)/ppl(a) (positive: b's perplexity is lower), the form of the paper's "8.2 %"."""
    rows = []
    for a, b in pairs:
        for metric in metrics:
            x, y, seeds = paired_values(runs, a, b, metric)
            interval = paired_difference_interval(x, y, level=level, seed=seed, method=INTERVAL_METHOD)
            rows.append({"a": a, "b": b, "metric": metric,
                         **_interval_columns(interval, (-1.0, 1.0) if metric in FRACTIONS else None),
                         "n_seeds": len(seeds), "excludes_zero": interval.excludes(0.0)})
    return pd.DataFrame(rows, columns=["a", "b", "metric", "estimate", "low", "high", "n", "level", "method",
                                       "n_seeds", "excludes_zero"])


def training_heads(result: TrainResult, *, model: str, seed: int, n_ctx: int,
                   probe: str = "attention") -> pd.DataFrame:
    """Per record of the training probe: the mean entropy per (layer, head) and its ratio to log T.

    The probe reads full windows of ``n_ctx`` tokens, so the mean over queries divided by log n_ctx is
    the paper's ratio (``entropy[layer,head]`` of :func:`normlens.train_probes.attention_entropy_probe`).
    """
    columns = ["model", "seed", "step", "layer", "head", "entropy", "entropy_ratio"]
    if probe not in result.probes:
        return pd.DataFrame(columns=columns)
    frame = result.probe_frame(probe)
    frame = frame[frame.metric == "entropy"].rename(columns={"value": "entropy"})
    out = pd.DataFrame({"model": model, "seed": int(seed), "step": frame.step.astype(np.int64),
                        "layer": frame.layer.astype(np.int64), "head": frame["head"].astype(np.int64),
                        "entropy": frame.entropy.astype(np.float64)})
    out["entropy_ratio"] = out.entropy / math.log(n_ctx)
    return out[columns].reset_index(drop=True)


def training_summaries(result: TrainResult, *, model: str, seed: int, probe: str = "attention",
                       names: Sequence[str] = ("overload_fraction", "collapse_fraction", "mean_entropy_ratio",
                                               "overload_fraction_normalized")) -> pd.DataFrame:
    """Per record of the training probe: the recorded summary scalars (one column each)."""
    if probe not in result.probes:
        return pd.DataFrame(columns=["model", "seed", "step", *names])
    out = {"model": model, "seed": int(seed)}
    steps = None
    for name in names:
        steps, values = result.probe_series(probe, name)
        out[name] = values.astype(np.float64)
    out["step"] = np.asarray(steps, dtype=np.int64)
    return pd.DataFrame(out)[["model", "seed", "step", *names]]


def verdict_word(interval: Mapping[str, float], *, positive_agrees: bool = True) -> str:
    """"agrees", "disagrees" or "is inconclusive" for a paired interval whose sign says who wins."""
    low, high, n = interval["low"], interval["high"], interval.get("n", 0)
    if n < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return "is inconclusive"
    if low > 0:
        return "agrees" if positive_agrees else "disagrees"
    if high < 0:
        return "disagrees" if positive_agrees else "agrees"
    return "is inconclusive"


__all__ = ["FRACTIONS", "INTERVAL_METHOD", "PAIRED_METRICS", "RUN_METRICS", "bucket_table", "early_layers", "head_table",
           "model_intervals", "paired_comparisons", "paired_values", "run_metrics", "training_heads",
           "training_summaries", "uniform_head_ratio", "verdict_word"]
