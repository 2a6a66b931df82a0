"""Deep-zoom tiles of the cohort's slides (`openslide.deepzoom.DeepZoomGenerator` over each slide's own pyramid)
and the overlays drawn on them: the ground-truth tumour mask and the patch-attention heatmap, as RGBA PNGs.

Open slides are kept in a small LRU; a slide that fails to open is remembered with its error (keyed by the file's
size and mtime, so a replaced file is tried again) and reported as SlideUnreadable, never a crash of the page.
"""
from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.viewer.cohort import Cohort, Slide

TILE_SIZE = 254   # + 2 px overlap = 256 px tiles, OpenSeadragon's and DeepZoomGenerator's usual
OVERLAP = 1
TILE_FORMAT = "jpeg"
JPEG_QUALITY = 80
HEATMAP_MAX_SIDE = 2048  # px of the heatmap overlay's longer side (the patch grid is far coarser)
COLORMAP = "jet"


class SlideUnreadable(RuntimeError):
    """The slide file exists but OpenSlide cannot open or read it."""


class TileNotFound(LookupError):
    """A deep-zoom level or tile address outside the slide's pyramid."""


@dataclass
class _Open:
    slide: Any
    deepzoom: Any
    stamp: tuple[int, int]


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def colormap_lut(name: str = COLORMAP) -> np.ndarray:
    """uint8 [256, 3] colours of a matplotlib colormap (the heatmap and its legend use the same one)."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def colormap_stops(name: str = COLORMAP, n: int = 11) -> list[str]:
    lut = colormap_lut(name)
    return ["#%02x%02x%02x" % tuple(lut[int(round(i * 255 / (n - 1)))]) for i in range(n)]


class SlideStore:
    def __init__(self, cohort: Cohort, max_open: int = 16, tile_size: int = TILE_SIZE, overlap: int = OVERLAP):
        self.cohort, self.max_open, self.tile_size, self.overlap = cohort, max_open, tile_size, overlap
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._errors: dict[str, tuple[tuple[int, int], str]] = {}
        self._lock = threading.Lock()

    # -- opening ----------------------------------------------------------------------------------------------
    def _get(self, slide_id: str) -> _Open:
        record = self.cohort.slide(slide_id)
        try:
            stamp = _stamp(record.path)
        except OSError as exc:
            raise SlideUnreadable(f"slide {slide_id}: {record.path.name} cannot be read ({exc})") from None
        with self._lock:
            entry = self._open.get(slide_id)
            if entry is not None and entry.stamp == stamp:
                self._open.move_to_end(slide_id)
                return entry
            failed = self._errors.get(slide_id)
            if failed is not None and failed[0] == stamp:
                raise SlideUnreadable(failed[1])
        entry = self._open_slide(record, stamp)  # outside the lock: opening a large slide takes a while
        with self._lock:
            old = self._open.pop(slide_id, None)
            self._open[slide_id] = entry
            while len(self._open) > self.max_open:
                _, evicted = self._open.popitem(last=False)
                evicted.slide.close()
        if old is not None and old is not entry:
            old.slide.close()
        return entry

    def _open_slide(self, record: Slide, stamp: tuple[int, int]) -> _Open:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        try:
            slide = openslide.OpenSlide(str(record.path))
            deepzoom = DeepZoomGenerator(slide, tile_size=self.tile_size, overlap=self.overlap, limit_bounds=False)
        except Exception as exc:  # OpenSlideError, OpenSlideUnsupportedFormatError, OSError, ...
            message = (f"slide {record.slide_id}: OpenSlide cannot open {record.path.name} "
                       f"({type(exc).__name__}: {exc})")
            with self._lock:
                self._errors[record.slide_id] = (stamp, message)
            raise SlideUnreadable(message) from None
        return _Open(slide, deepzoom, stamp)

    def check(self, slide_id: str) -> str | None:
        """None when the slide opens, else the reason it does not."""
        try:
            self._get(slide_id)
        except SlideUnreadable as exc:
            return str(exc)
        return None

    def is_open(self, slide_id: str) -> bool:
        with self._lock:
            return slide_id in self._open

    def close(self) -> None:
        with self._lock:
            for entry in self._open.values():
                entry.slide.close()
            self._open.clear()

    # -- deep zoom --------------------------------------------------------------------------------------------
    def info(self, slide_id: str) -> dict[str, Any]:
        import openslide

        entry = self._get(slide_id)
        props = entry.slide.properties
        mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        width, height = entry.slide.dimensions
        return {"width": int(width), "height": int(height), "levels": int(entry.slide.level_count),
                "level_downsamples": [float(d) for d in entry.slide.level_downsamples],
                "deepzoom_levels": int(entry.deepzoom.level_count),
                "mpp": float(mpp) if mpp else None,
                "objective_power": props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)}

    def dzi(self, slide_id: str) -> str:
        return self._get(slide_id).deepzoom.get_dzi(TILE_FORMAT)

    def tile(self, slide_id: str, level: int, col: int, row: int) -> bytes:
        deepzoom = self._get(slide_id).deepzoom
        if not 0 <= level < deepzoom.level_count:
            raise TileNotFound(f"slide {slide_id}: deep-zoom level {level} outside 0..{deepzoom.level_count - 1}")
        cols, rows = deepzoom.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileNotFound(f"slide {slide_id}: tile ({col}, {row}) outside level {level}'s {cols} x {rows} tiles")
        try:
            tile = deepzoom.get_tile(level, (col, row))
        except ValueError as exc:
            raise TileNotFound(f"slide {slide_id}: {exc}") from None
        except Exception as exc:  # a damaged tile inside an otherwise readable file
            raise SlideUnreadable(f"slide {slide_id}: tile {level}/{col}_{row} cannot be read "
                                  f"({type(exc).__name__}: {exc})") from None
        return jpeg_bytes(tile)

    def region(self, slide_id: str, x: int, y: int, size_level0: int, out_px: int = 160) -> bytes:
        """JPEG of the level-0 square (x, y, size_level0) shrunk to out_px, read from the best pyramid level."""
        slide = self._get(slide_id).slide
        downsample = size_level0 / out_px
        level = slide.get_best_level_for_downsample(max(downsample, 1.0))
        scale = slide.level_downsamples[level]
        side = max(1, int(round(size_level0 / scale)))
        image = slide.read_region((int(x), int(y)), level, (side, side)).convert("RGB")
        if side != out_px:
            image = image.resize((out_px, out_px), Image.LANCZOS)
        return jpeg_bytes(image, quality=85)

    # -- overlays ---------------------------------------------------------------------------------------------
    def mask_overlay(self, slide_id: str) -> tuple[bytes, dict[str, Any]] | None:
        """RGBA PNG of the tumour mask (outline opaque, inside translucent) and where it lies on the slide; None
        when the cohort has no mask for the slide."""
        from scipy.ndimage import binary_erosion

        record = self.cohort.slide(slide_id)
        if record.mask_png is None:
            return None
        downsample = float(json.loads(record.mask_json.read_text())["downsample"])
        mask = np.asarray(Image.open(record.mask_png).convert("L")) > 127
        edge = mask & ~binary_erosion(mask, iterations=max(1, round(max(mask.shape) / 400)))
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[mask] = (0, 255, 170, 70)
        rgba[edge] = (0, 255, 170, 255)
        return png_bytes(Image.fromarray(rgba, "RGBA")), {"downsample": downsample, "width": mask.shape[1],
                                                          "height": mask.shape[0]}

    @staticmethod
    def heatmap_downsample(width: int, height: int) -> tuple[float, int, int]:
        """(level-0 px per heatmap px, heatmap width, heatmap height) of a width x height slide."""
        downsample = max(1.0, max(width, height) / HEATMAP_MAX_SIDE)
        return downsample, int(np.ceil(width / downsample)), int(np.ceil(height / downsample))

    @staticmethod
    def heatmap_overlay(width: int, height: int, coords: np.ndarray, attention: np.ndarray,
                        patch_size_level0: float) -> tuple[bytes, dict[str, Any]]:
        """RGBA PNG, each patch a square coloured by its attention (min-max over the slide's patches, COLORMAP),
        transparent where no patch was kept; `downsample` maps its pixels to level 0."""
        downsample, w, h = SlideStore.heatmap_downsample(width, height)
        rgba = np.zeros((h, w, 4), np.uint8)
        attention = np.asarray(attention, np.float64)
        lo, hi = (float(attention.min()), float(attention.max())) if len(attention) else (0.0, 0.0)
        norm = (attention - lo) / (hi - lo) if hi > lo else np.full(len(attention), 1.0)
        lut = colormap_lut()
        for (x, y), value in zip(np.asarray(coords, np.float64), norm):
            x0, y0 = int(x / downsample), int(y / downsample)
            x1 = max(int(np.ceil((x + patch_size_level0) / downsample)), x0 + 1)
            y1 = max(int(np.ceil((y + patch_size_level0) / downsample)), y0 + 1)
            rgba[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w), :3] = lut[int(round(value * 255))]
            rgba[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w), 3] = 255
        return png_bytes(Image.fromarray(rgba, "RGBA")), {"downsample": downsample, "width": w, "height": h,
                                                          "min": lo, "max": hi}
