"""Client-side preprocessing: the same zoo.data code as training turns files into the ensemble's tensors.

Slides are tiled with zoo.data.tile (level-0 coordinates, patches read on demand in batches); MRI volumes go
through zoo.data.mri.preprocess_volume; clinical values are encoded with the ClinicalPreprocessor saved in the
export manifest. Arrays that are already preprocessed pass through unchanged (after a shape/dtype check).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from triton_repo.manifest import ExportManifest, ServedTensor


@dataclass
class SlideBag:
    """One slide's patches: level-0 (x, y) of each patch and the uint8 patch batches, in the same order."""
    slide_id: str
    coords: np.ndarray            # int64 [N, 2]
    batches: Iterable[np.ndarray]  # uint8 [n, 3, H, W] each, N patches in total


def _check(array: np.ndarray, tensor: ServedTensor, what: str, batched: bool) -> np.ndarray:
    """`array` as one item (batched=False: without the leading batch axis) of `tensor`."""
    expected = tensor.shape[1:] if not batched else tensor.shape
    array = np.asarray(array)
    if array.ndim != len(expected) or any(d != -1 and d != n for d, n in zip(expected, array.shape)):
        raise ValueError(f"{what}: expected shape {list(expected)} (-1 = any), got {list(array.shape)}")
    return array.astype(tensor.dtype, copy=False)


TILING_KEYS = ("patch_size", "level", "tissue_threshold")  # manifest preprocessing.pathology -> tile_slide
# (+ zoo.spec.TILING_RESOLUTION_KEYS when present: tiled at a magnification / mpp, read from the coords attrs)


class TilingFailed(ValueError):
    """A slide yields no patches (no tissue, unreadable pixels); the patient's other slides still count.
    `no_tissue`: the slide was read, but no patch reaches the tissue threshold (not a broken file)."""

    def __init__(self, message: str, no_tissue: bool = False):
        super().__init__(message)
        self.no_tissue = no_tissue


# zoo.data.tile's messages for a slide that was read but has no usable tissue (tests/triton checks them)
NO_TISSUE_MESSAGES = ("no tissue found", "no patch reaches tissue fraction", "smaller than one patch")


def tiling_cache() -> Path:
    import os
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "breast-fusion-zoo" / "client-tiles"


def slide_tiling_dir(path: Path, root: Path, patch_size: int, level: int, tissue_threshold: float,
                     target_magnification: float | None = None, target_mpp: float | None = None,
                     assume_magnification: float | None = None) -> Path:
    """Where one slide's tiling is cached: per tiling setting and per slide file (path, size, mtime).

    Slide ids are file stems, which repeat across cohorts (every cohort has a P001-0.svs): keying the cache by
    the stem alone would serve one slide's coordinates for another.
    """
    import hashlib

    from zoo.data.tile import tiling_dir_name
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    name = tiling_dir_name(patch_size, level, tissue_threshold, target_magnification, target_mpp)
    return root / name / hashlib.sha256(identity).hexdigest()[:16]


def slide_bag(path: str | Path, manifest: ExportManifest, batch_size: int,
              tiling_dir: str | Path | None = None, reader_threads: int | None = None) -> SlideBag:
    """Tile `path` with the training tiling parameters (coordinates cached under `tiling_dir`, default
    `tiling_cache()`) and stream its patches, read ahead by `reader_threads` threads (zoo.data.tile's default:
    one per core, at most 8). Raises TilingFailed for a slide without usable tissue."""
    from zoo.data import patches, tile  # imported lazily: tiling pulls in OpenSlide
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: slide not found")
    given = manifest.preprocessing.get("pathology") or {}
    missing = [k for k in TILING_KEYS if k not in given]
    if missing:
        raise ValueError(f"{manifest.export_dir}: manifest preprocessing.pathology lacks {missing}, the tiling "
                         "the model was trained with; re-export the entry with python -m export.onnx")
    params = {**{k: given[k] for k in TILING_KEYS}, **tile.resolution_options(given)}
    cache = slide_tiling_dir(path, Path(tiling_dir) if tiling_dir else tiling_cache(), **params)
    result = tile.tile_slide(path, cache, **params, qc=False)
    if not result.ok:
        raise TilingFailed(f"{path}: tiling failed: {result.message}",
                           no_tissue=any(m in (result.message or "") for m in NO_TISSUE_MESSAGES))
    coords, attrs = tile.load_coords(result.h5_path)
    batches = patches.iter_patch_batches(path, coords, int(attrs["patch_size"]), int(attrs["level"]), batch_size,
                                         threads=reader_threads, read_size=tile.patch_read_size(attrs))
    return SlideBag(path.stem, coords, (patches for _, patches in batches))


def array_bag(slide_id: str, coords: np.ndarray, patches: np.ndarray, batch_size: int = 256) -> SlideBag:
    """A bag from patches already in memory (tests, callers with their own tiling)."""
    coords = np.asarray(coords, dtype=np.int64)
    if len(coords) != len(patches):
        raise ValueError(f"slide {slide_id}: {len(coords)} coords for {len(patches)} patches")
    return SlideBag(slide_id, coords, (patches[i:i + batch_size] for i in range(0, len(patches), batch_size)))


def mri_tensor(mri: str | Path | Sequence[str | Path] | np.ndarray, manifest: ExportManifest,
               tensor: ServedTensor) -> np.ndarray:
    """MRI as one item [C, X, Y, Z] float32: an array passes through; paths (one per sequence) are preprocessed."""
    if isinstance(mri, np.ndarray):
        return _check(mri, tensor, "mri array", batched=False)
    from zoo.data import mri as mri_data
    paths = [Path(p) for p in ([mri] if isinstance(mri, (str, Path)) else mri)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: MRI volume not found")
    params = dict(manifest.preprocessing.get("mri") or {})
    kwargs = {k: params[k] for k in ("target_spacing", "output_shape") if k in params}
    volumes = [np.asarray(mri_data.preprocess_volume(p, **kwargs).dataobj, dtype=np.float32) for p in paths]
    return _check(np.stack(volumes), tensor, f"preprocessed MRI {', '.join(map(str, paths))}", batched=False)


def clinical_tensor(clinical: Mapping[str, Any] | np.ndarray, manifest: ExportManifest,
                    tensor: ServedTensor) -> np.ndarray:
    """Clinical features as one item [F] float32, encoded with the export's preprocessor when given as a dict."""
    if isinstance(clinical, np.ndarray):
        return _check(clinical, tensor, "clinical array", batched=False)
    if not isinstance(clinical, Mapping):
        raise ValueError(f"clinical values must be a mapping of field -> value such as "
                         f'{{"age": 52, "er_status": 1}} (or an encoded array), got {type(clinical).__name__}')
    state = manifest.preprocessing.get("clinical")
    if not state:
        raise ValueError(f"{manifest.export_dir}: manifest has no clinical preprocessor; pass an encoded array")
    from zoo.data.clinical import ClinicalPreprocessor
    encoded = np.asarray(ClinicalPreprocessor.from_dict(state).transform(dict(clinical)), dtype=np.float32)
    return _check(encoded.reshape(-1), tensor, "encoded clinical values", batched=False)
