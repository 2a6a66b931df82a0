"""CUDA: the patch encoder's achieved FLOP/s against the bf16 matmul peak measured in the same run and against the
data-loading ceiling, and the 10,000-patch slide end to end. Without CUDA these skip with the reason, except in
CI's rehearsal (bench.conftest.rehearsal), where they run once on the CPU at CI sizes, untimed."""
from __future__ import annotations

import pytest
import torch

from bench.checks import assert_probabilities_close
from bench.conftest import IN_PROCESS_ENGINES, rehearsal, tolerance  # noqa: F401 - rehearsal: in pytestmark
from bench.pipeline import end_to_end
from bench.roofline import encoder_flops_per_patch, matmul_peak, reader_tiles_per_s, roofline_info
from bench.timing import measure

CUDA_ENGINES = [name for name, spec_ in IN_PROCESS_ENGINES.items() if spec_.needs_cuda]
FLOP_ENGINE = "pytorch_bf16_channels_last"


# Decided at collection (a string condition sees `config`), so a skipped case builds none of its session fixtures.
pytestmark = pytest.mark.skipif("not (torch.cuda.is_available() or rehearsal(config))",
                                reason="needs a CUDA device; none on this machine "
                                       "(torch.cuda.is_available() is False); "
                                       "CI runs it once on the CPU (--benchmark-disable)")


def test_encoder_flops(benchmark, engines, bench_model, stage_slide, tiling, profile):
    engine = engines.get(FLOP_ENGINE)
    device = bench_model.device
    on_gpu = device.startswith("cuda")
    peak = matmul_peak(device, torch.bfloat16, n=8192 if on_gpu else 256, iterations=30 if on_gpu else 2)
    flops = encoder_flops_per_patch(bench_model.model.patch_encoder, tiling.patch_size, device)
    reader = reader_tiles_per_s(stage_slide.path, stage_slide.coords, tiling)
    measure(benchmark, lambda: engine.encode(stage_slide.batches(tiling.batch_size)), profile.rounds,
            "GPU: encoder FLOP/s", engine=FLOP_ENGINE, patches=len(stage_slide.patches), slides=1)
    if benchmark.stats:  # --benchmark-disable runs the case once without statistics
        median = benchmark.stats.stats.median
        benchmark.extra_info.update(roofline_info(flops, len(stage_slide.patches) / median, peak, "bf16", reader))
    assert flops > 0 and peak > 0 and reader > 0


@pytest.mark.parametrize("engine_name", CUDA_ENGINES)
def test_large_slide_end_to_end(benchmark, engine_name, engines, compare_slide, tiling, clinical, workdir, profile):
    """The 10,000-patch slide (ResNet-50 at 224 px) from the SVS file to probabilities."""
    engine = engines.get(engine_name)

    def run():
        return end_to_end(engine, compare_slide.path, workdir / f"tiles_gpu_{engine_name}", tiling, clinical)

    diff = assert_probabilities_close(run().probabilities, compare_slide.probabilities, tolerance(engine_name)[1],
                                      engine_name)
    measure(benchmark, run, profile.rounds, "GPU: large slide end to end", engine=engine_name,
            patches=len(compare_slide.coords), slides=1, slide_px=compare_slide.side_px,
            max_abs_diff_probabilities=diff)
