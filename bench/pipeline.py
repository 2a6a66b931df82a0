"""Per-slide pipelines timed by the benchmarks: tiling, end to end from the SVS file, and the seed-style baseline.

Ours: tissue detection + a coordinate grid (zoo.data.tile), patches read from the slide in batches straight into
uint8 arrays by reader threads working ahead of the encoder, encoded by an engine, MIL + fusion. The seed
tutorial's way: every patch saved as a PNG, read back with PIL, converted to float32 and run through the eager
PyTorch model in one bag.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import torch
from PIL import Image

from bench.engines import Engine, SlidePrediction
from triton_repo.inputs import SlideBag
from zoo import spec
from zoo.data import patches, tile


@dataclass(frozen=True)
class Tiling:
    patch_size: int
    level: int = 0
    tissue_threshold: float = 0.5
    batch_size: int = 64
    reader_threads: int | None = None  # threads reading ahead of the encoder (zoo.data.patches.iter_patch_batches)


class BenchError(RuntimeError):
    pass


def tile_coords(slide: Path, workdir: Path, tiling: Tiling) -> np.ndarray:
    """Read + tissue detection + tiling of one slide (always recomputed): level-0 coords [N, 2]."""
    result = tile.tile_slide(slide, workdir, tiling.patch_size, tiling.level, tiling.tissue_threshold,
                             overwrite=True, qc=False)
    if not result.ok:
        raise BenchError(f"tiling {slide} failed: {result.message}")
    coords, _ = tile.load_coords(result.h5_path)
    return coords


def slide_bag(slide: Path, coords: np.ndarray, tiling: Tiling) -> SlideBag:
    batches = patches.iter_patch_batches(slide, coords, tiling.patch_size, tiling.level, tiling.batch_size,
                                      threads=tiling.reader_threads)
    return SlideBag(slide.stem, coords, (patches for _, patches in batches))


def chunks(array: np.ndarray, size: int):
    """Batches of at most `size` rows of an in-memory array (a fresh generator per call)."""
    return (array[i:i + size] for i in range(0, len(array), size))


def read_all_patches(slide: Path, coords: np.ndarray, tiling: Tiling, threads: int = 0,
                     direct_jpeg: bool = True) -> np.ndarray:
    """Every patch of `coords` in memory, read in the caller's thread (0) or by `threads` reader threads;
    `direct_jpeg=False` reads every patch through OpenSlide."""
    batches = patches.iter_patch_batches(slide, coords, tiling.patch_size, tiling.level, tiling.batch_size, threads,
                                      direct_jpeg)
    return np.concatenate([patches for _, patches in batches])


def end_to_end(engine: Engine, slide: Path, workdir: Path, tiling: Tiling, clinical: np.ndarray) -> SlidePrediction:
    """From the SVS file to class probabilities with `engine`."""
    coords = tile_coords(slide, workdir, tiling)
    return engine.predict(slide_bag(slide, coords, tiling), clinical)


def seed_style(model: torch.nn.Module, slide: Path, workdir: Path, tiling: Tiling,
               clinical: np.ndarray) -> np.ndarray:
    """The seed tutorial's pipeline: PNG per patch on disk, PIL reads, float32 eager model. Probabilities [K]."""
    coords = tile_coords(slide, workdir, tiling)
    patch_dir = workdir / f"{slide.stem}_png"
    shutil.rmtree(patch_dir, ignore_errors=True)
    patch_dir.mkdir(parents=True)
    paths = []
    with openslide.OpenSlide(str(slide)) as handle:
        for i, (x, y) in enumerate(coords):
            patch = handle.read_region((int(x), int(y)), tiling.level, (tiling.patch_size,) * 2).convert("RGB")
            path = patch_dir / f"patch_{i:04d}.png"
            patch.save(path)
            paths.append(path)
    tensors = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255.0
               for p in paths]
    device = next(model.parameters()).device
    batch = {spec.KEY_PATHOLOGY: torch.stack(tensors)[None].to(device)}
    if "clinical" in model.modalities:
        batch[spec.KEY_CLINICAL] = torch.from_numpy(clinical[None].astype(np.float32)).to(device)
    with torch.no_grad():
        logits, _ = model(batch)
    shutil.rmtree(patch_dir, ignore_errors=True)
    return torch.softmax(logits, -1)[0].cpu().numpy()
