"""Run every probe on one model and tokens: the bundle used by the report section and the CLI."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from normlens.hygiene import eval_mode, rng_preserved
from normlens.io import save_frame
from normlens.probes.attach import attach
from normlens.probes.attention import AttentionEntropyProbe, AttentionEntropyResult
from normlens.probes.effectiveness import EffectivenessResult, compute_effectiveness
from normlens.probes.linear import (ActivationSampleProbe, LinearProbeResult, activation_widths,
                                   default_probe_sites, sample_positions, score_linear_probes)
from normlens.probes.norm_probes import NormScaleProbe, SCurveProbe, SCurveResult, dyt_alphas, residual_growth
from normlens.probes.stats import ActivationStatsProbe, ActivationStatsResult


@dataclass(frozen=True)
class ProbeSuiteResult:
    stats: ActivationStatsResult
    scale: ActivationStatsResult
    s_curve: SCurveResult
    entropy: AttentionEntropyResult
    effectiveness: EffectivenessResult
    linear: LinearProbeResult
    alphas: pd.DataFrame
    growth: pd.DataFrame

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.stats.save(folder)
        self.scale.save(folder / "norm_scale")
        self.s_curve.save(folder)
        self.entropy.save(folder)
        self.effectiveness.save(folder)
        self.linear.save(folder)
        save_frame(self.alphas, folder / "dyt_alpha.parquet")
        save_frame(self.growth, folder / "residual_growth.parquet")
        return folder


def run_probe_suite(model: nn.Module, tokens: torch.Tensor, *, seed: int = 0, batch_size: int = 16,
                    s_curve_samples: int = 1024, probe_bytes: int = 4 << 20,
                    progress: bool = False) -> ProbeSuiteResult:
    """All probes on ``tokens`` (n_seq, n_ctx) int64, batch by batch, in eval mode; the model is left
    as found (each module's own train flag restored, RNG untouched).

    One pass over ``tokens`` feeds the statistics, norm, S-curve and attention probes and gathers the
    linear probes' sampled activations (a 2-token forward sizes that sample first); the effectiveness
    measurements (angular distance, skip losses, gradient norms) run on ``tokens[:4]``.
    ``progress`` shows a bar over the probed batches."""
    with eval_mode(model), rng_preserved():
        sites = default_probe_sites(model)
        idx = sample_positions(tokens.numel(), activation_widths(model, sites, tokens), probe_bytes, seed)
        stats, scale = ActivationStatsProbe(), NormScaleProbe()
        curve, entropy = SCurveProbe(n_samples=s_curve_samples, seed=seed), AttentionEntropyProbe()
        sample = ActivationSampleProbe(sites, idx)
        starts = range(0, tokens.shape[0], batch_size)
        with attach(model, [stats, scale, curve, entropy, sample]), torch.no_grad():
            for start in tqdm(starts, desc="probes", unit="batch", disable=not progress, leave=False):
                model(tokens[start:start + batch_size])
        eff = compute_effectiveness(model, tokens[:4], batch_size)
        acts, kept = sample.result()
        lin = pd.concat([score_linear_probes(acts, kept, tokens, label, sites=sites, kind="ridge", seed=seed).frame
                         for label in ("token", "position")], ignore_index=True)
        st = stats.result()
        return ProbeSuiteResult(st, scale.result(), curve.result(), entropy.result(), eff, LinearProbeResult(lin),
                                dyt_alphas(model), residual_growth(st))
