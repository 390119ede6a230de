"""Confidence intervals for comparisons over seeds or batches.

A difference between two models is reported with the number of seeds (or batches)
and a confidence interval. The mean of few values (fewer than :data:`SMALL_N`,
e.g. 3 seeds) gets Student's t interval, mean ± t_{n-1} · s / sqrt(n): the
bootstrap's percentile and BCa intervals undercover badly at such n (with 3
values they are about as wide as the values' own range; Efron & Tibshirani
1993, ch. 13-14). Larger samples, and statistics other than the mean, get a
bootstrap interval computed by ``scipy.stats.bootstrap``. Paired comparisons
(same seed, same data for both models) use the per-pair differences.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as scipy_stats

METHODS = ("auto", "t", "BCa", "percentile", "basic")
SMALL_N = 20  # below this many values the mean's interval is Student's t under method="auto"


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval over ``n`` values."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    method: str

    def excludes(self, value: float = 0.0) -> bool:
        """True when the whole interval lies on one side of ``value`` (e.g. a difference is not 0)."""
        return bool(self.low > value or self.high < value)

    def __str__(self) -> str:
        if not math.isfinite(self.low):
            return f"{self.estimate:.4g} (n={self.n}, no interval)"
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}] ({self.level:.0%}, n={self.n})"

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_interval(values: Sequence[float] | np.ndarray, *, statistic: Callable = np.mean,
                       level: float = 0.95, n_resamples: int = 9999, method: str = "auto",
                       seed: int = 0) -> Interval:
    """Confidence interval of ``statistic`` over the finite entries of ``values``.

    ``method``: "auto" (default) gives Student's t interval of the mean when
    ``statistic`` is ``np.mean`` and there are fewer than :data:`SMALL_N` values,
    and a BCa bootstrap otherwise; "t" forces the t interval (mean only);
    "BCa", "percentile" and "basic" force that bootstrap. Fewer than two finite
    values give NaN bounds (no interval); identical values give a zero-width
    interval. BCa falls back to the percentile method when its acceleration is
    undefined. ``Interval.method`` says which interval was computed.

    >>> bootstrap_interval([1.0, 1.0, 1.0]).low
    1.0
    >>> iv = bootstrap_interval([1.0, 2.0, 3.0])  # 3 values: mean ± t(0.975, 2) · 1 / sqrt(3)
    >>> iv.method, round(iv.low, 3), round(iv.high, 3)
    ('t', -0.484, 4.484)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    n = int(data.size)
    estimate = float(statistic(data)) if n else math.nan
    if method == "t" and statistic is not np.mean:
        raise ValueError("method='t' is the interval of the mean; pass statistic=np.mean or a bootstrap method")
    if method == "auto":
        method = "t" if statistic is np.mean and n < SMALL_N else "BCa"
    if n < 2:
        return Interval(estimate, math.nan, math.nan, level, n, "none")
    if np.all(data == data[0]):
        return Interval(estimate, estimate, estimate, level, n, method)
    if method == "t":
        half = float(scipy_stats.t.ppf((1 + level) / 2, n - 1)) * float(np.std(data, ddof=1)) / math.sqrt(n)
        return Interval(estimate, estimate - half, estimate + half, level, n, "t")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scipy_stats.bootstrap((data,), statistic, confidence_level=level, n_resamples=n_resamples,
                                       method=method, random_state=np.random.default_rng(seed),
                                       vectorized=False)
        low, high = result.confidence_interval
        if method == "BCa" and not (math.isfinite(low) and math.isfinite(high)):
            result = scipy_stats.bootstrap((data,), statistic, confidence_level=level, n_resamples=n_resamples,
                                           method="percentile", random_state=np.random.default_rng(seed),
                                           vectorized=False)
            low, high = result.confidence_interval
            method = "percentile"
    return Interval(estimate, float(low), float(high), level, n, method)


def paired_difference_interval(a: Sequence[float], b: Sequence[float], **kwargs) -> Interval:
    """Interval of the mean of ``a[i] - b[i]`` (pairs share a seed or a batch)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    return bootstrap_interval(a - b, **kwargs)


def standard_error(values: Sequence[float] | np.ndarray) -> float:
    """Standard error of the mean, s / sqrt(n) (ddof=1) over finite values; NaN for n < 2."""
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    return float(data.std(ddof=1) / math.sqrt(data.size)) if data.size >= 2 else math.nan
