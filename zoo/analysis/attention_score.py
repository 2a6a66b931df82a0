"""How well patch attention finds tumour: AUROC of attention weights against the ground-truth tumour mask.

The synthetic cohort writes DIR/wsi_masks/<slide_id>.png (uint8 0/255) at the downsample stored in
DIR/wsi_masks/<slide_id>.json. A patch is tumour when at least `threshold` of its area is tumour in the mask.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

MASKS_DIRNAME = "wsi_masks"


def load_tumour_mask(data_dir: str | Path, slide_id: str) -> tuple[np.ndarray, float]:
    """(bool mask, downsample relative to level 0) of one slide."""
    base = Path(data_dir) / MASKS_DIRNAME
    png, meta = base / f"{slide_id}.png", base / f"{slide_id}.json"
    if not png.is_file() or not meta.is_file():
        raise FileNotFoundError(f"tumour mask {png} (+ .json) not found; attention scoring needs the synthetic "
                                "cohort's ground-truth masks")
    downsample = float(json.loads(meta.read_text())["downsample"])
    return np.asarray(Image.open(png).convert("L")) > 127, downsample


def patch_tumour_fraction(mask: np.ndarray, downsample: float, coords: np.ndarray,
                          patch_size_level0: float) -> np.ndarray:
    """Fraction of each patch (level-0 top-left `coords` [N,2] as (x, y)) covered by tumour in `mask`."""
    out = np.zeros(len(coords), dtype=np.float64)
    h, w = mask.shape
    side = patch_size_level0 / downsample
    for i, (x, y) in enumerate(np.asarray(coords, dtype=np.float64)):
        x0, y0 = int(math.floor(x / downsample)), int(math.floor(y / downsample))
        x1, y1 = max(int(math.ceil(x / downsample + side)), x0 + 1), max(int(math.ceil(y / downsample + side)), y0 + 1)
        window = mask[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        out[i] = float(window.mean()) if window.size else 0.0
    return out


@dataclass
class SlideScore:
    slide_id: str
    auroc: float  # NaN when the slide's patches are all tumour or all normal
    num_patches: int
    num_tumour: int


def attention_auroc(attention: np.ndarray, is_tumour: np.ndarray) -> float:
    is_tumour = np.asarray(is_tumour, dtype=bool)
    if is_tumour.all() or not is_tumour.any():
        return float("nan")
    return float(roc_auc_score(is_tumour, np.asarray(attention, dtype=np.float64)))


def score_slide(data_dir: str | Path, slide_id: str, coords: np.ndarray, attention: np.ndarray,
                patch_size_level0: float, threshold: float = 0.5) -> SlideScore:
    mask, downsample = load_tumour_mask(data_dir, slide_id)
    is_tumour = patch_tumour_fraction(mask, downsample, coords, patch_size_level0) >= threshold
    return SlideScore(slide_id, attention_auroc(attention, is_tumour), int(len(coords)), int(is_tumour.sum()))


def summarise(scores: list[SlideScore]) -> dict:
    valid = [s.auroc for s in scores if not math.isnan(s.auroc)]
    return {
        "mean_auroc": float(np.mean(valid)) if valid else float("nan"),
        "num_slides_scored": len(valid),
        "num_slides": len(scores),
        "slides": [s.__dict__ for s in scores],
    }
