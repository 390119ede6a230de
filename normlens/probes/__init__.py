"""Probes: streaming activation statistics, attention entropy, layer effectiveness, linear probes."""
from normlens.probes.attach import Attachment, Probe, ProbeError, attach, count_hooks, resolve_sites
from normlens.probes.attention import (AttentionEntropyProbe, AttentionEntropyResult, PatternEntropyProbe,
                                       attention_entropy, compute_pattern_entropy, pattern_entropy)
from normlens.probes.attribution import (LogitAttributionResult, direct_effect_by_ablation,
                                         direct_logit_attribution)
from normlens.probes.effectiveness import (EffectivenessResult, angular_distances_per_sequence,
                                           compute_angular_distances, compute_effectiveness,
                                           compute_gradient_norms, compute_skip_losses, skip_losses_per_sequence)
from normlens.probes.linear import LinearProbeResult, fit_linear_probes
from normlens.probes.massive import MassiveActivationProbe, MassiveActivationResult, compute_massive_activations
from normlens.probes.moments import Moments
from normlens.probes.norm_probes import (NormScaleProbe, SCurveProbe, SCurveResult, dyt_alphas, fit_s_curve,
                                        residual_growth)
from normlens.probes.stats import ActivationStatsProbe, ActivationStatsResult
from normlens.probes.suite import ProbeSuiteResult, run_probe_suite

__all__ = [
    "Attachment", "Probe", "ProbeError", "attach", "count_hooks", "resolve_sites", "AttentionEntropyProbe",
    "AttentionEntropyResult", "PatternEntropyProbe", "attention_entropy", "compute_pattern_entropy",
    "pattern_entropy", "LogitAttributionResult", "direct_effect_by_ablation", "direct_logit_attribution",
    "EffectivenessResult", "angular_distances_per_sequence", "compute_angular_distances", "compute_effectiveness",
    "compute_gradient_norms", "compute_skip_losses", "skip_losses_per_sequence", "LinearProbeResult",
    "fit_linear_probes", "Moments", "NormScaleProbe", "SCurveProbe", "SCurveResult", "fit_s_curve", "dyt_alphas", "residual_growth", "ActivationStatsProbe", "ActivationStatsResult",
    "ProbeSuiteResult", "run_probe_suite",
    "MassiveActivationProbe", "MassiveActivationResult", "compute_massive_activations",
]
