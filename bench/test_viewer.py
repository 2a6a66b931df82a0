"""The slide viewer (python -m zoo.viewer) over HTTP on a real uvicorn: deep-zoom tile latency (p50/p99) for a
warm slide (already open) and a cold one (every request reopens the slide: OpenSlide + DeepZoomGenerator), and the
time to the first heatmap of a ~1,000-patch slide on a server with nothing cached (prediction: features, MIL,
fusion; then the overlay PNG).

Sizes: `--benchmark-only` uses the `cpu` recipe (its frozen `cnn_ssl` patch encoder at 64 px, random weights as in
every bench case, 128 px patches, the feature cache filled on that first view) on a small synthetic cohort of
~6,000 px slides; `--benchmark-disable` the `tiny` recipe on 384 px slides, each case once.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from bench.conftest import VIEWER_ENTRY, benchmarks_disabled, build_bench_model

HEATMAP_PATCHES = 1000


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2)}


@pytest.fixture(scope="module")
def viewer_setup(request, workdir):
    """(cohort dir, checkpoint, recipe, slide id of the slide nearest HEATMAP_PATCHES patches, its patch count)."""
    from bench.slides import side_for_patches, write_bench_slide
    from zoo.checkpoint import checkpoint_payload, save_checkpoint
    from zoo.data.prepare import ensure_cohort
    from zoo.data.synthetic import generate_cohort
    from zoo.data.tile import load_coords
    from zoo.training.pipeline import cohort_tiling_dir

    ci = benchmarks_disabled(request.config)
    recipe = "tiny" if ci else "cpu"
    data_dir = workdir / f"viewer_cohort_{recipe}"
    entry, config, model = build_bench_model(recipe, VIEWER_ENTRY, [f"data.data_dir={data_dir}"])
    p, m = config["data"]["modalities"]["pathology"], config["data"]["modalities"]["mri"]
    if not (data_dir / "train_clinical.csv").is_file():
        generate_cohort(data_dir, num_samples=8, seed=5, slide_size=384, missing_mri=0.0, missing_wsi=0.0,
                        workers=2, progress=False)
        if not ci:  # one slide replaced by a bench slide sized for ~HEATMAP_PATCHES tissue patches (no mask)
            first = sorted((data_dir / "wsi_raw").glob("*.svs"))[0]
            side = side_for_patches(HEATMAP_PATCHES, int(p["patch_size"]))
            first.unlink()
            write_bench_slide(first, side, workers=2)
            for mask in (data_dir / "wsi_masks").glob(f"{first.stem}.*"):
                mask.unlink()
    ensure_cohort(data_dir, generate_if_missing=False, patch_size=p["patch_size"], level=p["level"],
                  tissue_threshold=p["tissue_threshold"], target_spacing=m["target_spacing"],
                  output_shape=m["output_shape"], workers=2, progress=False)
    checkpoint = save_checkpoint(workdir / f"viewer_{recipe}" / "best.pt", checkpoint_payload(entry, config, model))
    counts = {h5.stem: len(load_coords(h5)[0]) for h5 in sorted(cohort_tiling_dir(config).glob("*.h5"))}
    target = HEATMAP_PATCHES if not ci else max(counts.values())
    slide_id = min(counts, key=lambda s: abs(counts[s] - target))
    return data_dir, checkpoint, recipe, slide_id, counts[slide_id]


def _server(data_dir: Path, checkpoint: Path, cache_dir: Path | None):
    from tests.viewer.conftest import LiveServer
    from zoo.viewer.app import create_app
    from zoo.viewer.cohort import Cohort
    from zoo.viewer.inference import CheckpointBackend

    cohort = Cohort(data_dir)
    return LiveServer(create_app(cohort, CheckpointBackend(checkpoint, cohort), cache_dir=cache_dir, warm=False))


@pytest.fixture(scope="module")
def tile_server(viewer_setup):
    data_dir, checkpoint, *_ = viewer_setup
    server = _server(data_dir, checkpoint, None)
    yield server
    server.stop()


def _tile_paths(server, slide_id: str, limit: int) -> list[str]:
    """Distinct tiles of the two finest deep-zoom levels (what a viewer zoomed in fetches), up to `limit`."""
    from openslide import OpenSlide
    from openslide.deepzoom import DeepZoomGenerator

    with OpenSlide(str(server.state.cohort.slides[slide_id].path)) as slide:
        dz = DeepZoomGenerator(slide, tile_size=254, overlap=1, limit_bounds=False)
        levels = [dz.level_count - 1, dz.level_count - 2]
        paths = [f"/api/slides/{slide_id}_files/{lv}/{c}_{r}.jpeg" for lv in levels
                 for r in range(dz.level_tiles[lv][1]) for c in range(dz.level_tiles[lv][0])]
    return paths[:limit]


@pytest.mark.parametrize("slide_state", ["warm", "cold"])
def test_tile_latency(benchmark, slide_state, tile_server, viewer_setup, request):
    _, _, recipe, slide_id, _ = viewer_setup
    ci = benchmarks_disabled(request.config)
    n = (4 if ci else 200) if slide_state == "warm" else (2 if ci else 40)
    paths = _tile_paths(tile_server, slide_id, n)
    assert tile_server.get(paths[0]).status == 200  # opens the slide (warm)
    seconds: list[float] = []

    def run():
        seconds.clear()
        for path in paths:
            if slide_state == "cold":
                tile_server.state.slides.close()
            start = time.perf_counter()
            reply = tile_server.get(path)
            seconds.append(time.perf_counter() - start)
            assert reply.status == 200 and reply.headers["content-type"] == "image/jpeg", path
        return seconds

    benchmark.group = "viewer tile latency"
    benchmark.pedantic(run, rounds=1, iterations=1)
    info = _percentiles(seconds)
    benchmark.extra_info.update(slide=slide_id, slide_state=slide_state, recipe=recipe, **info)
    print(f"\nviewer tiles ({slide_state} slide): p50 {info['p50_ms']} ms, p99 {info['p99_ms']} ms "
          f"over {info['requests']} requests")


def test_time_to_first_heatmap(benchmark, viewer_setup, request):
    data_dir, checkpoint, recipe, slide_id, patches = viewer_setup
    ci = benchmarks_disabled(request.config)
    pid = slide_id.rsplit("-", 1)[0]
    runs: list[dict[str, float]] = []
    holder: dict[str, object] = {}

    def setup():
        server = holder.pop("server", None)
        if server is not None:
            server.stop()
        holder["server"] = _server(data_dir, checkpoint, None)  # nothing cached: memory only, fresh
        return (), {}

    def first_heatmap():
        server = holder["server"]
        start = time.perf_counter()
        detail = server.get(f"/api/patients/{pid}").json()
        slide = next(s for s in detail["slides"] if s["slide_id"] == slide_id)
        reply = server.get(slide["heatmap"]["url"])
        total = time.perf_counter() - start
        assert reply.status == 200 and reply.headers["content-type"] == "image/png"
        again = time.perf_counter()
        server.get(f"/api/patients/{pid}")
        server.get(slide["heatmap"]["url"])
        runs.append({"first_s": total, "compute_s": float(detail["prediction"]["compute_s"]),
                     "cached_view_s": time.perf_counter() - again})

    benchmark.group = "viewer first heatmap"
    try:
        benchmark.pedantic(first_heatmap, setup=setup, rounds=1 if ci else 3, iterations=1)
    finally:
        server = holder.pop("server", None)
        if server is not None:
            server.stop()
    benchmark.extra_info.update(
        slide=slide_id, patches=patches, recipe=recipe,
        # round 1 also fills the cohort's feature cache (frozen encoder: every patch encoded once); later rounds
        # are fresh servers (no prediction cached) that find the feature cache filled
        first_heatmap_feature_cache_empty_s=round(runs[0]["first_s"], 3),
        first_heatmap_feature_cache_filled_s=(round(statistics.median(r["first_s"] for r in runs[1:]), 3)
                                              if len(runs) > 1 else None),
        first_heatmap_s=round(statistics.median(r["first_s"] for r in runs), 3),
        prediction_compute_s=round(statistics.median(r["compute_s"] for r in runs), 3),
        cached_view_s=round(statistics.median(r["cached_view_s"] for r in runs), 4),
        rounds=len(runs))
    print(f"\nviewer first heatmap: {patches}-patch slide {slide_id} ({recipe} recipe): "
          f"{benchmark.extra_info['first_heatmap_s']} s (prediction {benchmark.extra_info['prediction_compute_s']} s),"
          f" cached view {benchmark.extra_info['cached_view_s']} s; rounds {[round(r['first_s'], 3) for r in runs]}")
