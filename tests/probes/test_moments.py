import numpy as np
import pytest
import torch

from normlens.probes.moments import Moments


def naive(x):
    x = x.double()
    mu = x.mean(0)
    d = x - mu
    m2, m3, m4 = (d**2).mean(0), (d**3).mean(0), (d**4).mean(0)
    return mu, m2, m3 / m2**1.5, m4 / m2**2 - 3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_moments_match_naive(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1000, 5, generator=g) ** 3 + 7.0).to(dtype)  # skewed, off-centre
    m = Moments.from_batch(x)
    mu, var, skew, kurt = naive(x)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(m.mean, mu, rtol=tol, atol=tol)
    torch.testing.assert_close(m.variance(), var, rtol=tol, atol=tol)
    torch.testing.assert_close(m.skewness(), skew, rtol=tol * 10, atol=tol * 10)
    torch.testing.assert_close(m.excess_kurtosis(), kurt, rtol=tol * 10, atol=tol * 10)


def test_merge_equals_one_pass_and_pooled():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(700, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 5
    full = Moments.from_batch(x)
    parts = [x[:1], x[1:300], x[300:301], x[301:]]
    merged = Moments.empty((4,))
    for p in parts:
        merged = merged.merge(Moments.from_batch(p))
    for a, b in zip((full.count, full.mean, full.m2, full.m3, full.m4),
                    (merged.count, merged.mean, merged.m2, merged.m3, merged.m4)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)
    pooled = full.pooled()
    mu, var, skew, kurt = naive(x.reshape(-1, 1))
    torch.testing.assert_close(pooled.mean, mu[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pooled.variance(), var[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pooled.skewness(), skew[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pooled.excess_kurtosis(), kurt[0], rtol=1e-10, atol=1e-10)


def test_masked_entries_are_excluded():
    x = torch.tensor([[1.0, 2.0], [3.0, float("nan")], [5.0, 4.0]], dtype=torch.float64)
    valid = torch.isfinite(x)
    m = Moments.from_batch(x, valid)
    assert m.count.tolist() == [3.0, 2.0]
    assert m.mean.tolist() == [3.0, 3.0]
    np.testing.assert_allclose(m.variance().numpy(), [8 / 3, 1.0])


def test_empty_and_errors():
    m = Moments.empty((3,))
    assert torch.isnan(m.variance()).all()
    assert Moments.from_batch(torch.zeros(0, 3)).count.sum() == 0
    with pytest.raises(TypeError, match="floating"):
        Moments.from_batch(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="merge"):
        Moments.empty((2,)).merge(Moments.empty((3,)))
