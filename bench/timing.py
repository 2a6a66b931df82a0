"""Helpers around pytest-benchmark: few rounds (each round is a whole slide), throughput into extra_info, and
ratios taken in interleaved rounds."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping


def _record_rates(benchmark, info: dict[str, Any]) -> float | None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # None when benchmarks are disabled (each case runs once, as a test)
        return None
    median = stats.stats.median
    benchmark.extra_info["median_s"] = round(median, 4)
    if "patches" in info and median > 0:
        benchmark.extra_info["patches_per_s"] = round(info["patches"] / median, 1)
    if info.get("slides"):
        benchmark.extra_info["slides_per_s"] = round(info["slides"] / median, 4)
    return median


def measure(benchmark, fn: Callable[[], Any], rounds: int, group: str, warmup: int = 0, **info: Any) -> Any:
    """Time `fn` for `rounds` rounds; record `info` and patches/s + slides/s (from the median) in extra_info."""
    benchmark.group = group
    benchmark.extra_info.update(info)
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    _record_rates(benchmark, info)
    return result


def interleaved(benchmark, reference: Callable[[], Any], others: Mapping[str, Callable[[], Any]], rounds: int,
                group: str, **info: Any) -> Any:
    """Time `reference` under the benchmark clock and, right before each of its rounds, one run of each of
    `others` (timed here, outside that clock). For every other, extra_info gets `speedup_<name>`: the median over
    rounds of reference s / other s, and `speedup_<name>_rounds`. Pairing the rounds lets load drift on a shared
    machine hit both sides of a ratio alike, which a ratio of two medians taken minutes apart does not."""
    seconds: dict[str, list[float]] = {name: [] for name in others}

    def time_others() -> None:
        for name, fn in others.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)

    benchmark.group = group
    benchmark.extra_info.update(info)
    result = benchmark.pedantic(reference, setup=time_others, rounds=rounds, iterations=1)
    if _record_rates(benchmark, info) is None:
        return result
    baseline = list(benchmark.stats.stats.data)
    for name, times in seconds.items():
        assert len(times) == len(baseline), f"{name}: {len(times)} rounds against {len(baseline)} reference rounds"
        ratios = [b / t for b, t in zip(baseline, times)]
        benchmark.extra_info[f"speedup_{name}"] = round(statistics.median(ratios), 3)
        benchmark.extra_info[f"speedup_{name}_rounds"] = [round(r, 3) for r in ratios]
    return result
