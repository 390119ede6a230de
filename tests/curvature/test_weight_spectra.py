"""Weight ESDs and tail fits against direct eigendecompositions and a naive fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from curvature_helpers import make_zoo
from normlens.curvature import compute_weight_spectra, fit_power_law
from normlens.curvature.weight_spectra import esd, farms_esd, farms_window_shape, farms_window_starts


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


def _naive_median_fit(x):
    """alpha with xmin at index N // 2 of the ascending spectrum, written out term by term."""
    x = sorted(float(v) for v in x)
    i = len(x) // 2
    tail = x[i:]
    return 1 + len(tail) / sum(math.log(t / x[i]) for t in tail), x[i]


def test_median_xmin_fit_matches_a_direct_loop():
    x = esd(_heavy_matrix())
    alpha, xmin, ks, n_tail = fit_power_law(x, xmin="median")
    ref_alpha, ref_xmin = _naive_median_fit(x)
    assert alpha == pytest.approx(ref_alpha, rel=1e-12) and xmin == ref_xmin and n_tail == len(x) - len(x) // 2
    with pytest.raises(ValueError, match="xmin"):
        fit_power_law(x, xmin="peak")


@pytest.mark.parametrize("size, window, expected", [
    (1000, 100, [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]),  # step (1000 - 100) // 9
    (250, 100, [0, 16, 32, 48, 64, 80, 96, 112, 128, 144]),  # step 150 // 9 = 16
    (105, 100, [0, 1, 2, 3, 4, 5]),  # step 1, (105 - 100) // 1 + 1 positions
    (100, 100, [0]),
    (2000, 200, [0, 200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800]),
])
def test_farms_grid_is_the_authors(size, window, expected):
    assert farms_window_starts(size, window) == expected
    assert farms_window_starts(size, window, max_windows=1) == [0]


def test_farms_windows_with_a_known_esd():
    """A 100 x 200 matrix of 10 x 20 blocks c_ij R_ij (R_ij with orthonormal rows): with 10 x 20 windows the
    grid hits each block exactly once, so the pooled ESD is every c_ij^2 / 20, ten times."""
    g = torch.Generator().manual_seed(0)
    c2 = (1 - np.linspace(0, 0.99, 100)) ** (-1 / 1.5)  # Pareto quantiles: a known tail
    W = torch.zeros(100, 200, dtype=torch.float64)
    for index in range(100):
        i, j = divmod(index, 10)
        R = torch.linalg.qr(torch.randn(20, 10, generator=g, dtype=torch.float64))[0].T  # (10, 20), R R^T = I
        W[10 * i:10 * i + 10, 20 * j:20 * j + 20] = math.sqrt(c2[index]) * R
    pooled, count, shape = farms_esd(W, window=(10, 20))
    assert count == 100 and shape == (10, 20)
    np.testing.assert_allclose(pooled, np.sort(np.repeat(c2 / 20, 10)), rtol=1e-10)
    alpha = fit_power_law(pooled, xmin="median")[0]
    assert alpha == pytest.approx(_naive_median_fit(np.repeat(c2 / 20, 10))[0], rel=1e-9)


def test_farms_removes_the_aspect_ratio_bias_of_iid_matrices():
    """Same i.i.d. entries, different shapes: the plain ESD's alpha moves with the aspect ratio, FARMS's does not."""
    g = torch.Generator().manual_seed(0)
    shapes = [(400, 400), (1600, 400), (400, 1600)]
    matrices = [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes]
    farms = [fit_power_law(farms_esd(W)[0], xmin="median")[0] for W in matrices]
    plain = [fit_power_law(esd(W), xmin="median")[0] for W in matrices]
    assert max(farms) / min(farms) < 1.02, farms
    assert max(plain) / min(plain) > 1.4, plain


def test_small_matrices_get_the_largest_window_of_the_same_aspect_ratio():
    assert farms_window_shape((64, 64)) == (32, 64)
    assert farms_window_shape((256, 64)) == (32, 64)
    assert farms_window_shape((300, 500)) == (100, 200)
    model = make_zoo("ln")
    r = compute_weight_spectra(model, method="farms")
    q = r.names.index("blocks.0.attn.q.weight")  # 8 x 8
    assert r.window_shapes[q] == (4, 8) and r.n_windows[q] == 5  # starts 0..4 along rows, 1 along columns
    assert r.method == "farms" and r.xmin_rule == "median" and r.window == (100, 200)


def test_gpt2_conv1d_weights_are_read_out_by_in():
    transformers = pytest.importorskip("transformers")
    conv = transformers.pytorch_utils.Conv1D(120, 300).double()  # weight stored (in=300, out=120)
    torch.manual_seed(0)
    nn.init.normal_(conv.weight)
    linear = nn.Linear(300, 120, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)  # (out, in)
    a = compute_weight_spectra(nn.Sequential(conv), method="farms")
    b = compute_weight_spectra(nn.Sequential(linear), method="farms")
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-12)
    assert a.window_shapes == ((100, 200),)


def test_model_weight_spectra_and_diverged_matrix():
    model = make_zoo("ln")
    result = compute_weight_spectra(model)
    assert set(result.names) >= {"blocks.0.attn.q.weight", "blocks.0.mlp.fc_in.weight", "embed.weight"}
    q = dict(model.named_parameters())["layers.0._original_component.attn._original_component.q._original_component.weight"]
    np.testing.assert_allclose(result.eigenvalues_of("blocks.0.attn.q.weight"),
                               np.linalg.eigvalsh((q.T @ q).detach().numpy() / 8), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="method"):
        compute_weight_spectra(model, method="tiles")
    with pytest.raises(ValueError, match="window"):
        compute_weight_spectra(model, method="farms", window=(0, 10))

    lin = nn.Linear(30, 20).double()
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    bad = compute_weight_spectra(lin)
    assert bad.names == ("weight",) and math.isnan(bad.alphas[0]) and len(bad.eigenvalues_of("weight")) == 0
    with pytest.raises(ValueError, match="no 2-D weight"):
        compute_weight_spectra(lin, params="bias")
