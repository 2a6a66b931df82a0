"""Breast MRI preprocessing: resample to a target spacing, z-score in the foreground, crop to the ROI.

``python -m zoo.data.mri --input-dir DIR/mri_raw --output-dir DIR/mri_processed``

The output affine is exact: voxel size = target spacing along the input's axis directions, origin moved to
the first kept (or padded) voxel, so world coordinates of anatomy are unchanged.
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from tqdm import tqdm

from zoo.atomic import atomic_path, remove_orphaned_temps
from zoo.cli_help import HelpFormatter

from .files import default_workers, map_in_processes, validate_identifier

SEQUENCES: tuple[str, ...] = ("T1", "T2")
DEFAULT_TARGET_SPACING = (1.0, 1.0, 3.0)
DEFAULT_OUTPUT_SHAPE = (64, 64, 32)


class MRIError(ValueError):
    """A volume that cannot be preprocessed; the message names the file and what to do."""


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis (norms of the affine's columns)."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def load_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32 3D array, affine); clear MRIError for unreadable, non-3D, NaN or constant volumes."""
    path = Path(path)
    if not path.is_file():
        raise MRIError(f"{path}: file not found")
    try:
        # Stored axis order/direction varies (LPS, sagittal-first, ...): the resampling and the model's thick-slice
        # Z axis assume the closest RAS layout, so reorient first (a no-op for files already in RAS).
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise MRIError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e}); "
                       "the file may be truncated: re-export it") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MRIError(f"{path}: expected a 3D volume, got shape {data.shape}; split 4D series (e.g. DCE phases) "
                       "into one 3D file per sequence")
    if not np.isfinite(data).all():
        raise MRIError(f"{path}: contains NaN or infinite voxels; fix or mask them before preprocessing")
    if data.max() == data.min():
        raise MRIError(f"{path}: constant volume (every voxel = {data.min():g}); the scan is empty or corrupt")
    spacing = voxel_spacing(img.affine)
    if np.any(spacing <= 0) or not np.isfinite(spacing).all():
        raise MRIError(f"{path}: affine has invalid voxel spacing {spacing.tolist()}; fix the NIfTI header")
    return data, np.asarray(img.affine, float)


def resample(volume: np.ndarray, affine: np.ndarray, target_spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Linear resampling to ``target_spacing``; voxel 0's centre stays in place, so the new affine is exact."""
    target = np.asarray(target_spacing, float)
    step = target / voxel_spacing(affine)  # input voxels per output voxel, per axis
    out_shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(volume.shape, step))
    out = ndimage.affine_transform(volume, step, output_shape=out_shape, order=1, mode="nearest")
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * step[None, :]
    return out.astype(np.float32), new_affine


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """Body foreground: Otsu threshold, holes filled, largest connected component."""
    mask = volume > threshold_otsu(volume)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def zscore(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = volume[mask]
    return ((volume - values.mean()) / max(float(values.std()), 1e-6)).astype(np.float32)


def crop_or_pad_3d(volume: np.ndarray, shape: Sequence[int], start: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Window of ``shape`` starting at voxel ``start`` (may be negative or run past the end: padded with ``fill``)."""
    out = np.full(tuple(shape), fill, dtype=volume.dtype)
    src, dst = [], []
    for n, size, s in zip(volume.shape, shape, start):
        lo, hi = max(s, 0), min(s + size, n)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def center_crop_3d(volume: np.ndarray, shape: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Centred crop (or symmetric pad) to ``shape``, as the seed tutorial's helper."""
    start = [(n - s) // 2 for n, s in zip(volume.shape, shape)]
    return crop_or_pad_3d(volume, shape, start, fill)


def roi_start(mask: np.ndarray, shape: Sequence[int]) -> list[int]:
    """Start voxel of a ``shape`` window centred on the foreground's bounding box."""
    idx = np.argwhere(mask)
    centre = (idx.min(0) + idx.max(0)) / 2 if len(idx) else (np.asarray(mask.shape) - 1) / 2
    return [int(round(c - (s - 1) / 2)) for c, s in zip(centre, shape)]


def preprocess_volume(
    path: str | os.PathLike,
    target_spacing: Sequence[float] = DEFAULT_TARGET_SPACING,
    output_shape: Sequence[int] = DEFAULT_OUTPUT_SHAPE,
) -> nib.Nifti1Image:
    """Resample, z-score within the foreground, crop to the foreground ROI; float32 image with a correct affine."""
    volume, affine = load_volume(path)
    volume, affine = resample(volume, affine, target_spacing)
    mask = foreground_mask(volume)
    if not mask.any():
        raise MRIError(f"{path}: no foreground found after resampling")
    volume = zscore(volume, mask)
    start = roi_start(mask, output_shape)
    cropped = crop_or_pad_3d(volume, output_shape, start, fill=float(volume.min()))
    out_affine = affine.copy()
    out_affine[:3, 3] = (affine @ np.array([*start, 1.0]))[:3]
    img = nib.Nifti1Image(cropped, out_affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(out_affine, code=1)
    img.set_sform(out_affine, code=1)
    return img


@dataclass
class MRIResult:
    patient_id: str
    sequence: str
    output: Path | None
    status: str  # "processed" | "skipped" | "failed"
    message: str = ""


def processed_path(output_dir: str | os.PathLike, patient_id: str, sequence: str) -> Path:
    return Path(output_dir) / f"{validate_identifier(patient_id)}_{sequence}.nii.gz"


def is_up_to_date(path: Path, target_spacing: Sequence[float], output_shape: Sequence[int]) -> bool:
    try:
        img = nib.load(str(path))
    except Exception:  # noqa: BLE001 - unreadable output = redo it
        return False
    return tuple(img.shape) == tuple(output_shape) and np.allclose(voxel_spacing(img.affine), target_spacing, atol=1e-4)


def _process_one(args: tuple) -> MRIResult:
    src, out, pid, seq, target_spacing, output_shape, overwrite = args
    if not overwrite and out.exists() and is_up_to_date(out, target_spacing, output_shape):
        return MRIResult(pid, seq, out, "skipped")
    try:
        img = preprocess_volume(src, target_spacing, output_shape)
        with atomic_path(out) as tmp:
            nib.save(img, tmp)
        return MRIResult(pid, seq, out, "processed")
    except MRIError as e:
        return MRIResult(pid, seq, None, "failed", str(e))
    except Exception as e:  # noqa: BLE001 - one bad volume must not stop the others
        return MRIResult(pid, seq, None, "failed", f"{src}: {type(e).__name__}: {e}")


def preprocess_dir(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    target_spacing: Sequence[float] = DEFAULT_TARGET_SPACING,
    output_shape: Sequence[int] = DEFAULT_OUTPUT_SHAPE,
    sequences: Sequence[str] = SEQUENCES,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> list[MRIResult]:
    """Preprocess ``input_dir/<patient_id>/<seq>.nii.gz`` into ``output_dir/<patient_id>_<seq>.nii.gz``.

    Missing sequences and bad volumes are reported as failed results; the others are still processed.
    """
    tasks, results = [], []
    remove_orphaned_temps(output_dir)  # temp files of a killed earlier run
    for folder in sorted(p for p in Path(input_dir).iterdir() if p.is_dir()):
        try:
            pid = validate_identifier(folder.name)
        except ValueError as e:
            results.append(MRIResult(folder.name, "*", None, "failed", f"{folder}: {e}"))
            continue
        for seq in sequences:
            src = folder / f"{seq}.nii.gz"
            if not src.exists():
                results.append(MRIResult(pid, seq, None, "failed", f"{src}: missing {seq} sequence for patient {pid}"))
                continue
            tasks.append((src, processed_path(output_dir, pid, seq), pid, seq, tuple(target_spacing),
                          tuple(output_shape), overwrite))
    n_workers = min(default_workers(workers), max(1, len(tasks)))
    bar = dict(total=len(tasks), desc="MRI preprocessing", unit="volume", disable=not progress)
    if n_workers == 1:
        results += [_process_one(t) for t in tqdm(tasks, **bar)]
    else:
        with tqdm(**bar) as shown:
            results += map_in_processes(_process_one, tasks, n_workers, advance=shown.update,
                                        on_crash=lambda t, why: MRIResult(t[2], t[3], None, "failed", f"{t[0]}: {why}"))
    return results


def summarize(results: Sequence[MRIResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("processed", "skipped", "failed")}
    lines = [f"MRI: {counts['processed']} processed, {counts['skipped']} already done, {counts['failed']} failed"]
    lines += [f"  FAILED {r.message}" for r in results if r.status == "failed"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.data.mri", description="Preprocess breast MRI volumes.",
                                formatter_class=HelpFormatter)
    p.add_argument("--input-dir", required=True, help="folder of <patient_id>/{T1,T2}.nii.gz")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--target-spacing", type=float, nargs=3, default=list(DEFAULT_TARGET_SPACING),
                   metavar=("X", "Y", "Z"))
    p.add_argument("--output-shape", type=int, nargs=3, default=list(DEFAULT_OUTPUT_SHAPE), metavar=("X", "Y", "Z"))
    p.add_argument("--sequences", nargs="+", default=list(SEQUENCES))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    if not Path(a.input_dir).is_dir():
        print(f"error: --input-dir {a.input_dir} is not a directory", file=sys.stderr)
        return 2
    results = preprocess_dir(a.input_dir, a.output_dir, a.target_spacing, a.output_shape, a.sequences, a.overwrite,
                             a.workers)
    print(summarize(results))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
