"""Training-time augmentation for pathology bags and MRI volumes (numpy, seeded by the caller's RNG).

Stain normalisation is applied as an augmentation with probability ``stain_normalization_p`` rather than to every
patch: evaluation and serving see raw patches, so always normalising in training would make the two differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

# Macenko et al. reference stain matrix (columns H, E in OD space) and 99th-percentile concentrations,
# the values commonly used as the normalisation target when no reference patch is given.
REFERENCE_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
REFERENCE_MAX_CONC = np.array([1.9705, 1.0308])


class MacenkoNormalizer:
    """Macenko stain normalisation: fit a target on a reference patch, map any patch's stains onto it."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.15, io: float = 240.0):
        self.alpha, self.beta, self.io = alpha, beta, io
        self.stains = REFERENCE_STAINS.copy()
        self.max_conc = REFERENCE_MAX_CONC.copy()

    def _od(self, rgb: np.ndarray) -> np.ndarray:
        return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / self.io)

    def estimate(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(stain matrix [3, 2] with H first, 99th-percentile concentrations [2]); None without enough tissue."""
        od = self._od(rgb)
        tissue = od[np.linalg.norm(od, axis=1) > self.beta]  # pure-eosin pixels absorb in green only
        if len(tissue) < 50:
            return None
        _, vecs = np.linalg.eigh(np.cov(tissue.T))
        plane = vecs[:, 1:3]
        proj = tissue @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, self.alpha), np.percentile(phi, 100 - self.alpha)
        v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
        v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
        v1, v2 = v1 * np.sign(v1.sum() or 1), v2 * np.sign(v2.sum() or 1)
        stains = np.stack([v1, v2], 1) if v1[0] > v2[0] else np.stack([v2, v1], 1)  # haematoxylin is redder in OD
        stains /= np.linalg.norm(stains, axis=0, keepdims=True)
        conc = np.linalg.lstsq(stains, tissue.T, rcond=None)[0]
        return stains, np.percentile(conc, 99, axis=1)

    def fit(self, reference_rgb: np.ndarray) -> "MacenkoNormalizer":
        """reference_rgb: uint8 [H, W, 3] or [3, H, W]."""
        est = self.estimate(_hwc(reference_rgb))
        if est is None:
            raise ValueError("reference patch has too little tissue to estimate stains; choose a tissue-rich patch")
        self.stains, self.max_conc = est
        return self

    def __call__(self, patch: np.ndarray) -> np.ndarray:
        """Normalise one uint8 patch (layout kept); a patch with too little tissue is returned unchanged."""
        chw = patch.ndim == 3 and patch.shape[0] == 3 and patch.shape[-1] != 3
        rgb = _hwc(patch)
        est = self.estimate(rgb)
        if est is None:
            return patch
        stains, max_conc = est
        conc = np.linalg.lstsq(stains, self._od(rgb).T, rcond=None)[0]
        conc *= (self.max_conc / np.maximum(max_conc, 1e-6))[:, None]
        out = np.clip(self.io * np.exp(-(self.stains @ conc)), 0, 255).T.reshape(rgb.shape).astype(np.uint8)
        return out.transpose(2, 0, 1) if chw else out


def _hwc(img: np.ndarray) -> np.ndarray:
    return img.transpose(1, 2, 0) if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3 else img


@dataclass
class PathologyAugment:
    """Per-patch flips, 90-degree rotations, colour jitter and (sometimes) Macenko normalisation of a uint8 bag."""

    random_flip: bool = True
    random_rotation: int = 90
    color_jitter: float = 0.1
    stain_normalizer: MacenkoNormalizer | None = None
    stain_normalization_p: float = 0.5

    def __call__(self, bag: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """bag: uint8 [N, 3, H, W] -> augmented copy, same shape and dtype."""
        out = np.empty_like(bag)
        for i, patch in enumerate(bag):
            if self.stain_normalizer is not None and rng.random() < self.stain_normalization_p:
                patch = self.stain_normalizer(patch)
            if self.random_flip and rng.random() < 0.5:
                patch = patch[:, :, ::-1]
            if self.random_rotation and patch.shape[1] == patch.shape[2]:
                patch = np.rot90(patch,
                                 k=int(rng.integers(0, 360 // self.random_rotation)) * self.random_rotation // 90,
                                 axes=(1, 2))
            if self.color_jitter > 0:
                patch = _jitter(patch, rng, self.color_jitter)
            out[i] = patch
        return out


def _jitter(patch: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation factors in [1 - strength, 1 + strength]."""
    x = patch.astype(np.float32)
    b, c, s = rng.uniform(1 - strength, 1 + strength, 3)
    x = x * b
    mean = x.mean()
    x = (x - mean) * c + mean
    grey = x.mean(axis=0, keepdims=True)
    x = (x - grey) * s + grey
    return np.clip(x, 0, 255).astype(np.uint8)


@dataclass
class MRIAugment:
    random_flip: bool = True
    random_noise: float = 0.01

    def __call__(self, volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """volume: float32 [C, X, Y, Z] -> augmented copy. Flips in-plane axes only (slices are thick)."""
        out = volume
        if self.random_flip:
            for axis in (1, 2):
                if rng.random() < 0.5:
                    out = np.flip(out, axis=axis)
        out = np.ascontiguousarray(out, dtype=np.float32)
        if self.random_noise > 0:
            out = out + rng.normal(0, self.random_noise, out.shape).astype(np.float32)
        return out


@dataclass
class Augmentation:
    pathology: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
    mri: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None


STAIN_NORMALIZERS: dict[str, Callable[[], MacenkoNormalizer]] = {"macenko": MacenkoNormalizer}


def build_augmentation(section: Mapping[str, Any] | None) -> Augmentation:
    """Build from the config's ``data.augmentation`` section (missing keys = off)."""
    section = section or {}
    path_cfg, mri_cfg = section.get("pathology") or {}, section.get("mri") or {}
    unknown = set(section) - {"pathology", "mri"}
    if unknown:
        raise ValueError(f"data.augmentation: unknown key(s) {sorted(unknown)}; expected pathology, mri")
    stain = path_cfg.get("stain_normalization")
    if stain not in (None, False, "none") and stain not in STAIN_NORMALIZERS:
        raise ValueError(f"data.augmentation.pathology.stain_normalization: {stain!r} unknown; "
                         f"use one of {sorted(STAIN_NORMALIZERS)} or null")
    rotation = int(path_cfg.get("random_rotation") or 0)
    if rotation not in (0, 90, 180):
        raise ValueError(f"data.augmentation.pathology.random_rotation must be 0, 90 or 180 (got {rotation})")
    jitter = path_cfg.get("color_jitter", False)
    pathology = PathologyAugment(
        random_flip=bool(path_cfg.get("random_flip", False)),
        random_rotation=rotation,
        color_jitter=0.1 if jitter is True else float(jitter or 0.0),
        stain_normalizer=STAIN_NORMALIZERS[stain]() if stain in STAIN_NORMALIZERS else None,
        stain_normalization_p=float(path_cfg.get("stain_normalization_p", 0.5)),
    )
    mri = MRIAugment(random_flip=bool(mri_cfg.get("random_flip", False)),
                     random_noise=float(mri_cfg.get("random_noise") or 0.0))
    return Augmentation(pathology=pathology, mri=mri)
