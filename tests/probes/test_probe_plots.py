"""The probe plots draw from results (constructed ones), with the thresholds they promise."""
import torch

import normlens
from normlens.plots.probes import (plot_angular_heatmap, plot_block_effectiveness, plot_entropy_by_position,
                                   plot_entropy_heatmap, plot_s_curve, plot_sink_mass)
from normlens.probes.attention import compute_pattern_entropy
from normlens.probes.effectiveness import compute_effectiveness
from normlens.probes.norm_probes import SCurveResult


def _patterns(T=16):
    tril = torch.tril(torch.ones(T, T, dtype=torch.float64))
    sink = torch.zeros(T, T, dtype=torch.float64)
    sink[:, 0] = 1.0
    return torch.stack([tril / tril.sum(-1, keepdim=True), sink])[None]


def test_entropy_and_sink_plots_draw_their_thresholds():
    result = compute_pattern_entropy([_patterns(64)], sink_threshold=0.4)
    ax = plot_sink_mass(result)
    assert any(list(line.get_ydata()) == [0.4, 0.4] for line in ax.get_lines())
    assert "0.4" in ax.get_legend().get_texts()[0].get_text()
    ax = plot_entropy_heatmap(result)
    assert len(ax.patches) == 1  # the uniform head (0.77 of log 64) is outlined as overloaded
    assert "0.75" in ax.get_title()
    ax = plot_entropy_by_position(result)
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "[1, 8)"


def test_s_curve_and_effectiveness_plots(tokens):
    import numpy as np

    x = np.linspace(-4, 4, 50)
    curve = SCurveResult(("ln_final",), {"ln_final": x}, {"ln_final": np.tanh(0.5 * x)}, {"ln_final": True})
    ax = plot_s_curve(curve)
    assert len(ax.get_lines()) == 1 and "before the affine" in ax.get_ylabel()
    model = normlens.build_model(n_layers=2, d_model=16, n_heads=2, n_ctx=32).eval()
    eff = compute_effectiveness(model, tokens)
    assert "last token" in plot_angular_heatmap(eff).get_title()
    ax = plot_block_effectiveness(eff)
    assert "3 sequences" in ax.get_title()
