"""Per-slide stages, every engine side by side: tiling, patch reading, patch encoding, MIL + fusion, end to end
from the SVS file, and the seed tutorial's PNG-per-patch baseline on the same slide."""
from __future__ import annotations

import pytest

from bench.checks import assert_features_close, assert_probabilities_close
from bench.conftest import ENGINE_NAMES, tolerance
from bench.pipeline import end_to_end, read_all_patches, seed_style, tile_coords
from bench.timing import measure


def test_tiling(benchmark, stage_slide, tiling, workdir, profile):
    """Read + tissue detection + tiling (thumbnail, HSV mask, grid, coords HDF5 + QC image)."""
    coords = measure(benchmark, lambda: tile_coords(stage_slide.path, workdir / "tiles_bench", tiling),
                     profile.rounds, "tiling", patches=len(stage_slide.coords), slides=1,
                     slide_px=stage_slide.side_px, patch_size=tiling.patch_size)
    assert (coords == stage_slide.coords).all(), "tiling is not deterministic"


def test_patch_reading(benchmark, stage_slide, tiling, profile):
    """The data-loading ceiling: tiles/s OpenSlide delivers into uint8 arrays (one reader thread)."""
    patches = measure(benchmark, lambda: read_all_patches(stage_slide.path, stage_slide.coords, tiling),
                      profile.rounds, "patch reading", patches=len(stage_slide.coords), slides=1,
                      patch_size=tiling.patch_size)
    assert (patches == stage_slide.patches).all()


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_patch_encoding(benchmark, engine_name, engines, stage_slide, tiling, profile):
    engine = engines.get(engine_name)
    features_tol, _ = tolerance(engine_name)
    diff = assert_features_close(engine.encode(stage_slide.batches(tiling.batch_size)), stage_slide.features,
                                 features_tol, engine_name)
    measure(benchmark, lambda: engine.encode(stage_slide.batches(tiling.batch_size)), profile.rounds,
            "patch encoding", engine=engine_name, patches=len(stage_slide.patches), slides=1,
            batch_size=tiling.batch_size, max_abs_diff_features=diff)


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_mil_fusion(benchmark, engine_name, engines, stage_slide, clinical, profile):
    engine = engines.get(engine_name)
    _, prob_tol = tolerance(engine_name)
    got = engine.aggregate(stage_slide.features, clinical)
    diff = assert_probabilities_close(got.probabilities, stage_slide.probabilities, prob_tol, engine_name)
    assert_probabilities_close(got.patch_attention, stage_slide.patch_attention, prob_tol, engine_name)
    measure(benchmark, lambda: engine.aggregate(stage_slide.features, clinical), max(profile.rounds, 5),
            "MIL + fusion", engine=engine_name, patches=len(stage_slide.features), slides=1,
            max_abs_diff_probabilities=diff)


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_end_to_end(benchmark, engine_name, engines, stage_slide, tiling, clinical, workdir, profile):
    """SVS file -> tiling -> patches read in batches -> encoder -> MIL + fusion -> probabilities."""
    engine = engines.get(engine_name)
    _, prob_tol = tolerance(engine_name)
    run = lambda: end_to_end(engine, stage_slide.path, workdir / f"tiles_{engine_name}", tiling, clinical)  # noqa: E731
    diff = assert_probabilities_close(run().probabilities, stage_slide.probabilities, prob_tol, engine_name)
    measure(benchmark, run, profile.rounds, "end to end", engine=engine_name, patches=len(stage_slide.coords),
            slides=1, slide_px=stage_slide.side_px, max_abs_diff_probabilities=diff)


def test_seed_baseline(benchmark, bench_model, stage_slide, tiling, clinical, workdir, profile):
    """The seed tutorial's way on the same slide: PNG per patch written and read back with PIL, float32 eager."""
    run = lambda: seed_style(bench_model.model, stage_slide.path, workdir / "seed_baseline", tiling, clinical)  # noqa: E731
    # The baseline is the reference's own model, not an engine under test: its last timed output is checked.
    probabilities = measure(benchmark, run, max(1, profile.rounds - 1), "end to end",
                            engine="seed_baseline_png_eager_fp32", patches=len(stage_slide.coords), slides=1,
                            slide_px=stage_slide.side_px)
    benchmark.extra_info["max_abs_diff_probabilities"] = assert_probabilities_close(
        probabilities, stage_slide.probabilities, 1e-4, "seed baseline")
