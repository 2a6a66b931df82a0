"""Small helpers shared by the data layer: safe identifiers, worker counts and ordered pools.

Atomic writes (temp file + os.replace, pid-tagged temp names) are `zoo.atomic`'s.
"""
from __future__ import annotations

import collections
import itertools
import os
import re
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


class InvalidIdentifierError(ValueError):
    """An identifier that would be unsafe to use as part of a file name."""


def validate_identifier(value: object, what: str = "patient_id") -> str:
    """Return ``value`` as str if it is safe in a path (``[A-Za-z0-9_.-]+``, no ``..``), else raise."""
    text = str(value)
    if not _ID_PATTERN.fullmatch(text) or ".." in text:
        raise InvalidIdentifierError(
            f"{what} {text!r} is not allowed: use only letters, digits, '_', '-', '.' and never '..' "
            "(it becomes part of file names)"
        )
    return text


def default_workers(workers: int | None) -> int:
    """``None`` means one worker per available core."""
    if workers is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (got {workers})")
    return workers


WORKER_DIED = ("its worker process died (killed for memory, or a crash inside a native library such as OpenSlide "
               "or libtiff); the other items were processed. Check or convert this file")


def map_in_processes(fn: Callable[[T], R], items: Sequence[T], workers: int, on_crash: Callable[[T, str], R],
                     advance: Callable[[], object] = lambda: None) -> list[R]:
    """[fn(item) for item in items] in a pool of `workers` processes, in order; `advance()` after each item.

    A worker that dies (OOM killer, a segfault in a native reader) breaks the whole pool and every item in flight
    with it. At most `workers` items are in flight, so only those are suspects: each is run again alone in its own
    one-process pool, where the one that kills its worker gets `on_crash(item, WORKER_DIED)` and the others their
    result; the rest continue in a fresh pool. Exceptions raised by `fn` itself propagate as usual."""
    results: list = [None] * len(items)
    queue = collections.deque(range(len(items)))
    while queue:
        suspects: list[int] = []
        with ProcessPoolExecutor(workers) as pool:
            in_flight: dict = {}
            while queue or in_flight:
                while queue and len(in_flight) < workers:
                    i = queue.popleft()
                    in_flight[pool.submit(fn, items[i])] = i
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                broken = False
                for future in finished:
                    i = in_flight.pop(future)
                    try:
                        results[i] = future.result()
                    except BrokenProcessPool:
                        suspects.append(i)
                        broken = True
                        continue
                    advance()
                if broken:
                    suspects += in_flight.values()
                    break
        for i in sorted(suspects):
            try:
                with ProcessPoolExecutor(1) as alone:
                    results[i] = alone.submit(fn, items[i]).result()
            except BrokenProcessPool:
                results[i] = on_crash(items[i], WORKER_DIED)
            advance()
    return results


def ordered_results(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) in the order of `items`, computed in `pool` at most `ahead` items ahead of the consumer.

    The first `ahead` items are submitted now, before the first result is asked for; work still queued when the
    consumer stops (or a result raises) is cancelled."""
    upcoming = iter(items)
    pending = collections.deque((item, pool.submit(fn, item)) for item in itertools.islice(upcoming, ahead))

    def drain() -> Iterator[tuple[T, R]]:
        try:
            while pending:
                item, future = pending.popleft()
                result = future.result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append((following, pool.submit(fn, following)))
                yield item, result
        finally:
            for _, future in pending:
                future.cancel()

    return drain()
