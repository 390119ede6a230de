"""DyT's S-curve: pre-affine samples, the tanh-vs-linear fit, cheap uniform sampling."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import normlens
from normlens.models.norms import DyT, LayerNorm
from normlens.probes.attach import attach
from normlens.probes.norm_probes import SCurveProbe, SCurveResult, fit_s_curve


def _sample(module, inputs, n_samples=2000, seed=0, **kwargs):
    probe = SCurveProbe(n_samples=n_samples, seed=seed)
    with attach(module, probe), torch.no_grad():
        for x in inputs:
            module(x, **kwargs)
    return probe.result()


def test_dyt_samples_are_pre_affine_and_the_fit_recovers_alpha(tmp_path):
    dyt = DyT(64, alpha0=0.8, output_scale=0.5).double()  # LayerNorm-Scaling-like output scale
    with torch.no_grad():
        dyt.weight.fill_(2.5)
        dyt.bias.fill_(0.3)
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(4, 16, 64, generator=g, dtype=torch.float64) * s for s in (3.0, 1.0)]
    res = _sample(nn.Sequential(dyt), inputs)
    slot = res.slots[0]
    x, y = res.inputs[slot], res.outputs[slot]
    assert res.pre_affine[slot] and len(x) == 2000
    np.testing.assert_allclose(y, np.tanh(float(dyt.alpha.detach()) * x), rtol=0, atol=1e-12)  # not 0.5 * (2.5 tanh + 0.3)
    fit = res.fit_frame().iloc[0]
    assert fit.tanh_b == pytest.approx(0.8, rel=1e-5) and fit.tanh_a == pytest.approx(1.0, rel=1e-5)
    assert abs(fit.tanh_c) < 1e-6 and fit.r2_tanh > 1 - 1e-9
    assert fit.r2_linear < 0.95 and fit["shape"] == "tanh"
    res.save(tmp_path)
    back = SCurveResult.load(tmp_path)
    assert back.pre_affine == res.pre_affine and back.n_seen == res.n_seen
    np.testing.assert_array_equal(back.outputs[slot], y)
    assert (tmp_path / "s_curve_fit.parquet").exists()


def test_layer_norm_at_small_inputs_is_linear():
    ln = LayerNorm(64).double()
    with torch.no_grad():
        ln.weight.fill_(3.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, 64, generator=g, dtype=torch.float64) * 0.01
    res = _sample(nn.Sequential(ln), [x])
    slot = res.slots[0]
    xin = res.inputs[slot]
    ref = F.layer_norm(x, (64,), eps=ln.eps).reshape(-1)  # pre-affine, independent reference
    lookup = dict(zip(x.reshape(-1).tolist(), ref.tolist()))
    np.testing.assert_allclose(res.outputs[slot], [lookup[v] for v in xin], rtol=0, atol=1e-12)
    fit = res.fit_frame().iloc[0]
    assert fit["shape"] == "linear" and fit.r2_linear > 0.95


def test_fit_on_closed_forms():
    x = np.linspace(-5, 5, 401)
    tanh = fit_s_curve(x, 2.0 * np.tanh(0.3 * x) + 0.1)
    assert tanh["tanh_a"] == pytest.approx(2.0, rel=1e-6) and tanh["tanh_b"] == pytest.approx(0.3, rel=1e-6)
    assert tanh["tanh_c"] == pytest.approx(0.1, abs=1e-8)
    line = fit_s_curve(x, 4.0 * x - 1.0)
    assert line["shape"] == "linear" and line["r2_linear"] == pytest.approx(1.0)
    assert line["linear_slope"] == pytest.approx(4.0) and line["linear_intercept"] == pytest.approx(-1.0)
    assert fit_s_curve(x, np.ones_like(x))["shape"] == "undefined"


@pytest.mark.parametrize("norm", ["ln", "rms", "dyt", "lnfree", "none"])
def test_zoo_slots_sample_the_normalized_hook(norm):
    model = normlens.build_model(norm=norm, placement="scaled", n_layers=2, d_model=16, n_heads=2).double().eval()
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    res = _sample(model, [tokens], n_samples=64)
    assert set(res.slots) == {"blocks.0.ln1", "blocks.0.ln2", "blocks.1.ln1", "blocks.1.ln2", "ln_final"}
    assert all(res.pre_affine.values()) == (norm != "none")
    if norm in ("ln", "lnfree"):
        _, cache = model.run_with_cache(tokens)
        x = cache["blocks.1.ln2.hook_in"]
        want = cache["blocks.1.ln2.hook_normalized"].reshape(-1)
        lookup = dict(zip(x.reshape(-1).tolist(), want.tolist()))
        assert all(lookup[a] == b for a, b in zip(res.inputs["blocks.1.ln2"], res.outputs["blocks.1.ln2"]))


def test_sampling_is_uniform_over_real_entries():
    """Two batches of 100 and 300 real entries: about a quarter of the sample from the first; pads never."""
    class Masked(nn.Module):  # a plain module that takes the mask keyword, as a bridge does
        def __init__(self):
            super().__init__()
            self.inner = nn.Identity()

        def forward(self, x, attention_mask=None):
            return self.inner(x)

    ident = Masked()
    first = torch.arange(100, dtype=torch.float64).view(1, 10, 10)
    second = torch.full((2, 20, 10), -1.0, dtype=torch.float64)  # padding marked -1
    second[:, 5:] = torch.arange(100, 400, dtype=torch.float64).view(2, 15, 10)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[:, :5] = 0
    probe = SCurveProbe(slots=["inner"], n_samples=4000, seed=5)
    with attach(ident, probe), torch.no_grad():
        ident(first)
        ident(second, attention_mask=mask)
    x = probe.result().inputs["inner"]
    assert (x >= 0).all()  # no padded token sampled
    assert probe.result().n_seen["inner"] == 400
    assert abs((x < 100).mean() - 0.25) < 0.03
    counts = np.bincount(x.astype(int), minlength=400)
    assert counts.max() < 40  # 10 expected per entry: no entry dominates
