"""The float64 oracle of the kernel tests, checked against torch's own definitions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from normlens.kernels import reference

TOL = dict(rtol=1e-12, atol=1e-12)


def _inputs(shape=(4, 6, 37), seed=0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    n = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 + 0.7
    w = 1.0 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, w, b


def test_layer_norm_matches_torch():
    x, w, b = _inputs()
    y, mean, rstd = reference.layer_norm(x, w, b, 1e-5)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, F.layer_norm(x, (x.shape[-1],), w, b, 1e-5), **TOL)
    torch.testing.assert_close(mean, x.mean(-1), **TOL)
    torch.testing.assert_close(rstd, 1.0 / torch.sqrt(x.var(-1, unbiased=False) + 1e-5), **TOL)
    y_plain, _, _ = reference.layer_norm(x, None, None, 1e-5)
    torch.testing.assert_close(y_plain, F.layer_norm(x, (x.shape[-1],), eps=1e-5), **TOL)


def test_rms_norm_matches_torch():
    x, w, _ = _inputs(seed=1)
    y, rstd = reference.rms_norm(x, w, 1e-5)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, F.rms_norm(x, (x.shape[-1],), w, 1e-5), **TOL)
    torch.testing.assert_close(rstd, 1.0 / torch.sqrt(x.pow(2).mean(-1) + 1e-5), **TOL)


def test_dyt_matches_its_definition():
    x, w, b = _inputs(seed=2)
    alpha = torch.tensor(0.7, dtype=torch.float64)
    y = reference.dyt(x, alpha, w, b)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, w * torch.tanh(alpha * x) + b, **TOL)


def test_attention_entropy_matches_explicit_causal_softmax():
    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    batch, heads, n, d_head = 2, 3, 9, 8
    q = torch.randn(batch, heads, n, d_head, generator=g, dtype=torch.float64) * 2.0
    k = torch.randn(batch, heads, n, d_head, generator=g, dtype=torch.float64) * 2.0
    entropy, normalized = reference.attention_entropy(q, k, causal=True)
    assert entropy.dtype == torch.float64 and entropy.shape == (batch, heads, n)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d_head)  # (b, h, q, k)
    for i in range(n):
        visible = scores[..., i, : i + 1]  # query i sees keys 0..i
        expected = -(F.softmax(visible, -1) * F.log_softmax(visible, -1)).sum(-1)  # (b, h)
        torch.testing.assert_close(entropy[..., i], expected, **TOL)
        expected_norm = expected / math.log(i + 1) if i > 0 else torch.zeros_like(expected)
        torch.testing.assert_close(normalized[..., i], expected_norm, **TOL)
