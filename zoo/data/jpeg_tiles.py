"""Pixels decoded straight from a tiled TIFF's JPEG tiles (SVS and generic tiled TIFFs).

OpenSlide composites every region through cairo: on the machines measured here that costs 3-5x the JPEG decode
itself (about 35 ns per pixel against 6-7 for libjpeg-turbo through imagecodecs). This reader decodes the tiles a
batch of patches (or a region) covers with tifffile and copies the pixels out. It is used for level-0 patches and
for the level a thumbnail is made from, only on a tiled, 8-bit, 3-sample JPEG page of OpenSlide's size for that
level, and only after pixels it decoded matched OpenSlide's exactly (zoo.data.patches.PatchSource,
zoo.data.tile.read_thumbnail); anything else is read by OpenSlide.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

JPEG = 7  # TIFF Compression tag value


class JpegTiles:
    """One reader's handle on one pyramid level (not thread-safe: one per thread). The TIFF's tile index is parsed
    once; the file is opened only while a batch is read, so a dataset caching one reader per slide holds no
    descriptors."""

    def __init__(self, path: Path, page):
        self.path = path
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self._across = -(-self.width // self.tile_w)
        self._offsets, self._counts = page.dataoffsets, page.databytecounts
        self._jpegtables, self._decode = page.jpegtables, page.decode

    @classmethod
    def open(cls, path: str | os.PathLike, dimensions: tuple[int, int]) -> "JpegTiles | None":
        """The reader for `path`'s first page of size `dimensions` (OpenSlide's size of the level wanted) when that
        page is tiled JPEG RGB; None for anything else."""
        import tifffile

        try:
            tif = tifffile.TiffFile(Path(path))
        except Exception:  # noqa: BLE001 - not a TIFF tifffile reads (e.g. .mrxs): OpenSlide reads it
            return None
        with tif:
            page = next((p for p in tif.pages if (p.imagewidth, p.imagelength) == tuple(dimensions)), None)
            if (page is None or not page.is_tiled or page.compression != JPEG or page.samplesperpixel != 3
                    or page.bitspersample != 8 or page.planarconfig != 1 or page.imagedepth != 1):
                return None
            return cls(Path(path), page)

    def _tile(self, handle, tx: int, ty: int) -> np.ndarray | None:
        """Decoded tile (its part inside the image), or None where the file has no data for it."""
        index = ty * self._across + tx
        count = int(self._counts[index])
        if count == 0:
            return None
        handle.seek(int(self._offsets[index]))
        segment = self._decode(handle.read(count), index, jpegtables=self._jpegtables)[0]
        h = min(self.tile_h, self.height - ty * self.tile_h)
        w = min(self.tile_w, self.width - tx * self.tile_w)
        return segment.reshape(self.tile_h, self.tile_w, 3)[:h, :w]

    def read(self, coords: np.ndarray, patch_size: int) -> np.ndarray:
        """Patches whose top-left corners are `coords` (this level's pixels): uint8 [N, 3, P, P], white outside the
        image. Each tile is decoded once per call (patches of one batch sharing a tile share the decode)."""
        out = np.full((len(coords), 3, patch_size, patch_size), 255, np.uint8)
        tiles: dict[tuple[int, int], np.ndarray | None] = {}
        with open(self.path, "rb") as handle:
            for i, (x, y) in enumerate(np.asarray(coords, np.int64).reshape(-1, 2)):
                self._paste(handle, tiles, int(x), int(y), out[i].transpose(1, 2, 0))
        return out

    def region(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """uint8 [height, width, 3] RGB from (x, y) of this level, white outside the image."""
        out = np.full((height, width, 3), 255, np.uint8)
        with open(self.path, "rb") as handle:
            self._paste(handle, {}, x, y, out)
        return out

    def _paste(self, handle, tiles: dict, x: int, y: int, dest: np.ndarray) -> None:
        """Copy the image's pixels under `dest` ([H, W, 3], top-left at (x, y)) into it, decoding tiles not in
        `tiles` yet; parts outside the image or in tiles without data are left as they are."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + dest.shape[1], self.width), min(y + dest.shape[0], self.height)
        for ty in range(y0 // self.tile_h, -(-y1 // self.tile_h)):
            for tx in range(x0 // self.tile_w, -(-x1 // self.tile_w)):
                if (tx, ty) not in tiles:
                    tiles[tx, ty] = self._tile(handle, tx, ty)
                tile = tiles[tx, ty]
                if tile is None:
                    continue
                left, top = tx * self.tile_w, ty * self.tile_h
                ax, ay = max(x0, left), max(y0, top)
                bx, by = min(x1, left + tile.shape[1]), min(y1, top + tile.shape[0])
                if bx > ax and by > ay:
                    dest[ay - y:by - y, ax - x:bx - x] = tile[ay - top:by - top, ax - left:bx - left]
