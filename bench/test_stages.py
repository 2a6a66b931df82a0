"""Per-slide stages, every engine side by side: tiling, patch reading, patch encoding, MIL + fusion, end to end
from the SVS file, and the seed tutorial's PNG-per-patch baseline on the same slide."""
from __future__ import annotations

import pytest

from bench.checks import assert_features_close, assert_probabilities_close
from bench.conftest import ENGINE_NAMES, tolerance
from bench.pipeline import end_to_end, read_all_patches, seed_style, tile_coords
from bench.summarize import ENCODING_INTERLEAVED
from bench.timing import interleaved, measure


def test_tiling(benchmark, stage_slide, tiling, workdir, profile):
    """Read + tissue detection + tiling (thumbnail, saturation mask, grid, coords HDF5; no QC overlay, as in
    serving)."""
    coords = measure(benchmark, lambda: tile_coords(stage_slide.path, workdir / "tiles_bench", tiling),
                     profile.rounds, "tiling", patches=len(stage_slide.coords), slides=1,
                     slide_px=stage_slide.side_px, patch_size=tiling.patch_size)
    assert (coords == stage_slide.coords).all(), "tiling is not deterministic"


READERS = {"openslide_caller_thread": (False, False), "caller_thread": (False, True), "reader_threads": (True, True)}


@pytest.mark.parametrize("reader", READERS)
def test_patch_reading(benchmark, reader, stage_slide, tiling, profile):
    """The data-loading ceiling: tiles/s delivered into uint8 arrays -- every patch through OpenSlide in the
    caller's thread (the reader before level-0 JPEG tiles were decoded directly), direct decoding in the caller's
    thread, and direct decoding by the reader threads the end-to-end pipeline uses (handles of their own)."""
    pipeline_threads, direct = READERS[reader]
    threads = tiling.reader_threads if pipeline_threads else 0
    label = (f"{threads} reader threads" if threads else "caller's thread") + ("" if direct else ", OpenSlide only")
    patches = measure(benchmark,
                      lambda: read_all_patches(stage_slide.path, stage_slide.coords, tiling, threads, direct),
                      profile.rounds, "patch reading", engine=label, patches=len(stage_slide.coords), slides=1,
                      patch_size=tiling.patch_size, reader_threads=threads, direct_jpeg=direct)
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
# Patch encoders timed against eager fp32, round by round: the "onnxruntime >= 1.5x eager" target reads these.
ENCODING_RIVALS = ("onnxruntime_cpu", "onnxruntime_cpu_int8")


def test_seed_baseline(benchmark, bench_model, engines, stage_slide, tiling, clinical, workdir, profile):
    """The seed tutorial's way on the same slide: PNG per patch written and read back with PIL, float32 eager.

    Each timed baseline round is preceded by one end-to-end run of each of our engines (bench.timing.interleaved),
    so the speedup reported is the median of the per-round ratios."""
    ours = {name: engine for name in SPEEDUP_ENGINES if (engine := engines.find(name)) is not None}
    runs = {name: (lambda e=engine, n=name: end_to_end(e, stage_slide.path, workdir / f"tiles_{n}", tiling, clinical))
            for name, engine in ours.items()}

    def run():
        return seed_style(bench_model.model, stage_slide.path, workdir / "seed_baseline", tiling, clinical)

    probabilities = interleaved(benchmark, run, runs, max(profile.rounds, 5), "end to end",
                                engine="seed_baseline_png_eager_fp32", patches=len(stage_slide.coords), slides=1,
                                slide_px=stage_slide.side_px)
    # The baseline is the reference's own model, not an engine under test: its last timed output is checked.
    benchmark.extra_info["max_abs_diff_probabilities"] = assert_probabilities_close(
        probabilities, stage_slide.probabilities, 1e-4, "seed baseline")


def test_encoding_interleaved(benchmark, engines, stage_slide, tiling, profile):
    """Eager fp32 patch encoding timed with one encoding by each rival right before each of its rounds: the
    rivals' speedups over eager are medians of per-round ratios (see bench.timing.interleaved)."""
    rivals = {}
    for name in ENCODING_RIVALS:
        engine = engines.get(name)
        assert_features_close(engine.encode(stage_slide.batches(tiling.batch_size)), stage_slide.features,
                              tolerance(name)[0], name)
        rivals[name] = lambda e=engine: e.encode(stage_slide.batches(tiling.batch_size))
    eager = engines.get("pytorch_eager_fp32")
    features = interleaved(benchmark, lambda: eager.encode(stage_slide.batches(tiling.batch_size)), rivals,
                           max(profile.rounds, 5), ENCODING_INTERLEAVED, engine="pytorch_eager_fp32",
                           patches=len(stage_slide.patches), slides=1, batch_size=tiling.batch_size)
    benchmark.extra_info["max_abs_diff_features"] = assert_features_close(
        features, stage_slide.features, tolerance("pytorch_eager_fp32")[0], "pytorch_eager_fp32")
