"""Reading patches from a slide: OpenSlide handles, level-0 JPEG tiles decoded directly once they match OpenSlide,
and batches streamed in order by reader threads ahead of the consumer (bounded memory).

A patch is ``read_size`` px square at ``level`` (default ``patch_size``); when the two differ (tiling at a target
magnification between pyramid levels) the region is resized to ``patch_size`` with RESAMPLE, the same filter in
training, the feature cache, visualisation and the Triton client. Direct JPEG decoding applies only to level-0
reads without a resize; everything else reads through OpenSlide.

Deciding what to read (tissue detection, the patch grid, coordinate files) is `zoo.data.tile`'s job.
"""
from __future__ import annotations

import os
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import openslide
from PIL import Image

from .files import default_workers, ordered_results

VERIFY_PATCHES = 16
RESAMPLE = Image.Resampling.LANCZOS  # read_size -> patch_size (antialiased, as OpenSlide's get_thumbnail)
DIRECT_JPEG_VENDORS = frozenset({"aperio", "generic-tiff"})


class TilingError(RuntimeError):
    """A slide that cannot be tiled; the message names the slide and what to do."""



def open_slide(path: str | os.PathLike) -> openslide.OpenSlide:
    path = Path(path)
    if not path.is_file():
        raise TilingError(f"{path}: no such slide file")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as e:
        raise TilingError(f"{path}: not a whole-slide image OpenSlide can read ({e}); remove it or convert it "
                          "to a tiled pyramidal TIFF/SVS") from e
    except (openslide.OpenSlideError, OSError) as e:
        raise TilingError(f"{path}: unreadable slide ({e}); the file may be truncated: re-copy or re-export it") from e


def direct_tiles(slide: openslide.OpenSlide, slide_path: str | os.PathLike, level: int):
    """A `JpegTiles` reader for `level` when the slide's format lays each level out as one plain grid of JPEG
    tiles (DIRECT_JPEG_VENDORS) and that level's page is tiled JPEG RGB; else None (OpenSlide reads it). Callers
    still check its pixels against OpenSlide's before using it."""
    from .jpeg_tiles import JpegTiles

    if slide.properties.get(openslide.PROPERTY_NAME_VENDOR) not in DIRECT_JPEG_VENDORS:
        return None
    return JpegTiles.open(slide_path, slide.level_dimensions[level])


def read_patches(slide: openslide.OpenSlide, coords: np.ndarray, patch_size: int, level: int,
                 read_size: int | None = None) -> np.ndarray:
    """Read patches at ``level`` whose level-0 top-left corners are ``coords``: uint8 [N, 3, H, W] RGB.

    ``read_size`` (default ``patch_size``) px are read at ``level`` and resized to ``patch_size`` with RESAMPLE
    when they differ. Pixels outside the slide (transparent in OpenSlide) become white (before any resize).
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    size = patch_size if read_size is None else int(read_size)
    out = np.empty((len(coords), 3, patch_size, patch_size), np.uint8)
    for i, (x, y) in enumerate(coords):
        rgba = np.asarray(slide.read_region((int(x), int(y)), level, (size, size)))
        alpha = rgba[..., 3]
        if size != patch_size:
            rgb = np.ascontiguousarray(rgba[..., :3])
            if not alpha.all():
                rgb[alpha == 0] = 255
            out[i] = np.asarray(Image.fromarray(rgb).resize((patch_size, patch_size), RESAMPLE)).transpose(2, 0, 1)
            continue
        out[i] = rgba[..., :3].transpose(2, 0, 1)  # one strided copy: 3x faster than copying RGB first
        if not alpha.all():
            out[i][:, alpha == 0] = 255
    return out


MAX_DEFAULT_READER_THREADS = 8  # each thread holds a batch in flight: bounds the default's memory on big hosts


def reader_threads(threads: int | None) -> int:
    """``None``: one reader thread per core, at most 8; 0 reads in the caller's thread."""
    if threads is None:
        return min(default_workers(None), MAX_DEFAULT_READER_THREADS)
    if threads < 0:
        raise ValueError(f"reader threads must be >= 0 (got {threads})")
    return threads


def iter_patch_batches(
    slide_path: str | os.PathLike, coords: np.ndarray, patch_size: int, level: int, batch_size: int,
    threads: int | None = None, direct_jpeg: bool = True, read_size: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (coords [b, 2], patches uint8 [b, 3, H, W]) batches of one slide in order, bounded memory.

    ``threads`` >= 1 read ahead in that many background threads, each with its own handles (OpenSlide, the JPEG
    decoder and the pixel copies drop the GIL, so reading overlaps the caller's encoding and scales with cores);
    at most ``threads + 1`` batches are in memory ahead of the caller. ``None``: one thread per core, at most 8.
    0 reads each batch in the caller's thread when it is asked for. ``direct_jpeg``: decode level-0 JPEG tiles
    directly once the first batch matched OpenSlide (PatchSource); False reads everything through OpenSlide.
    ``read_size``: px read at ``level`` per patch side, resized to ``patch_size`` (RESAMPLE) when different (the
    coords file's ``read_size``, zoo.data.tile.patch_read_size).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    threads = reader_threads(threads)
    read_size = None if read_size is None or int(read_size) == patch_size else int(read_size)
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    chunks = [coords[start : start + batch_size] for start in range(0, len(coords), batch_size)]
    if not chunks:
        return
    sources: list[PatchSource] = []
    try:
        for _ in range(max(1, min(threads, len(chunks) - 1))):  # opened here: a bad slide raises in the caller
            sources.append(PatchSource(slide_path, level, direct_jpeg, read_size))
        first = sources[0].read(chunks[0], patch_size)  # the first read checks direct decoding (verify)
        for source in sources[1:]:
            source.follow(sources[0])
        if threads == 0:
            yield chunks[0], first
            for chunk in chunks[1:]:
                yield chunk, sources[0].read(chunk, patch_size)
        else:
            yield from _read_ahead(sources, chunks, first, patch_size)
    finally:
        for source in sources:
            source.close()


class PatchSource:
    """One reader's handles on a slide: OpenSlide, and for level-0 patches of a tiled JPEG TIFF the tiles decoded
    directly (zoo.data.jpeg_tiles.JpegTiles, 2-5x faster), kept only once `verify` saw them match OpenSlide's
    pixels exactly on a real batch. ``read_size``: px read at ``level`` and resized to the patch size asked when
    they differ (read_patches); a resize always reads through OpenSlide. Not thread-safe: one per reader thread."""

    def __init__(self, slide_path: str | os.PathLike, level: int, direct_jpeg: bool = True,
                 read_size: int | None = None):
        self.path, self.level = slide_path, level
        self.read_size = None if read_size is None else int(read_size)
        self.slide = open_slide(slide_path)
        self.tiles = (direct_tiles(self.slide, slide_path, 0)
                      if direct_jpeg and level == 0 and self.read_size is None else None)
        self.checked = self.tiles is None  # direct decoding is decided on the first read

    @property
    def direct(self) -> bool:
        return self.checked and self.tiles is not None

    def verify(self, chunk: np.ndarray, patch_size: int) -> np.ndarray:
        """`chunk`'s patches; direct decoding is kept when its first VERIFY_PATCHES patches are exactly
        OpenSlide's (a different decoder or colour conversion shows on any patch), else OpenSlide reads them."""
        self.checked = True
        if self.tiles is not None:
            try:
                patches = self.tiles.read(chunk, patch_size)
                same = np.array_equal(patches[:VERIFY_PATCHES],
                                      self._read(chunk[:VERIFY_PATCHES], patch_size, direct=False))
            except TilingError:
                raise
            except Exception:  # noqa: BLE001 - a tile tifffile cannot decode: OpenSlide reads this slide
                same = False
            if same:
                return patches
            self.tiles = None
        return self._read(chunk, patch_size, direct=False)

    def follow(self, verified: "PatchSource") -> None:
        """Take the verdict of another source's `verify` on the same slide."""
        self.checked = True
        if not verified.direct:
            self.tiles = None

    def read(self, chunk: np.ndarray, patch_size: int) -> np.ndarray:
        """Patches at `chunk`'s level-0 corners, uint8 [N, 3, P, P]; the first call runs `verify`."""
        if self.read_size is not None and self.read_size != patch_size:
            return self._read(chunk, patch_size, direct=False)
        if not self.checked:
            return self.verify(chunk, patch_size)
        return self._read(chunk, patch_size, direct=self.tiles is not None)

    def _read(self, chunk: np.ndarray, patch_size: int, direct: bool) -> np.ndarray:
        try:
            if direct:
                return self.tiles.read(chunk, patch_size)
            return read_patches(self.slide, chunk, patch_size, self.level, self.read_size)
        except Exception as e:  # noqa: BLE001 - OpenSlide, libjpeg or I/O: all mean the same to the caller
            x, y = (int(v) for v in chunk[0])
            raise TilingError(f"{self.path}: cannot read the {len(chunk)} patches from level-0 ({x}, {y}) on "
                              f"({type(e).__name__}: {e}); the file may be truncated or corrupt: re-copy or "
                              "re-export it") from e

    def close(self) -> None:
        self.slide.close()


def _read_ahead(sources: list[PatchSource], chunks: list[np.ndarray], first: np.ndarray,
                patch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`chunks` in order, the first already read (`first`); the others read by one thread per source, started
    before the first is handed over and kept at most len(sources) + 1 ahead of the consumer."""
    idle: queue.SimpleQueue = queue.SimpleQueue()  # a shared OpenSlide handle would serialise on its lock
    for source in sources:
        idle.put(source)

    def read(chunk: np.ndarray) -> np.ndarray:
        source = idle.get()
        try:
            return source.read(chunk, patch_size)
        finally:
            idle.put(source)

    pool = ThreadPoolExecutor(len(sources), thread_name_prefix="patch-reader")
    try:
        rest = ordered_results(pool, read, chunks[1:], len(sources) + 1)  # submitted before `first` is handed over
        yield chunks[0], first
        yield from rest
    finally:  # the consumer stopped early or a read failed: queued reads are dropped, running ones finish
        pool.shutdown(wait=True, cancel_futures=True)
