"""Which slides one job of many does: ``--slides-list FILE`` and ``--shard I/N`` (job arrays: Slurm, SGE, k8s).

The slide list is sorted by slide id and split round-robin: shard I of N takes positions I, I + N, I + 2N, ...,
so N shards of the same list together hold every slide exactly once, whatever machine or order they run in.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, TypeVar

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; ValueError with the reason otherwise."""
    parts = str(text).strip().split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"--shard must be I/N with whole numbers, e.g. 0/4 (got {text!r})") from None
    if count < 1:
        raise ValueError(f"--shard {text}: N must be >= 1")
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: I must be in 0..{count - 1} (shards are numbered from 0, as "
                         "SLURM_ARRAY_TASK_ID with --array=0-<N-1>)")
    return index, count


def shard_items(items: Sequence[T], shard: tuple[int, int] | None, key=None) -> list[T]:
    """Shard `shard` = (I, N) of `items` sorted by `key` (default: the items); all of them when None."""
    ordered = sorted(items, key=key)
    if shard is None:
        return ordered
    index, count = shard
    return ordered[index::count]


def read_slides_list(path: str | os.PathLike) -> list[str]:
    """Entries of a slides-list file: one slide per line (a file name, path or slide id); blank lines and
    ``#`` comments are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FileNotFoundError(f"--slides-list {path}: cannot read it ({exc.strerror or exc})") from exc
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def select_listed(available: dict[str, T], listed: Sequence[str], where: str) -> dict[str, T]:
    """The entries of `available` (slide id -> anything) named in `listed` (ids, file names or paths: matched by
    stem); FileNotFoundError naming every listed slide that is not there."""
    wanted = {Path(entry).stem if Path(entry).suffix.lower() in _SLIDE_LIKE else Path(entry).name: entry
              for entry in listed}
    missing = [entry for stem, entry in wanted.items() if stem not in available]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"--slides-list names {len(missing)} slide(s) not in {where}: {shown}")
    return {stem: available[stem] for stem in wanted}


_SLIDE_LIKE = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".h5")
