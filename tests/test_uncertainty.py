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


def test_few_seeds_get_students_t_interval_of_the_mean():
    """3 values: mean ± t(0.975, 2) · s / sqrt(3), t(0.975, 2) = 4.302652729911275 (tables)."""
    values = np.array([2.10, 2.25, 2.19])
    iv = bootstrap_interval(values)
    half = 4.302652729911275 * values.std(ddof=1) / np.sqrt(3)
    assert iv.method == "t" and iv.n == 3
    assert iv.low == pytest.approx(values.mean() - half, rel=1e-9)
    assert iv.high == pytest.approx(values.mean() + half, rel=1e-9)
    paired = paired_difference_interval(values + 0.1, values)
    assert paired.method == "t" and paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    # many values, or another statistic: the bootstrap
    assert bootstrap_interval(np.arange(30.0)).method == "BCa"
    assert bootstrap_interval(values, statistic=np.median).method in ("BCa", "percentile")
    with pytest.raises(ValueError, match="interval of the mean"):
        bootstrap_interval(values, statistic=np.median, method="t")


def test_with_three_seeds_the_t_interval_covers_and_the_bootstrap_does_not():
    """Normal samples of 3: the t interval covers the true mean ~95 % of the time, the percentile
    bootstrap far less (why "auto" uses t for few values)."""
    rng = np.random.default_rng(0)
    samples = rng.normal(1.0, 1.0, size=(200, 3))
    t_cover = np.mean([(iv := bootstrap_interval(s, method="t")).low <= 1.0 <= iv.high for s in samples])
    boot_cover = np.mean([(iv := bootstrap_interval(s, method="percentile", n_resamples=499)).low <= 1.0 <= iv.high
                          for s in samples])
    assert 0.90 <= t_cover <= 0.99
    assert boot_cover < 0.85
