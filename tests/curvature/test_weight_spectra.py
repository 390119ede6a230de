"""Weight ESDs and tail fits against direct eigendecompositions and a naive fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from curvature_helpers import make_zoo
from normlens.curvature import compute_weight_spectra, fit_power_law
from normlens.curvature.weight_spectra import esd, farms_esd


def _naive_fit(x, min_tail=5):
    """Clauset et al. written out loop by loop: MLE alpha per xmin, keep the smallest KS."""
    x = sorted(float(v) for v in x if v > 0)
    best = (math.inf, None, None)
    for i in range(len(x) - min_tail + 1):
        tail = x[i:]
        alpha = 1 + len(tail) / sum(math.log(t / x[i]) for t in tail) if tail[-1] > x[i] else None
        if alpha is None:
            continue
        ks = 0.0
        for j, t in enumerate(tail):
            cdf = 1 - (t / x[i]) ** (1 - alpha)
            ks = max(ks, abs(j / len(tail) - cdf), abs((j + 1) / len(tail) - cdf))
        if ks < best[0]:
            best = (ks, alpha, x[i])
    return best[1], best[2], best[0]


def _heavy_matrix(rows=120, cols=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Gaussian / uniform^0.4: heavy-tailed entries, so the ESD has a power-law tail
    return torch.randn(rows, cols, generator=g, dtype=torch.float64) / torch.rand(
        rows, cols, generator=g, dtype=torch.float64
    ).pow(0.4)


def test_esd_equals_eigendecomposition_of_wtw_over_n():
    W = _heavy_matrix()
    direct = np.linalg.eigvalsh((W.T @ W).numpy() / 120)
    np.testing.assert_allclose(esd(W), direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(esd(W.T), direct, rtol=1e-9, atol=1e-12)  # orientation does not matter


def test_alpha_matches_direct_fit():
    W = _heavy_matrix()
    direct = np.linalg.eigvalsh((W.T @ W).numpy() / 120)
    alpha, xmin, ks, n_tail = fit_power_law(esd(W))
    ref_alpha, ref_xmin, ref_ks = _naive_fit(direct)
    assert alpha == pytest.approx(ref_alpha, rel=1e-8)
    assert xmin == pytest.approx(ref_xmin, rel=1e-8)
    assert ks == pytest.approx(ref_ks, rel=1e-8)
    assert n_tail >= 5


def test_fit_recovers_a_known_exponent():
    x = (1 - np.linspace(0, 0.9995, 4000)) ** (-1 / 1.5)  # Pareto quantiles, alpha = 2.5
    assert fit_power_law(x)[0] == pytest.approx(2.5, rel=0.02)


def test_farms_submatrices():
    W = _heavy_matrix(120, 60)
    pooled = farms_esd(W, aspect_ratio=1.0)  # two 60x60 blocks
    direct = np.concatenate([np.linalg.eigvalsh((B.T @ B).numpy() / 60) for B in (W[:60], W[60:])])
    np.testing.assert_allclose(pooled, np.sort(direct), rtol=1e-9, atol=1e-12)
    assert len(farms_esd(W, aspect_ratio=2.0)) == 60  # the whole matrix already has ratio 2
    with pytest.raises(ValueError, match="aspect_ratio"):
        farms_esd(W, 0.5)


def test_model_weight_spectra_and_diverged_matrix():
    model = make_zoo("ln")
    result = compute_weight_spectra(model)
    assert set(result.names) >= {"blocks.0.attn.q.weight", "blocks.0.mlp.fc_in.weight", "embed.weight"}
    q = dict(model.named_parameters())["layers.0._original_component.attn._original_component.q._original_component.weight"]
    np.testing.assert_allclose(result.eigenvalues_of("blocks.0.attn.q.weight"),
                               np.linalg.eigvalsh((q.T @ q).detach().numpy() / 8), rtol=1e-9, atol=1e-12)
    farms = compute_weight_spectra(model, farms=True)
    assert farms.farms and farms.aspect_ratio == 1.0

    lin = nn.Linear(30, 20).double()
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    bad = compute_weight_spectra(lin)
    assert bad.names == ("weight",) and math.isnan(bad.alphas[0]) and len(bad.eigenvalues_of("weight")) == 0
    with pytest.raises(ValueError, match="no 2-D weight"):
        compute_weight_spectra(lin, params="bias")
