"""Bootstrap intervals against closed forms and simulated coverage."""
import math

import numpy as np
import pytest

from normlens.uncertainty import bootstrap_interval, paired_difference_interval, standard_error


def test_standard_error_closed_form():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    assert standard_error(x) == pytest.approx(np.std(x, ddof=1) / 2)
    assert math.isnan(standard_error([3.0]))


def test_interval_covers_the_mean_about_as_often_as_promised():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        sample = rng.normal(0.5, 1.0, size=30)
        ci = bootstrap_interval(sample, n_resamples=999, seed=trial, method="percentile")
        hits += ci.low <= 0.5 <= ci.high
    assert 0.88 <= hits / 200 <= 0.99


def test_large_normal_sample_matches_the_normal_interval():
    rng = np.random.default_rng(0)
    sample = rng.normal(2.0, 3.0, size=2000)
    ci = bootstrap_interval(sample, n_resamples=2000)
    half = 1.959964 * sample.std(ddof=1) / math.sqrt(sample.size)
    assert ci.low == pytest.approx(sample.mean() - half, abs=0.03)
    assert ci.high == pytest.approx(sample.mean() + half, abs=0.03)


def test_degenerate_and_tiny_samples():
    assert bootstrap_interval([2.0, 2.0]).low == 2.0
    one = bootstrap_interval([1.0, float("nan")])
    assert one.n == 1 and math.isnan(one.low) and "no interval" in str(one)
    with pytest.raises(ValueError, match="method"):
        bootstrap_interval([1.0, 2.0], method="magic")


def test_paired_difference_removes_shared_seed_noise():
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 1.0, size=12)  # large, shared by both models
    a = 2.00 + seed_effect + rng.normal(0, 0.01, 12)
    b = 1.95 + seed_effect + rng.normal(0, 0.01, 12)
    paired = paired_difference_interval(a, b)
    assert paired.excludes(0.0) and paired.low > 0.03
    unpaired_width = bootstrap_interval(a).high - bootstrap_interval(a).low
    assert paired.high - paired.low < unpaired_width / 10
    with pytest.raises(ValueError, match="equal shapes"):
        paired_difference_interval([1.0, 2.0], [1.0])
