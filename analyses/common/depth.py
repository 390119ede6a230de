"""Depth measurements of one trained model, and the per-run numbers the curse-of-depth study compares.

:func:`measure_depth` reads a model on held-out sequences:

* residual-stream variance and RMS at every depth (depth 0 = embeddings, depth l = output of layer l),
  from :class:`normlens.probes.ActivationStatsProbe` on the residual stream, all positions but the
  first ("The Curse of Depth in Large Language Models", Sun et al. 2025);
* angular distance arccos(cos(h_l, h_{l+1}))/π between consecutive depths on the last token of each
  sequence, as Gromov et al. 2024 and the Curse-of-Depth paper measure it, per sequence;
* the loss change when each layer is skipped (its output replaced by its input), per sequence;
* the gradient norm of each layer's parameters for the mean held-out loss (Mix-LN, Li et al. 2024).

:func:`run_metrics` turns those arrays (and the training history) into one row of scalars per run:
the fitted growth slope of the variance, deep-layer effectiveness, the share of "ineffective" deep
layers, and how evenly the gradient norm is spread over depth.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from normlens import sites as S
from normlens.hygiene import preserved_state
from normlens.probes import ActivationStatsProbe, attach
from normlens.probes.effectiveness import angular_distances_per_sequence, compute_gradient_norms, skip_losses_per_sequence
from normlens.probes.norm_probes import residual_growth

# arrays of one run, saved as NPZ (shapes: L layers, n_seq held-out sequences, R training records)


def layer_grad_norms(model: nn.Module, tokens: torch.Tensor, n_layers: int) -> np.ndarray:
    """(L,) L2 norm of the gradient of the mean next-token loss over each layer's parameters."""
    frame = compute_gradient_norms(model, tokens).dropna(subset=["layer"])
    squares = frame.assign(sq=frame.grad_norm ** 2).groupby("layer").sq.sum()
    return np.array([math.sqrt(squares.get(layer, math.nan)) for layer in range(n_layers)])


def measure_depth(model: nn.Module, tokens: torch.Tensor, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Every depth measurement of ``model`` on held-out ``tokens`` (n_seq, n_ctx); the model is left as found.

    Returns ``variance``, ``rms`` (L+1,); ``angular`` (n_seq, L): last-token angular distance between
    the input and output of each layer; ``angular_matrix`` (L+1, L+1): its mean between all depths;
    ``base_loss`` (n_seq,); ``skip_delta`` (n_seq, L): loss change when each layer is skipped;
    ``grad_norm_end`` (L,).
    """
    n_layers = int(model.cfg.n_layers)
    with preserved_state(model):
        probe = ActivationStatsProbe(sites=S.residual_sites(n_layers))
        with torch.no_grad(), attach(model, probe):
            for start in range(0, tokens.shape[0], batch_size):
                model(tokens[start:start + batch_size])
        growth = residual_growth(probe.result())  # one row per depth, "body" positions (all but the first)
        matrix = angular_distances_per_sequence(model, tokens, batch_size, positions="last")  # (n_seq, L+1, L+1)
        base, skip = skip_losses_per_sequence(model, tokens)
        grads = layer_grad_norms(model, tokens, n_layers)
    layers = np.arange(n_layers)
    return {"variance": growth.variance.to_numpy(np.float64), "rms": growth.rms.to_numpy(np.float64),
            "angular": matrix[:, layers, layers + 1], "angular_matrix": matrix.mean(0),
            "base_loss": base, "skip_delta": skip, "grad_norm_end": grads}


def nan_measurement(n_layers: int, n_seq: int) -> dict[str, np.ndarray]:
    """The arrays of a run that diverged (weights not finite): NaN, the right shapes."""
    return {"variance": np.full(n_layers + 1, np.nan), "rms": np.full(n_layers + 1, np.nan),
            "angular": np.full((n_seq, n_layers), np.nan), "angular_matrix": np.full((n_layers + 1,) * 2, np.nan),
            "base_loss": np.full(n_seq, np.nan), "skip_delta": np.full((n_seq, n_layers), np.nan),
            "grad_norm_end": np.full(n_layers, np.nan)}


def fit_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x`` over the finite points (NaN with fewer than two)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return math.nan
    x, y = x[keep], y[keep]
    return float(np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2))


def deep_layers(n_layers: int) -> np.ndarray:
    """The deep half of the layers (0-based indices ``L//2 .. L-1``): layers 5-8 of 8."""
    return np.arange(n_layers // 2, n_layers)


def _log(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), np.nan)


def run_metrics(arrays: Mapping[str, np.ndarray], *, ineffective_nats: float) -> dict[str, float]:
    """The scalars of one run (NaN where the run diverged).

    * ``variance_log_slope``: slope of ln(variance) per layer over depths 1..L (the block outputs; the
      embedding at depth 0 is left out); e^slope is the growth factor per layer.
      ``variance_slope``: the same fit of the variance itself (variance per layer).
    * ``angular_deep``, ``skip_deep``: mean last-token angular distance and skip-loss change of the
      deep layers (:func:`deep_layers`); ``ineffective_deep``: the share of deep layers whose skip-loss
      change is below ``ineffective_nats``; ``ineffective_all``: the same over every layer.
    * ``grad_spread``: standard deviation over layers of ln ||g_l|| (0 = every layer the same norm);
      ``grad_deep_early``: mean ||g_l|| of the deep half over the early half (< 1: deep layers get
      smaller gradients). From the training record (``grad_norm_train``, mean over records) when present,
      else from the held-out gradient (``grad_norm_end``).
    """
    variance = np.asarray(arrays["variance"], np.float64)
    n_layers = variance.size - 1
    depths = np.arange(1, n_layers + 1)
    deep = deep_layers(n_layers)
    skip = np.asarray(arrays["skip_delta"], np.float64).mean(0)  # (L,)
    angular = np.asarray(arrays["angular"], np.float64).mean(0)
    train = arrays.get("grad_norm_train")
    grads = (np.nanmean(np.asarray(train, np.float64), axis=0) if train is not None and np.size(train)
             else np.asarray(arrays["grad_norm_end"], np.float64))
    log_grads = _log(grads)
    early = np.arange(0, n_layers // 2)
    finite_skip = np.isfinite(skip)
    return {
        "variance_log_slope": fit_slope(depths, _log(variance[1:])),
        "variance_slope": fit_slope(depths, variance[1:]),
        "variance_last_over_first": float(variance[-1] / variance[1]) if variance[1] > 0 else math.nan,
        "angular_deep": float(angular[deep].mean()),
        "skip_deep": float(skip[deep].mean()),
        "ineffective_deep": float((skip[deep] < ineffective_nats).mean()) if finite_skip.all() else math.nan,
        "ineffective_all": float((skip < ineffective_nats).mean()) if finite_skip.all() else math.nan,
        "grad_spread": float(np.std(log_grads)) if np.isfinite(log_grads).all() else math.nan,
        "grad_deep_early": float(grads[deep].mean() / grads[early].mean()) if grads[early].mean() > 0 else math.nan,
        "base_loss": float(np.mean(arrays["base_loss"])),
    }


def deep_sequence_means(arrays: Mapping[str, Any], key: str) -> np.ndarray:
    """(n_seq,) mean of ``arrays[key]`` (n_seq, L) over the deep layers, per held-out sequence."""
    values = np.asarray(arrays[key], np.float64)
    return values[:, deep_layers(values.shape[1])].mean(1)
