"""Wall-clock helpers shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def seconds(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: bool = False) -> float:
    """Median wall time over ``repeats`` calls (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
    return statistics.median(seconds(fn) for _ in range(repeats))
