"""What bounds the patch encoder: its achieved FLOP/s against the device's measured dense matmul peak (taken in
the same run) and against the data-loading ceiling (tiles/s the slide reader delivers). Device-agnostic: bf16 on
CUDA, fp32 on the CPU."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from bench.pipeline import Tiling, read_all_patches


def _synchronize(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def matmul_peak(device: str, dtype: torch.dtype, n: int, iterations: int) -> float:
    """Measured dense n x n matmul FLOP/s (the practical peak the encoder is compared with)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = _synchronize(device)
    for _ in range(2):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        a @ b
    sync()
    return 2 * n ** 3 * iterations / (time.perf_counter() - start)


def encoder_flops_per_patch(encoder: torch.nn.Module, patch_size: int, device: str) -> float:
    """FLOPs of one uint8 patch through the encoder (resize and normalisation included), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, patch_size, patch_size, dtype=torch.uint8, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder(x)
    return float(counter.get_total_flops())


def reader_tiles_per_s(slide, coords: np.ndarray, tiling: Tiling) -> float:
    """Patches/s read by the reader threads the end-to-end pipeline uses (`tiling.reader_threads`)."""
    start = time.perf_counter()
    read_all_patches(slide, coords, tiling, tiling.reader_threads)
    return len(coords) / (time.perf_counter() - start)


def roofline_info(flops_per_patch: float, patches_per_s: float, peak: float, peak_dtype: str,
                  reader_rate: float) -> dict[str, Any]:
    """extra_info for the summary: achieved TFLOP/s, fraction of the measured peak, encoder vs reader rate."""
    achieved = flops_per_patch * patches_per_s
    return {"flops_per_patch": flops_per_patch, "matmul_peak_tflops": round(peak / 1e12, 3), "peak_dtype": peak_dtype,
            "encoder_tflops": round(achieved / 1e12, 3), "encoder_fraction_of_peak": round(achieved / peak, 3),
            "reader_tiles_per_s": round(reader_rate, 1), "encoder_over_reader": round(patches_per_s / reader_rate, 3)}
