"""Small helpers shared by the data layer: atomic writes, safe identifiers, worker counts and ordered pools."""
from __future__ import annotations

import collections
import contextlib
import itertools
import os
import re
import tempfile
from concurrent.futures import Executor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

from zoo.atomic import remove_orphaned_temps, temp_prefix  # noqa: F401 - re-exported for the data layer

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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the final suffix(es) so writers that dispatch on the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


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
