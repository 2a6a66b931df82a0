"""Helpers around pytest-benchmark: few rounds (each round is a whole slide), throughput into extra_info."""
from __future__ import annotations

from typing import Any, Callable


def measure(benchmark, fn: Callable[[], Any], rounds: int, group: str, warmup: int = 0, **info: Any) -> Any:
    """Time `fn` for `rounds` rounds; record `info` and patches/s + slides/s (from the median) in extra_info."""
    benchmark.group = group
    benchmark.extra_info.update(info)
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled (each case runs once, as a test)
        median = stats.stats.median
        benchmark.extra_info["median_s"] = round(median, 4)
        if "patches" in info and median > 0:
            benchmark.extra_info["patches_per_s"] = round(info["patches"] / median, 1)
        if info.get("slides"):
            benchmark.extra_info["slides_per_s"] = round(info["slides"] / median, 4)
    return result
