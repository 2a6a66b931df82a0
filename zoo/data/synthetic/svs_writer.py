"""Aperio-style SVS writer: a tiled JPEG pyramid written tile by tile with tifffile.

Level 0 streams from a tile callback and is never held in memory (with ``workers`` > 1, rows of tiles are rendered
in that many processes, at most ``workers + 1`` rows ahead of the writer); each level below is 4x (``level_factor``)
smaller and built from block means of the level above (level 1 of a 40,000 px slide is ~300 MB, the largest array held).
OpenSlide reads the result as vendor ``aperio`` with ``openslide.mpp-x`` and ``aperio.AppMag`` because the
first page's ImageDescription starts with ``Aperio Image Library`` and lower levels are further tiled pages.
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tifffile

from zoo.atomic import atomic_path

from ..files import ordered_results

TILE = 256
LEVEL_FACTOR = 4
MIN_LEVEL_SIZE = 512

TileFn = Callable[[int, int, int, int], np.ndarray]


def _resolution_fields(mpp: float | None, magnification: float | None) -> str:
    """``|AppMag = 20|MPP = 0.5``; a None value leaves its field out (a scan OpenSlide reports no mpp/objective for)."""
    return "".join(f"|{key} = {value:g}" for key, value in (("AppMag", magnification), ("MPP", mpp))
                   if value is not None)


def aperio_description(width: int, height: int, mpp: float | None, magnification: float | None, quality: int,
                       name: str) -> str:
    return (
        f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) "
        f"JPEG/RGB Q={quality}{_resolution_fields(mpp, magnification)}|Filename = {name}"
    )


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter downsampling by a power of two, as repeated 2x2 means (fast on uint8)."""
    while factor > 1:
        h, w = image.shape[:2]
        if h % 2 or w % 2:
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        acc = image[0::2, 0::2].astype(np.uint16) + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2]
        image = ((acc + 2) >> 2).astype(np.uint8)
        factor //= 2
    return image


_worker_render: TileFn | None = None


def _install_render(render: TileFn) -> None:
    global _worker_render
    _worker_render = render


def _render_row(y: int, *, width: int) -> list[np.ndarray]:
    return [_worker_render(x, y, TILE, TILE) for x in range(0, width, TILE)]


def _tile_rows(render: TileFn, width: int, height: int, workers: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(y, level-0 tiles of that row) top to bottom; rendered in `workers` processes when > 1 (the renderer is
    sent to each process once), at most workers + 1 rows ahead."""
    rows = range(0, height, TILE)
    if workers <= 1:
        for y in rows:
            yield y, [render(x, y, TILE, TILE) for x in range(0, width, TILE)]
        return
    with ProcessPoolExecutor(workers, initializer=_install_render, initargs=(render,)) as pool:
        yield from ordered_results(pool, functools.partial(_render_row, width=width), rows, workers + 1)


def write_svs(
    path: str | os.PathLike,
    width: int,
    height: int,
    render: TileFn,
    *,
    mpp: float | None = 0.5,
    magnification: float | None = 20,
    quality: int = 90,
    workers: int = 1,
    level_factor: int = LEVEL_FACTOR,
) -> Path:
    """Write an OpenSlide-readable pyramid; ``render(x, y, w, h)`` returns RGB uint8 [h, w, 3] at level 0 (a
    function of its arguments only: with ``workers`` > 1 tiles are rendered in other processes). Each level is
    ``level_factor`` (a power of two) smaller than the one above; ``mpp`` / ``magnification`` None leave that
    field out of the description."""
    path = Path(path)
    if level_factor < 2 or level_factor & (level_factor - 1):
        raise ValueError(f"level_factor must be a power of two >= 2 (got {level_factor})")
    n_levels = 1
    while max(width, height) / level_factor ** (n_levels - 1) > 2 * MIN_LEVEL_SIZE:
        n_levels += 1
    level1 = None
    if n_levels > 1:
        level1 = np.zeros((-(-height // level_factor), -(-width // level_factor), 3), np.uint8)

    def level0_tiles() -> Iterator[np.ndarray]:
        for y, row in _tile_rows(render, width, height, workers):
            for x, tile in zip(range(0, width, TILE), row):
                if level1 is not None:
                    small = _downsample(tile, level_factor)
                    ly, lx = y // level_factor, x // level_factor
                    region = level1[ly : ly + small.shape[0], lx : lx + small.shape[1]]
                    region[...] = small[: region.shape[0], : region.shape[1]]
                yield tile

    common = dict(tile=(TILE, TILE), photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                  metadata=None)
    bigtiff = width * height * 3 > 2**31
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            tif.write(level0_tiles(), shape=(height, width, 3), dtype=np.uint8,
                      description=aperio_description(width, height, mpp, magnification, quality, path.stem), **common)
            level = level1
            for i in range(1, n_levels):
                if i > 1:
                    level = _downsample(level, level_factor)
                tif.write(level, description=f"Aperio Image Library v12.0.15\r\n{width}x{height} -> "
                          f"{level.shape[1]}x{level.shape[0]} - {_resolution_fields(mpp, magnification)}", **common)
    return path
