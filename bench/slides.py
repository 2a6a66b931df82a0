"""Single synthetic SVS slides of a chosen size for the benchmarks, written with the cohort generator's renderer.

The cohort generator draws slide sizes per patient; a benchmark needs exact sizes (and, for the memory curve, a
series of them), so it renders one slide directly with the same layout, stain and tumour models and SVS writer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.data.synthetic.he_render import SlideRenderer, StainStyle, TumourStyle, make_layout
from zoo.data.synthetic.svs_writer import write_svs


def write_bench_slide(path: str | Path, width: int, height: int | None = None, seed: int = 0) -> Path:
    """Write (or reuse) an OpenSlide-readable synthetic H&E slide `width` x `height` px at level 0."""
    path = Path(path)
    height = width if height is None else height
    if path.is_file():
        return path
    rng = np.random.default_rng([seed, width, height])
    layout = make_layout(rng, width, height)
    renderer = SlideRenderer(layout, TumourStyle.from_latent(rng.normal(0, 1, 3)), StainStyle.sample(rng),
                             (seed, width, height))
    return write_svs(path, width, height, renderer.render)
