"""Patch-encoder cost per patch, registry encoders side by side (eager PyTorch, random weights: timing does not
depend on them). cpu profile: the smallest ViT (kaiko_vits16, ViT-S/16) next to ResNet-18; cuda profile:
ViT-L/16 at 224 px (uni_v1's architecture) next to ResNet-50. Under --benchmark-disable (ci) the CPU rows run
once at 64 px so the file stays a fast check."""
from __future__ import annotations

import time
import warnings

import pytest
import torch

from bench.timing import measure

CPU_ROWS = ("resnet18", "kaiko_vits16")
CUDA_ROWS = ("resnet50", "uni_v1")
# profile name -> (input px, patches per call)
CPU_SIZES = {"ci": (64, 8), "cpu": (224, 64)}
CUDA_SIZE = (224, 256)


def _encoder(name: str, input_size: int, device: str):
    from zoo.models.patch_encoders import PatchEncoder

    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore", UserWarning)  # weights: random is the point here
        torch.manual_seed(0)
        return PatchEncoder(name, input_size=input_size, weights="random").eval()


def _profile_key(profile) -> str:
    return profile.name.split()[0]


def _per_patch(benchmark, encoder, patches, rounds, device, **info):
    def run():
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = encoder(patches)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up (allocator, kernels)
    start = time.perf_counter()
    out = measure(benchmark, run, rounds, "patch encoder per patch", patches=len(patches), **info)
    assert out.shape == (len(patches), encoder.out_dim) and torch.isfinite(out.float()).all()
    benchmark.extra_info["ms_per_patch_last_call"] = round((time.perf_counter() - start) / rounds
                                                            / len(patches) * 1e3, 3)


@pytest.mark.parametrize("name", CPU_ROWS)
def test_cpu_encoder_per_patch(benchmark, name, profile):
    key = _profile_key(profile)
    if key not in CPU_SIZES:
        pytest.skip(f"the {profile.name} profile times {CUDA_ROWS} (test_cuda_encoder_per_patch)")
    size, count = CPU_SIZES[key]
    encoder = _encoder(name, size, "cpu")
    g = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=g)
    _per_patch(benchmark, encoder, patches, profile.rounds, "cpu", engine=f"pytorch_cpu_fp32 {name}", encoder_name=name,
               input_px=size, threads=torch.get_num_threads())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: ViT-L/16 (uni_v1) at 224 px next to "
                                                          "ResNet-50 runs in the cuda profile only")
@pytest.mark.parametrize("name", CUDA_ROWS)
def test_cuda_encoder_per_patch(benchmark, name, profile):
    size, count = CUDA_SIZE
    encoder = _encoder(name, size, "cuda")
    patches = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, device="cuda")
    _per_patch(benchmark, encoder, patches, max(profile.rounds, 3), "cuda", engine=f"pytorch_cuda_bf16 {name}",
               encoder_name=name, input_px=size, device=torch.cuda.get_device_name(0))
