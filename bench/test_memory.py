"""Peak RSS per slide size, so growth with slide size is visible: tiling (fresh interpreter, its VmHWM), and the
Triton client (this process) and server (tritonserver + python-backend stubs) during an end-to-end prediction.
BENCH_LARGE=1 adds generation + tiling of a 40,000 x 40,000 px slide (minutes)."""
from __future__ import annotations

import os

import pytest

from bench.conftest import LARGE_SLIDE_PX
from bench.memory import MIB, PeakRSS, run_in_subprocess
from bench.pipeline import end_to_end
from bench.slides import bench_slide_path, write_bench_slide
from bench.timing import measure

RSS_LIMIT = 2 * 1024 ** 3
LARGE = os.environ.get("BENCH_LARGE") == "1"


def slide_sizes(config) -> list[int]:
    from bench.conftest import select_profile
    return list(select_profile(config).memory_slide_px) + ([LARGE_SLIDE_PX] if LARGE else [])


def pytest_generate_tests(metafunc):
    if "slide_px" in metafunc.fixturenames:
        metafunc.parametrize("slide_px", slide_sizes(metafunc.config))


def test_tiling_memory(benchmark, slide_px, slide_cache, workdir, tiling):
    slide = bench_slide_path(slide_cache, slide_px)
    generated = None if slide.is_file() else run_in_subprocess("generate", slide, slide_px)
    result = measure(benchmark, lambda: run_in_subprocess("tile", slide, out=workdir / "tiles_memory",
                                                          patch_size=tiling.patch_size),
                     1, "memory: tiling per slide size", slide_px=slide_px, patch_size=tiling.patch_size)
    benchmark.extra_info.update(patches=result["patches"], tile_s=round(result["seconds"], 2),
                                tiling_peak_rss_mib=round(result["peak_rss"] / MIB, 1))
    if generated:
        benchmark.extra_info.update(generate_s=round(generated["seconds"], 2),
                                    generate_peak_rss_mib=round(generated["peak_rss"] / MIB, 1))
        assert generated["peak_rss"] < RSS_LIMIT, \
            f"generating a {slide_px} px slide peaked at {generated['peak_rss'] / MIB:.0f} MiB"
    assert result["patches"] > 0
    assert result["peak_rss"] < RSS_LIMIT, f"tiling a {slide_px} px slide peaked at {result['peak_rss'] / MIB:.0f} MiB"


def test_serving_memory(benchmark, slide_px, slide_cache, workdir, tiling, engines, triton_server, clinical):
    """Client and server RSS during one end-to-end Triton prediction of a slide of each size."""
    if slide_px == LARGE_SLIDE_PX:
        pytest.skip("the 40,000 px slide is measured for generation + tiling only (hours of CPU encoding)")
    slide = write_bench_slide(bench_slide_path(slide_cache, slide_px), slide_px)
    engine = engines.get("triton_grpc")
    with PeakRSS() as client, PeakRSS(triton_server.pid) as server:
        prediction = measure(benchmark, lambda: end_to_end(engine, slide, workdir / "tiles_serving_memory", tiling,
                                                           clinical),
                             1, "memory: Triton client and server per slide size", engine="triton_grpc",
                             slide_px=slide_px)
    benchmark.extra_info.update(patches=prediction.num_patches, **client.as_mib("client"), **server.as_mib("server"),
                                client_rss_growth_mib=round((client.peak - client.start) / MIB, 1),
                                server_rss_growth_mib=round((server.peak - server.start) / MIB, 1))
    assert prediction.num_patches > 0
    assert server.peak > 0, "server RSS was not sampled"
