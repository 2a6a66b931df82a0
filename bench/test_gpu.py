"""CUDA only (skipped with the reason elsewhere): the patch encoder's achieved FLOP/s against the bf16 matmul peak
measured in the same run and against the data-loading ceiling, and the 10,000-patch slide end to end."""
from __future__ import annotations

import time

import pytest
import torch

from bench.checks import assert_probabilities_close
from bench.conftest import IN_PROCESS_ENGINES, tolerance
from bench.pipeline import end_to_end, read_all_patches
from bench.timing import measure

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device; none on this machine (torch.cuda.is_available() is False)")
CUDA_ENGINES = [name for name, spec_ in IN_PROCESS_ENGINES.items() if spec_.needs_cuda]
FLOP_ENGINE = "pytorch_bf16_channels_last"


def bf16_matmul_peak(n: int = 8192, iterations: int = 30) -> float:
    """Measured dense bf16 matmul FLOP/s on this GPU (the practical peak the encoder is compared with)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * iterations / (time.perf_counter() - start)


def encoder_flops_per_patch(encoder: torch.nn.Module, patch_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, patch_size, patch_size, dtype=torch.uint8, device="cuda")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder(x)
    return float(counter.get_total_flops())


def test_encoder_flops(benchmark, engines, bench_model, stage_slide, tiling, profile):
    engine = engines.get(FLOP_ENGINE)
    peak = bf16_matmul_peak()
    flops = encoder_flops_per_patch(bench_model.model.patch_encoder, tiling.patch_size)
    start = time.perf_counter()
    read_all_patches(stage_slide.path, stage_slide.coords, tiling)
    reader_tiles_per_s = len(stage_slide.coords) / (time.perf_counter() - start)
    measure(benchmark, lambda: engine.encode(stage_slide.batches(tiling.batch_size)), profile.rounds,
            "GPU: encoder FLOP/s", engine=FLOP_ENGINE, patches=len(stage_slide.patches), slides=1)
    median = benchmark.stats.stats.median if benchmark.stats else float("nan")
    patches_per_s = len(stage_slide.patches) / median
    benchmark.extra_info.update(
        flops_per_patch=flops, bf16_matmul_peak_tflops=round(peak / 1e12, 1),
        encoder_tflops=round(flops * patches_per_s / 1e12, 2),
        encoder_fraction_of_peak=round(flops * patches_per_s / peak, 3),
        reader_tiles_per_s=round(reader_tiles_per_s, 1),
        encoder_over_reader=round(patches_per_s / reader_tiles_per_s, 2))


@pytest.mark.parametrize("engine_name", CUDA_ENGINES)
def test_large_slide_end_to_end(benchmark, engine_name, engines, compare_slide, tiling, clinical, workdir, profile):
    """The 10,000-patch slide (ResNet-50 at 224 px) from the SVS file to probabilities."""
    engine = engines.get(engine_name)
    run = lambda: end_to_end(engine, compare_slide.path, workdir / f"tiles_gpu_{engine_name}", tiling, clinical)  # noqa: E731
    diff = assert_probabilities_close(run().probabilities, compare_slide.probabilities, tolerance(engine_name)[1],
                                      engine_name)
    measure(benchmark, run, profile.rounds, "GPU: large slide end to end", engine=engine_name,
            patches=len(compare_slide.coords), slides=1, slide_px=compare_slide.side_px,
            max_abs_diff_probabilities=diff)
