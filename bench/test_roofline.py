"""CPU: what bounds the patch encoder here -- its FLOP/s against this machine's fp32 matmul peak measured in the same
run, and its patches/s against the slide reader's tiles/s (bench/test_gpu.py does the same on CUDA in bf16)."""
from __future__ import annotations

import pytest
import torch

from bench.checks import assert_features_close
from bench.conftest import tolerance
from bench.roofline import encoder_flops_per_patch, matmul_peak, reader_tiles_per_s, roofline_info
from bench.timing import measure

CPU_ENGINES = ["pytorch_eager_fp32", "onnxruntime_cpu"]


@pytest.mark.parametrize("engine_name", CPU_ENGINES)
def test_cpu_encoder_flops(benchmark, engine_name, engines, bench_model, stage_slide, tiling, profile):
    if bench_model.device != "cpu":
        pytest.skip("the model runs on CUDA here; its roofline is bench/test_gpu.py::test_encoder_flops")
    engine = engines.get(engine_name)
    assert_features_close(engine.encode(stage_slide.batches(tiling.batch_size)), stage_slide.features,
                          tolerance(engine_name)[0], engine_name)
    peak = matmul_peak("cpu", torch.float32, n=2048 if profile.recipe != "tiny" else 256, iterations=5)
    flops = encoder_flops_per_patch(bench_model.model.patch_encoder, tiling.patch_size, "cpu")
    reader = reader_tiles_per_s(stage_slide.path, stage_slide.coords, tiling)
    measure(benchmark, lambda: engine.encode(stage_slide.batches(tiling.batch_size)), profile.rounds,
            "CPU: encoder FLOP/s", engine=engine_name, patches=len(stage_slide.patches), slides=1)
    median = benchmark.stats.stats.median if benchmark.stats else None
    if median:  # --benchmark-disable runs the case once without statistics
        benchmark.extra_info.update(roofline_info(flops, len(stage_slide.patches) / median, peak, "fp32", reader))
    assert flops > 0 and peak > 0 and reader > 0
