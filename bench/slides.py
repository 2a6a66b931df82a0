"""Single synthetic SVS slides of a chosen size for the benchmarks, written with the cohort generator's renderer.

The cohort generator draws slide sizes per patient; a benchmark needs exact sizes (a series of them for the memory
curve) or a given number of tissue patches, so it renders one slide directly with the same layout, stain and
tumour models and SVS writer. The layout's random draws do not depend on the size (blob positions and radii are
fractions of the slide), so the tissue fraction measured on a small layout predicts the patch count of any size
roughly; `sized_slide` tiles what was rendered and corrects the size until the count is within 5 %.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from zoo.data.files import default_workers
from zoo.data.synthetic.he_render import SlideRenderer, StainStyle, TumourStyle, make_layout
from zoo.data.synthetic.svs_writer import TILE, write_svs

PROBE_PX = 8192  # layout probed at this size (a 512 x 512 field: milliseconds)
# The tiler's saturation-based tissue mask reaches a little beyond the layout's 50 % iso-line; the layout's
# 30 % level matched the tiled counts (128 px patches: 362 predicted, 361 tiled at 3,584 px; 1,154 vs 1,077 at
# 6,400 px).
TISSUE_LEVEL = 0.3


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7919])


SIZE_TOLERANCE = 0.05  # a sized slide's tiled patch count is within 5 % of the count asked for
SIZE_TRIES = 3


def side_for_patches(patches: int, patch_size: int, seed: int = 0) -> int:
    """Square slide side (a multiple of the SVS tile) whose tissue yields about `patches` patches (tissue
    threshold 0.5, as the tiling defaults), predicted from the layout alone."""
    layout = make_layout(_rng(seed), PROBE_PX, PROBE_PX)
    fraction = float(np.mean(layout.tissue > TISSUE_LEVEL))
    return _tile_multiple(patch_size * math.sqrt(patches / max(fraction, 1e-3)))


def _tile_multiple(side: float) -> int:
    return max(TILE, int(math.ceil(side / TILE)) * TILE)


def sized_slide(folder: Path, patches: int, patch_size: int, count_patches: Callable[[Path], int],
                seed: int = 0) -> tuple[Path, int]:
    """(slide, its tiled patch count) for a slide of about `patches` tissue patches (within SIZE_TOLERANCE).

    The layout's prediction (`side_for_patches`) is off by up to ~15 % for large slides: the rendered tissue's
    saturation mask covers 38-44 % of a slide whose layout predicts 46 %, varying with the size rendered (measured:
    37,888 px, 256-px patches: 8,407 patches for 10,000 asked). So the slide is tiled (`count_patches`) and, while
    its count is off, rendered again at the side scaled by sqrt(asked / counted) (to the nearest tile: small
    slides can stay further off, one tile more or less being a larger step than the tolerance)."""
    side = side_for_patches(patches, patch_size, seed)
    for _ in range(SIZE_TRIES):
        path = write_bench_slide(bench_slide_path(folder, side, seed), side, seed=seed)
        counted = count_patches(path)
        corrected = max(TILE, round(side * math.sqrt(patches / max(counted, 1)) / TILE) * TILE)
        if abs(counted - patches) <= SIZE_TOLERANCE * patches or corrected == side:
            return path, counted
        side = corrected
    warnings.warn(f"{path.name}: {counted} patches after {SIZE_TRIES} sizes tried, asked for {patches}", stacklevel=2)
    return path, counted


def bench_slide_path(folder: Path, side: int, seed: int = 0) -> Path:
    return folder / f"bench_s{seed}_{side}.svs"


def write_bench_slide(path: str | Path, width: int, height: int | None = None, seed: int = 0,
                      workers: int | None = None) -> Path:
    """Write (or reuse) an OpenSlide-readable synthetic H&E slide `width` x `height` px at level 0, its tiles
    rendered in `workers` processes (default: one per core; the same file whatever the number)."""
    path = Path(path)
    height = width if height is None else height
    if path.is_file():
        return path
    rng = _rng(seed)
    layout = make_layout(rng, width, height)
    renderer = SlideRenderer(layout, TumourStyle.from_latent(rng.normal(0, 1, 3)), StainStyle.sample(rng),
                             (seed, width, height))
    return write_svs(path, width, height, renderer.render, workers=default_workers(workers))
