"""Small helpers shared by the data layer: safe identifiers, worker counts and ordered pools.

Atomic writes (temp file + os.replace, pid-tagged temp names) are `zoo.atomic`'s.
"""
from __future__ import annotations

import collections
import itertools
import os
import re
from concurrent.futures import Executor
from typing import Callable, Iterable, Iterator, TypeVar

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
