"""Single synthetic SVS slides of a chosen size for the benchmarks, written with the cohort generator's renderer.

The cohort generator draws slide sizes per patient; a benchmark needs exact sizes (a series of them for the memory
curve) or a given number of tissue patches, so it renders one slide directly with the same layout, stain and
tumour models and SVS writer. The layout's random draws do not depend on the size (blob positions and radii are
fractions of the slide), so the tissue fraction measured on a small layout predicts the patch count of any size.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from zoo.data.files import default_workers
from zoo.data.synthetic.he_render import SlideRenderer, StainStyle, TumourStyle, make_layout
from zoo.data.synthetic.svs_writer import TILE, write_svs

PROBE_PX = 8192  # layout probed at this size (a 512 x 512 field: milliseconds)
# The tiler's saturation-based tissue mask reaches a little beyond the layout's 50 % iso-line; the layout's
# 30 % level matched the tiled counts (128 px patches: 362 predicted, 361 tiled at 3,584 px; 1,154 vs 1,077 at 6,400 px).
TISSUE_LEVEL = 0.3


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7919])


def side_for_patches(patches: int, patch_size: int, seed: int = 0) -> int:
    """Square slide side (a multiple of the SVS tile) whose tissue yields about `patches` patches (tissue
    threshold 0.5, as the tiling defaults)."""
    layout = make_layout(_rng(seed), PROBE_PX, PROBE_PX)
    fraction = float(np.mean(layout.tissue > TISSUE_LEVEL))
    side = patch_size * math.sqrt(patches / max(fraction, 1e-3))
    return max(TILE, int(math.ceil(side / TILE)) * TILE)


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
