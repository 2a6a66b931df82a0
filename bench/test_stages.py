"""Per-slide stages, every engine side by side: tiling, patch reading, patch encoding, MIL + fusion, end to end
from the SVS file, and the seed tutorial's PNG-per-patch baseline on the same slide."""
from __future__ import annotations

import statistics
import time

import pytest

from bench.checks import assert_features_close, assert_probabilities_close
from bench.conftest import ENGINE_NAMES, tolerance
from bench.pipeline import end_to_end, read_all_patches, seed_style, tile_coords
from bench.timing import measure


def test_tiling(benchmark, stage_slide, tiling, workdir, profile):
    """Read + tissue detection + tiling (thumbnail, saturation mask, grid, coords HDF5; no QC overlay, as in serving)."""
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


# Our pipelines timed against the seed baseline, round by round (CUDA engines join when a device is present).
SPEEDUP_ENGINES = ("onnxruntime_cpu", "onnxruntime_cpu_int8", "pytorch_bf16_channels_last", "onnxruntime_cuda")


def test_seed_baseline(benchmark, bench_model, engines, stage_slide, tiling, clinical, workdir, profile):
    """The seed tutorial's way on the same slide: PNG per patch written and read back with PIL, float32 eager.

    Each timed baseline round is preceded by one end-to-end run of each of our engines (timed here, outside the
    benchmark clock), so load drift on a shared machine hits both sides of a ratio alike: the speedup reported is
    the median of the per-round ratios."""
    ours = {name: engines.get(name) for name in SPEEDUP_ENGINES if engines.available(name)}
    ours_s: dict[str, list[float]] = {name: [] for name in ours}

    def time_ours():
        for name, engine in ours.items():
            start = time.perf_counter()
            end_to_end(engine, stage_slide.path, workdir / f"tiles_{name}", tiling, clinical)
            ours_s[name].append(time.perf_counter() - start)

    run = lambda: seed_style(bench_model.model, stage_slide.path, workdir / "seed_baseline", tiling, clinical)  # noqa: E731
    benchmark.group = "end to end"
    benchmark.extra_info.update(engine="seed_baseline_png_eager_fp32", patches=len(stage_slide.coords), slides=1,
                                slide_px=stage_slide.side_px)
    probabilities = benchmark.pedantic(run, setup=time_ours, rounds=max(profile.rounds, 5), iterations=1)
    # The baseline is the reference's own model, not an engine under test: its last timed output is checked.
    benchmark.extra_info["max_abs_diff_probabilities"] = assert_probabilities_close(
        probabilities, stage_slide.probabilities, 1e-4, "seed baseline")
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # benchmarks disabled: one untimed run, nothing to compare
        return
    baseline = list(stats.stats.data)
    benchmark.extra_info["median_s"] = round(stats.stats.median, 4)
    for name, times in ours_s.items():
        assert len(times) == len(baseline), f"{name}: {len(times)} rounds against {len(baseline)} baseline rounds"
        ratios = [b / t for b, t in zip(baseline, times)]
        benchmark.extra_info[f"speedup_{name}"] = round(statistics.median(ratios), 3)
        benchmark.extra_info[f"speedup_{name}_rounds"] = [round(r, 3) for r in ratios]
