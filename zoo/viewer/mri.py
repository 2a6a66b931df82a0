"""Axial MRI slices as PNGs: the cohort's raw NIfTI volumes (DIR/mri_raw/<patient>/<seq>.nii.gz), windowed to the
volume's 1st-99th intensity percentiles, in-plane spacing respected, anterior up."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.viewer.slides import png_bytes

MIN_DISPLAY_PX = 256


class MriUnreadable(RuntimeError):
    pass


class MriStore:
    def __init__(self, max_volumes: int = 6):
        self.max_volumes = max_volumes
        self._volumes: OrderedDict[Path, tuple[np.ndarray, tuple[float, float, float], tuple[float, float]]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def _load(self, path: Path):
        with self._lock:
            if path in self._volumes:
                self._volumes.move_to_end(path)
                return self._volumes[path]
        import nibabel as nib

        try:
            image = nib.load(str(path))
            volume = np.asarray(image.dataobj, dtype=np.float32)
            if volume.ndim == 4:
                volume = volume[..., 0]
            if volume.ndim != 3:
                raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
            spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
        except Exception as exc:
            raise MriUnreadable(f"{path.parent.name}/{path.name} cannot be read ({type(exc).__name__}: {exc})") \
                from None
        finite = volume[np.isfinite(volume)]
        window = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
        entry = (volume, spacing, window)
        with self._lock:
            self._volumes[path] = entry
            while len(self._volumes) > self.max_volumes:
                self._volumes.popitem(last=False)
        return entry

    def info(self, path: Path) -> dict[str, Any]:
        volume, spacing, _ = self._load(path)
        return {"shape": list(volume.shape), "spacing": list(spacing), "num_slices": int(volume.shape[2])}

    def slice_png(self, path: Path, index: int) -> bytes:
        volume, spacing, (lo, hi) = self._load(path)
        if not 0 <= index < volume.shape[2]:
            raise IndexError(f"axial slice {index} outside 0..{volume.shape[2] - 1}")
        plane = np.nan_to_num(volume[:, :, index].T[::-1])  # rows = y (anterior up), columns = x
        scaled = np.clip((plane - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        image = Image.fromarray((scaled * 255).round().astype(np.uint8), "L")
        sx, sy = spacing[0] or 1.0, spacing[1] or 1.0
        w, h = image.size[0] * sx, image.size[1] * sy  # physical aspect
        factor = max(1.0, MIN_DISPLAY_PX / min(w, h))
        image = image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BILINEAR)
        return png_bytes(image)
