"""Synthetic breast MRI (T1 post-contrast and T2) with a subtype-dependent lesion.

Geometry is built in millimetres, then sampled on an anisotropic voxel grid (thin in-plane, thick slices on
the last axis) whose spacing and origin go into the NIfTI affine. The lesion's margin (round/smooth vs
spiculated), enhancement, rim enhancement and T2 signal follow the patient's MRI latent.
"""
from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

DEFAULT_SHAPE = (128, 128, 32)
DEFAULT_SPACING = (0.7, 0.7, 3.0)
INTENSITY_SCALE = 1000.0


def _sigmoid(v: float) -> float:
    return float(1 / (1 + np.exp(-v)))


@dataclass(frozen=True)
class LesionStyle:
    spiculation: float   # 0 = smooth sphere .. 1 = strongly spiculated
    enhancement: float   # T1 post-contrast lesion / fat intensity
    rim: float           # 0 = homogeneous .. 1 = rim only
    t2: float            # T2 lesion / fat intensity
    blur_mm: float

    @classmethod
    def from_latent(cls, latent: np.ndarray) -> "LesionStyle":
        spic, enh, rim, t2 = (float(v) for v in latent)
        s = _sigmoid(1.6 * spic)
        return cls(spiculation=0.05 + 0.6 * s, enhancement=0.75 + 0.7 * _sigmoid(1.4 * enh),
                   rim=0.7 * _sigmoid(1.8 * rim - 0.5), t2=0.45 + 0.7 * _sigmoid(1.4 * t2), blur_mm=0.5 + 1.5 * s)


def synthesize_breast_mri(
    rng: np.random.Generator,
    latent: np.ndarray,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> dict[str, nib.Nifti1Image]:
    """Return {"T1": image, "T2": image} (int16 volumes, affine carrying spacing and origin)."""
    style = LesionStyle.from_latent(latent)
    spacing_a = np.asarray(spacing, float)
    extent = (np.asarray(shape) - 1) * spacing_a
    origin = -extent / 2 + rng.normal(0, 2.0, 3)
    axes = [origin[i] + np.arange(shape[i]) * spacing_a[i] for i in range(3)]
    x, y, z = np.meshgrid(*(a.astype(np.float32) for a in axes), indexing="ij", sparse=True)
    centre_mm = origin + extent / 2

    # Breast: half-ellipsoid on a chest wall plane (y = wall); muscle band behind it.
    semi = np.array([extent[0] * 0.36, extent[1] * 0.42, extent[2] * 0.42]) * rng.uniform(0.9, 1.05, 3)
    wall = centre_mm[1] + extent[1] * 0.28
    rel = (x - centre_mm[0]) / semi[0], (y - wall) / semi[1], (z - centre_mm[2]) / semi[2]
    breast = (rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2 <= 1) & (y <= wall)
    muscle = (y > wall) & (y <= wall + 8) & (np.abs(x - centre_mm[0]) < semi[0] * 1.3)

    fgt_noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=(4, 4, 1.3))
    fgt = breast & (fgt_noise > np.quantile(fgt_noise[breast], rng.uniform(0.55, 0.8)))

    # Lesion inside the breast, away from the skin.
    lesion_centre = (np.array([centre_mm[0], wall - semi[1] * 0.5, centre_mm[2]])
                     + rng.uniform(-0.3, 0.3, 3) * semi * np.array([1, 0.6, 1]))
    radius = rng.uniform(6.0, 13.0)
    spikes = rng.standard_normal((14, 3))
    spikes /= np.linalg.norm(spikes, axis=1, keepdims=True)
    lobes = rng.standard_normal((3, 3))
    lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
    # Only voxels within reach of the longest spike can belong to the lesion.
    reach = radius * (1.3 + style.spiculation * 1.6) + 3 * style.blur_mm
    box = tuple(slice(int(np.searchsorted(axes[i], lesion_centre[i] - reach)),
                      int(np.searchsorted(axes[i], lesion_centre[i] + reach))) for i in range(3))
    local = np.meshgrid(*(axes[i][box[i]] - lesion_centre[i] for i in range(3)), indexing="ij")
    d = np.stack(local, -1).astype(np.float32)
    dist = np.linalg.norm(d, axis=-1)
    unit = d / np.maximum(dist, 1e-6)[..., None]
    spike_profile = np.max(np.clip(unit @ spikes.T.astype(np.float32), 0, 1) ** 24, axis=-1)
    lobulation = 0.08 * np.sum(np.clip(unit @ lobes.T.astype(np.float32), 0, 1) ** 4, axis=-1)
    boundary = radius * (1 + lobulation + style.spiculation * 1.6 * spike_profile)
    inside = np.zeros(shape, np.float32)
    depth = np.zeros(shape, np.float32)
    inside[box] = np.clip((boundary - dist) / max(style.blur_mm, 0.3) + 0.5, 0, 1)
    depth[box] = np.clip((boundary - dist) / (0.45 * radius), 0, 1)  # 0 at the margin, 1 deep inside
    lesion_t1 = style.enhancement * (1 - style.rim * depth)
    lesion_t2 = style.t2 * (1 + 0.3 * style.rim * depth)  # necrotic core: T2-bright

    volumes = {}
    for name, (fat, gland, muscle_v, lesion) in {
        "T1": (1.0, 0.45, 0.35, lesion_t1),
        "T2": (0.7, 0.55, 0.3, lesion_t2),
    }.items():
        tissue = np.where(breast, fat, 0.0)
        tissue = np.where(fgt, gland, tissue)
        tissue = np.where(muscle, muscle_v, tissue)
        tissue = np.where(y > wall + 8, 0.5 * fat, tissue) * ((y > wall + 8) | breast | muscle)
        tissue = tissue * (1 - inside) + lesion * inside * (breast | (inside > 0))
        bias = 1 + 0.12 * (x - centre_mm[0]) / extent[0] + 0.08 * (y - centre_mm[1]) / extent[1]
        signal = ndimage.gaussian_filter((tissue * bias).astype(np.float32), sigma=(0.6, 0.6, 0.3))
        sigma = 0.03
        noisy = np.hypot(signal + sigma * rng.standard_normal(shape, dtype=np.float32),
                         sigma * rng.standard_normal(shape, dtype=np.float32))
        data = np.clip(noisy * INTENSITY_SCALE, 0, 32767).astype(np.int16)
        affine = np.diag([*spacing_a, 1.0])
        affine[:3, 3] = origin
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        volumes[name] = img
    return volumes


def lesion_features(volume: np.ndarray) -> np.ndarray:
    """Hand-crafted lesion statistics used to sanity-check the cohort's difficulty (not by the models)."""
    v = np.asarray(volume, np.float32)
    bright = v > np.quantile(v, 0.995)
    return np.array([v.mean(), v.std(), np.quantile(v, 0.99), bright.sum()], np.float32)
