"""Wall-clock helpers shared by the benchmarks: medians over repeats, warm-up excluded."""
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


def alternating_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median wall time of each function, timed in alternation so background load hits all alike.

    Each function is called once untimed first (``warmup``); then ``repeats``
    rounds time every function once, in the given order.
    """
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return {name: statistics.median(t) for name, t in times.items()}
