"""Bench slides sized by their tiled patch count: the count the profile asks for, within the tolerance."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.pipeline import Tiling, tile_coords
from bench.slides import SIZE_TOLERANCE, side_for_patches, sized_slide


@pytest.mark.parametrize("patches, patch_size, rerendered", [
    (60, 256, True),    # the layout predicts a side that tiles into 70 patches: rendered again, smaller
    (40, 256, False),   # predicted within the tolerance: the first slide is kept
])
def test_sized_slide_reaches_the_patch_count(tmp_path, patches, patch_size, rerendered):
    tiling = Tiling(patch_size=patch_size)
    count = lambda slide: len(tile_coords(slide, tmp_path / "tiles", tiling))  # noqa: E731
    path, counted = sized_slide(tmp_path / "slides", patches, patch_size, count)
    assert counted == count(path)
    assert abs(counted - patches) <= SIZE_TOLERANCE * patches
    first = side_for_patches(patches, patch_size)
    assert (path.name != f"bench_s0_{first}.svs") == rerendered
    assert len(list(Path(tmp_path / "slides").glob("*.svs"))) == (2 if rerendered else 1)
