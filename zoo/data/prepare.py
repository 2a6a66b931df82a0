"""One call that makes a cohort ready for training: generate (if absent), tile, preprocess MRI. Idempotent."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from zoo.spec import SPLITS

from . import mri as mri_prep
from . import tile as tiling
from .synthetic import QUICKSTART, generate_cohort

SPLIT_FILES = tuple(f"{split}_clinical.csv" for split in SPLITS)


def tiling_dir(data_dir: str | os.PathLike, patch_size: int, level: int, tissue_threshold: float,
               target_magnification: float | None = None, target_mpp: float | None = None,
               assume_magnification: float | None = None) -> Path:
    """Where a tiling configuration lives: ``DIR/wsi_patches/<tiling_dir_name>/`` (``ps256_l0_t0.5`` by level,
    ``ps256_m20_t0.5`` / ``ps256_mpp0.5_t0.5`` at a target; ``assume_magnification`` is recorded in the files and
    takes no part in the name)."""
    return Path(data_dir) / "wsi_patches" / tiling.tiling_dir_name(patch_size, level, tissue_threshold,
                                                                   target_magnification, target_mpp)


def mri_processed_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "mri_processed"


def cohort_exists(data_dir: str | os.PathLike) -> bool:
    return all((Path(data_dir) / name).is_file() for name in SPLIT_FILES)


def ensure_cohort(
    data_dir: str | os.PathLike,
    *,
    generate_if_missing: bool = True,
    preset: Mapping[str, object] = QUICKSTART,
    patch_size: int = 256,
    level: int = 0,
    tissue_threshold: float = 0.5,
    target_magnification: float | None = None,
    target_mpp: float | None = None,
    assume_magnification: float | None = None,
    target_spacing: Sequence[float] = (1.0, 1.0, 3.0),
    output_shape: Sequence[int] = (64, 64, 32),
    workers: int | None = None,
    progress: bool = True,
    tile: bool = True,
) -> Path:
    """Make ``data_dir`` ready: cohort present, slides tiled for this configuration, MRI preprocessed.

    Finished outputs are kept (cheap re-run). Slides or volumes that fail are reported and become missing
    modalities for their patients; they do not stop the others. ``tile=False`` skips tiling (training on stored
    patch features, whose files carry their own coords).
    """
    data_dir = Path(data_dir)
    if not cohort_exists(data_dir):
        if not generate_if_missing:
            raise FileNotFoundError(f"{data_dir}: no cohort ({', '.join(SPLIT_FILES)} missing); generate one with "
                                    f"python -m zoo.data.synthetic --output-dir {data_dir}")
        print(f"[data] no cohort in {data_dir}: generating a synthetic one ({dict(preset)})", flush=True)
        generate_cohort(data_dir, **{"workers": workers, "progress": progress, **dict(preset)})

    raw = data_dir / "wsi_raw"
    slides = tiling.find_slides(raw) if raw.is_dir() and tile else []
    if slides:
        resolution = dict(target_magnification=target_magnification, target_mpp=target_mpp,
                          assume_magnification=assume_magnification)
        out = tiling_dir(data_dir, patch_size, level, tissue_threshold, **resolution)
        summary = tiling.tile_slides(slides, out, patch_size, level, tissue_threshold, workers=workers,
                                     progress=progress,
                                     **resolution)
        if summary.count("tiled") or summary.failed:
            print(f"[data] {out}: {summary.report(max_failures=5)}", flush=True)

    mri_raw = data_dir / "mri_raw"
    if mri_raw.is_dir():
        results = mri_prep.preprocess_dir(mri_raw, mri_processed_dir(data_dir), target_spacing, output_shape,
                                          workers=workers, progress=progress)
        if any(r.status != "skipped" for r in results):
            print(f"[data] {mri_processed_dir(data_dir)}: {mri_prep.summarize(results)}", flush=True)
    return data_dir
