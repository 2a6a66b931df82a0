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

from triton_repo.manifest import ExportManifest, TensorSpec


@dataclass
class SlideBag:
    """One slide's patches: level-0 (x, y) of each patch and the uint8 patch batches, in the same order."""
    slide_id: str
    coords: np.ndarray            # int64 [N, 2]
    batches: Iterable[np.ndarray]  # uint8 [n, 3, H, W] each, N patches in total


def _check(array: np.ndarray, tensor: TensorSpec, what: str, batched: bool) -> np.ndarray:
    """`array` as one item (batched=False: without the leading batch axis) of `tensor`."""
    expected = tensor.shape[1:] if not batched else tensor.shape
    array = np.asarray(array)
    if array.ndim != len(expected) or any(d != -1 and d != n for d, n in zip(expected, array.shape)):
        raise ValueError(f"{what}: expected shape {list(expected)} (-1 = any), got {list(array.shape)}")
    return array.astype(tensor.dtype, copy=False)


def slide_bag(path: str | Path, manifest: ExportManifest, batch_size: int) -> SlideBag:
    """Tile `path` with the training tiling parameters and stream its patches."""
    from zoo.data import tile  # imported lazily: tiling pulls in OpenSlide
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: slide not found")
    params = dict(manifest.preprocessing.get("pathology") or {})
    tiling = tile.tile_slide(path, **tile_arguments(params))
    coords = np.asarray(tiling.coords if hasattr(tiling, "coords") else tiling, dtype=np.int64)
    batches = tile.iter_patch_batches(path, coords, batch_size=batch_size, **read_arguments(params))
    return SlideBag(path.stem, coords, batches)


def tile_arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("patch_size", "level", "tissue_threshold")
    return {k: params[k] for k in keys if k in params}


def read_arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("patch_size", "level")
    return {k: params[k] for k in keys if k in params}


def array_bag(slide_id: str, coords: np.ndarray, patches: np.ndarray, batch_size: int = 256) -> SlideBag:
    """A bag from patches already in memory (tests, callers with their own tiling)."""
    coords = np.asarray(coords, dtype=np.int64)
    if len(coords) != len(patches):
        raise ValueError(f"slide {slide_id}: {len(coords)} coords for {len(patches)} patches")
    return SlideBag(slide_id, coords, (patches[i:i + batch_size] for i in range(0, len(patches), batch_size)))


def mri_tensor(mri: str | Path | Sequence[str | Path] | np.ndarray, manifest: ExportManifest,
               tensor: TensorSpec) -> np.ndarray:
    """MRI as one item [C, X, Y, Z] float32: an array passes through; paths (one per sequence) are preprocessed."""
    if isinstance(mri, np.ndarray):
        return _check(mri, tensor, "mri array", batched=False)
    from zoo.data import mri as mri_data
    paths = [Path(p) for p in ([mri] if isinstance(mri, (str, Path)) else mri)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: MRI volume not found")
    params = dict(manifest.preprocessing.get("mri") or {})
    volumes = [np.asarray(mri_data.preprocess_volume(p, **mri_arguments(params))) for p in paths]
    volumes = [v[0] if v.ndim == 4 else v for v in volumes]
    return _check(np.stack(volumes), tensor, f"preprocessed MRI {', '.join(map(str, paths))}", batched=False)


def mri_arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("target_spacing", "output_shape")
    return {k: params[k] for k in keys if k in params}


def clinical_tensor(clinical: Mapping[str, Any] | np.ndarray, manifest: ExportManifest,
                    tensor: TensorSpec) -> np.ndarray:
    """Clinical features as one item [F] float32, encoded with the export's preprocessor when given as a dict."""
    if isinstance(clinical, np.ndarray):
        return _check(clinical, tensor, "clinical array", batched=False)
    state = manifest.preprocessing.get("clinical")
    if not state:
        raise ValueError(f"{manifest.export_dir}: manifest has no clinical preprocessor; pass an encoded array")
    from zoo.data.clinical import ClinicalPreprocessor
    encoded = np.asarray(ClinicalPreprocessor.from_dict(state).transform_one(dict(clinical)), dtype=np.float32)
    return _check(encoded.reshape(-1), tensor, "encoded clinical values", batched=False)
