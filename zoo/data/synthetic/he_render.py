"""Procedural H&E whole-slide rendering, one tile at a time.

A slide is a low-resolution layout (tissue and tumour fields at ``LAYOUT_DOWNSAMPLE``) plus nuclei generated
per ``CELL`` x ``CELL`` block from a block-seeded RNG, so any tile can be rendered alone, seamlessly, without
ever materialising level 0. Colour follows Beer-Lambert optical density of two stains (haematoxylin, eosin),
so stain normalisation behaves as on real slides. Subtype morphology (nuclear density, size, pleomorphism,
hyperchromasia, glands, lymphocytes, eosinophilic cytoplasm) is applied inside tumour regions only.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LAYOUT_DOWNSAMPLE = 16
CELL = 256
# Ruifrok & Johnston optical-density stain vectors.
H_VECTOR = np.array([0.65, 0.70, 0.29])
E_VECTOR = np.array([0.07, 0.99, 0.11])
BACKGROUND_OD = np.array([0.035, 0.04, 0.045], np.float32)
_NOISE_BANK_SIZE = 1024


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Standard-normal float32 field; windows at random offsets replace per-pixel draws (much faster)."""
    return np.random.default_rng(12345).standard_normal((_NOISE_BANK_SIZE, _NOISE_BANK_SIZE)).astype(np.float32)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bank = _noise_bank()
    if h > bank.shape[0] or w > bank.shape[1]:
        return rng.standard_normal((h, w)).astype(np.float32)
    y, x = rng.integers(0, bank.shape[0] - h + 1), rng.integers(0, bank.shape[1] - w + 1)
    return bank[y : y + h, x : x + w]

NUCLEUS_TUMOUR, NUCLEUS_STROMA, NUCLEUS_LYMPHOCYTE = 0, 1, 2


@dataclass(frozen=True)
class TumourStyle:
    """Tumour morphology; derived from the patient's pathology latent (grade, immune, apocrine)."""

    area_per_nucleus: float
    nuclear_radius: float
    pleomorphism: float
    hyperchromasia: float
    glands_per_mpx: float
    area_per_lymphocyte: float
    cytoplasm_eosin: float
    hue_shift: float

    @classmethod
    def from_latent(cls, latent: np.ndarray) -> "TumourStyle":
        grade, immune, apocrine = (float(v) for v in latent)
        return cls(
            area_per_nucleus=320.0 * np.exp(-0.28 * np.clip(grade, -3, 3)),
            nuclear_radius=float(np.clip(5.6 + 1.1 * grade, 3.6, 9.5)),
            pleomorphism=float(0.06 + 0.07 / (1 + np.exp(-2 * grade))),
            hyperchromasia=float(np.clip(1.05 + 0.15 * grade, 0.7, 1.6)),
            glands_per_mpx=float(70.0 / (1 + np.exp(2.5 * (grade + 0.3)))),
            area_per_lymphocyte=float(3000.0 * np.exp(-0.9 * np.clip(immune, -3, 3))),
            cytoplasm_eosin=float(np.clip(0.32 + 0.10 * apocrine, 0.12, 0.65)),
            hue_shift=float(np.clip(0.06 * apocrine, -0.2, 0.2)),
        )


@dataclass(frozen=True)
class StainStyle:
    """Per-slide staining batch effect (the nuisance stain normalisation removes)."""

    h_vector: np.ndarray
    e_vector: np.ndarray
    h_scale: float
    e_scale: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "StainStyle":
        def jitter(v: np.ndarray) -> np.ndarray:
            out = np.clip(v + rng.normal(0, 0.04, 3), 0.01, None)
            return out / np.linalg.norm(out)

        return cls(jitter(H_VECTOR), jitter(E_VECTOR), float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.8, 1.2)))


@dataclass
class SlideLayout:
    """Smooth tissue / tumour / texture fields at ``downsample`` relative to level 0."""

    width: int
    height: int
    downsample: int
    tissue: np.ndarray
    tumour: np.ndarray
    texture: np.ndarray

    def tumour_mask(self) -> np.ndarray:
        """Ground-truth tumour mask at ``downsample``, bool [h, w]."""
        return (self.tumour > 0.5) & (self.tissue > 0.5)

    def sample(self, field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bilinear value of ``field`` at level-0 pixel coordinates."""
        coords = np.stack([(np.asarray(y) + 0.5) / self.downsample - 0.5,
                           (np.asarray(x) + 0.5) / self.downsample - 0.5])
        return ndimage.map_coordinates(field, coords, order=1, mode="nearest")

    def window(self, field: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Bilinear upsampling of ``field`` over the level-0 window, as two small matrix products."""
        rows, row_lo = _interp_matrix(y0, h, self.downsample, field.shape[0])
        cols, col_lo = _interp_matrix(x0, w, self.downsample, field.shape[1])
        crop = field[row_lo : row_lo + rows.shape[1], col_lo : col_lo + cols.shape[1]]
        return rows @ crop @ cols.T


@functools.lru_cache(maxsize=1024)
def _interp_matrix(start: int, length: int, downsample: int, size: int) -> tuple[np.ndarray, int]:
    """Linear-interpolation weights [length, k] over field rows ``first .. first + k``; returns (weights, first)."""
    pos = np.clip((np.arange(start, start + length) + 0.5) / downsample - 0.5, 0, size - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    frac = (pos - lo).astype(np.float32)
    first = int(lo.min())
    m = np.zeros((length, int(hi.max()) - first + 1), np.float32)
    rows = np.arange(length)
    m[rows, lo - first] += 1 - frac
    m[rows, hi - first] += frac
    return m, first


def _blob_field(rng: np.random.Generator, shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Sum of anisotropic Gaussian bumps (value ~1 inside each blob) on a [h, w] grid."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    field = np.zeros(shape, np.float32)
    for (cy, cx), (ry, rx) in zip(centres, radii):
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        u = ((xx - cx) * c + (yy - cy) * s) / rx
        v = (-(xx - cx) * s + (yy - cy) * c) / ry
        field += np.exp(-0.5 * (u**2 + v**2) ** 1.5 * 1.4)
    return field


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return noise / (noise.std() + 1e-6)


def make_layout(rng: np.random.Generator, width: int, height: int, downsample: int = LAYOUT_DOWNSAMPLE) -> SlideLayout:
    h, w = -(-height // downsample), -(-width // downsample)
    n_blobs = int(rng.integers(1, 4))
    margin = 0.18
    centres = np.column_stack([rng.uniform(margin, 1 - margin, n_blobs) * h,
                               rng.uniform(margin, 1 - margin, n_blobs) * w])
    scale = np.sqrt(0.15 / n_blobs) * min(h, w)
    radii = scale * rng.uniform(0.75, 1.2, (n_blobs, 2))
    tissue_raw = _blob_field(rng, (h, w), centres, radii) + 0.18 * _smooth_noise(rng, (h, w), max(1.0, min(h, w) / 20))
    ys, xs = np.arange(h), np.arange(w)
    edge = np.minimum.outer(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs))
    tissue_raw *= np.clip(edge / max(2.0, 0.04 * min(h, w)), 0, 1)  # keep a background border
    tissue = 1 / (1 + np.exp(-12 * (tissue_raw - 0.45)))

    inside = np.argwhere(tissue > 0.8)
    if len(inside) == 0:
        inside = np.array([[h // 2, w // 2]])
    n_tumours = int(rng.integers(1, 3))
    t_centres = inside[rng.integers(0, len(inside), n_tumours)].astype(np.float32)
    t_radii = np.sqrt(float((tissue > 0.5).sum()) * 0.55 / (np.pi * n_tumours)) * rng.uniform(0.7, 1.1, (n_tumours, 2))
    tumour_raw = _blob_field(rng, (h, w), t_centres,
                             t_radii) + 0.15 * _smooth_noise(rng, (h, w), max(1.0, min(h, w) / 30))
    tumour = (1 / (1 + np.exp(-12 * (tumour_raw - 0.5)))) * (tissue > 0.5)
    texture = _smooth_noise(rng, (h, w), 1.0)
    return SlideLayout(width, height, downsample, tissue.astype(np.float32), tumour.astype(np.float32), texture)


@functools.lru_cache(maxsize=4096)
def _stamp(radius_q: int, elong_q: int, angle_q: int) -> np.ndarray:
    """Soft-edged elliptical nucleus alpha; radius in half pixels, elongation in fifths, angle in 1/8 turns."""
    r, e, a = radius_q / 2.0, elong_q / 5.0, angle_q * np.pi / 8
    half = int(np.ceil(r * e)) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    c, s = np.cos(a), np.sin(a)
    u = (xx * c + yy * s) / e
    v = -xx * s + yy * c
    return np.clip(r - np.sqrt(u**2 + v**2) + 0.5, 0, 1).astype(np.float32)


class SlideRenderer:
    """Renders any level-0 window of one synthetic slide."""

    def __init__(self, layout: SlideLayout, tumour: TumourStyle, stain: StainStyle, seed: tuple[int, ...]):
        self.layout, self.tumour, self.stain, self.seed = layout, tumour, stain, tuple(int(s) for s in seed)
        hv = stain.h_vector + tumour.hue_shift * np.array([-1.0, 0.0, 1.0])
        self.h_vector_tumour = (hv / np.linalg.norm(hv)).astype(np.float32)
        self.h_vector, self.e_vector = stain.h_vector.astype(np.float32), stain.e_vector.astype(np.float32)
        self._cells: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    # -- per-cell objects -------------------------------------------------------------------------------------
    def _cell_objects(self, cx: int, cy: int) -> tuple[np.ndarray, ...]:
        """Nuclei (x, y, radius, darkness, elongation, angle, kind) and gland lumens (x, y, r) of one cell."""
        key = (cx, cy)
        if key in self._cells:
            return self._cells[key]
        if len(self._cells) > 4096:
            self._cells.clear()
        rng = np.random.default_rng([*self.seed, cx + 1, cy + 1])  # cells start at -1
        lay, ts = self.layout, self.tumour
        x0, y0 = cx * CELL, cy * CELL

        def scatter(area_per_item: float) -> tuple[np.ndarray, np.ndarray]:
            n = rng.poisson(CELL * CELL / area_per_item)
            return x0 + rng.uniform(0, CELL, n), y0 + rng.uniform(0, CELL, n)

        # Glands: lumens ringed by tumour nuclei (gland formation is a low-grade feature).
        gx, gy = scatter(1e6 / max(ts.glands_per_mpx, 1e-3))
        gland_ok = (lay.sample(lay.tumour, gx, gy) > 0.6) & (lay.sample(lay.tissue, gx, gy) > 0.6)
        gx, gy = gx[gland_ok], gy[gland_ok]
        gr = rng.uniform(9, 20, len(gx)) * (ts.nuclear_radius / 5.6) ** 0.5
        ring_x, ring_y = [], []
        for x, y, r in zip(gx, gy, gr):
            n_ring = max(6, int(2 * np.pi * (r + ts.nuclear_radius) / (2.1 * ts.nuclear_radius)))
            theta = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, n_ring, endpoint=False)
            ring_x.append(x + (r + ts.nuclear_radius) * np.cos(theta))
            ring_y.append(y + (r + ts.nuclear_radius) * np.sin(theta))

        tx, ty = scatter(ts.area_per_nucleus)
        tum = lay.sample(lay.tumour, tx, ty) > 0.5
        tx, ty = tx[tum], ty[tum]
        if len(gx):
            d = np.min(np.hypot(tx[:, None] - gx[None], ty[:, None] - gy[None]) - gr[None], axis=1)
            keep = d > ts.nuclear_radius * 1.5
            tx, ty = tx[keep], ty[keep]
        if ring_x:
            tx, ty = np.concatenate([tx, *ring_x]), np.concatenate([ty, *ring_y])
        sx, sy = scatter(1800.0)
        stroma = (lay.sample(lay.tissue, sx, sy) > 0.5) & (lay.sample(lay.tumour, sx, sy) <= 0.5)
        sx, sy = sx[stroma], sy[stroma]
        lx, ly = scatter(ts.area_per_lymphocyte)
        lymph = lay.sample(lay.tumour, lx, ly) > 0.4
        lx, ly = lx[lymph], ly[lymph]

        n_t, n_s, n_l = len(tx), len(sx), len(lx)
        radius = np.concatenate([
            ts.nuclear_radius * np.clip(1 + ts.pleomorphism * 2.5 * rng.standard_normal(n_t), 0.5, 2.0),
            rng.uniform(2.6, 3.6, n_s),
            rng.uniform(3.0, 3.8, n_l),
        ])
        darkness = np.concatenate([
            ts.hyperchromasia * rng.uniform(0.8, 1.2, n_t),
            rng.uniform(0.8, 1.0, n_s),
            rng.uniform(1.3, 1.6, n_l),
        ])
        elong = np.concatenate([rng.uniform(1.0, 1.35, n_t), rng.uniform(1.8, 2.6, n_s), np.ones(n_l)])
        kind = np.repeat([NUCLEUS_TUMOUR, NUCLEUS_STROMA, NUCLEUS_LYMPHOCYTE], [n_t, n_s, n_l])
        nuclei = (np.concatenate([tx, sx, lx]), np.concatenate([ty, sy, ly]), radius, darkness, elong,
                  rng.integers(0, 8, n_t + n_s + n_l), kind)
        out = (*nuclei, gx, gy, gr)
        self._cells[key] = out
        return out

    # -- rendering ------------------------------------------------------------------------------------------------
    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 [h, w, 3] of the level-0 window at (x0, y0); beyond the slide edge is background."""
        lay = self.layout
        rng = np.random.default_rng([*self.seed, 1 << 20, x0, y0])
        tissue = lay.window(lay.tissue, x0, y0, w, h)
        noise = 0.012 * _noise(rng, h, w)[..., None]
        if tissue.max() < 0.05:
            return _to_rgb(BACKGROUND_OD + noise)
        tumour = lay.window(lay.tumour, x0, y0, w, h)
        texture = lay.window(lay.texture, x0, y0, w, h)
        tissue_a = np.clip((tissue - 0.5) * 8 + 0.5, 0, 1)
        tumour_a = np.clip((tumour - 0.5) * 8 + 0.5, 0, 1) * tissue_a

        m = 40  # canvas margin (> largest stamp half-size) so stamps near the window edge need no clipping logic
        nuc_normal = np.zeros((h + 2 * m, w + 2 * m), np.float32)
        nuc_tumour = np.zeros_like(nuc_normal)
        lumen = np.zeros_like(nuc_normal)
        for cy in range((y0 - m) // CELL, (y0 + h + m) // CELL + 1):
            for cx in range((x0 - m) // CELL, (x0 + w + m) // CELL + 1):
                xs, ys, rs, ds, es, angs, kinds, gx, gy, gr = self._cell_objects(cx, cy)
                for x, y, r in zip((gx - (x0 - m)).tolist(), (gy - (y0 - m)).tolist(), (gr * 2).astype(int).tolist()):
                    _paste(lumen, _stamp(r, 5, 0), x, y, 1.0)
                columns = ((xs - (x0 - m)).tolist(), (ys - (y0 - m)).tolist(), (rs * 2).astype(int).tolist(),
                           ds.tolist(), (es * 5).astype(int).tolist(), angs.tolist(),
                           (kinds == NUCLEUS_TUMOUR).tolist())
                for x, y, r, d, e, a, is_tumour in zip(*columns):
                    _paste(nuc_tumour if is_tumour else nuc_normal, _stamp(r, e, a), x, y, d)
        nuc_normal, nuc_tumour, lumen = (c[m:-m, m:-m] for c in (nuc_normal, nuc_tumour, lumen))

        chromatin = 1 + 0.18 * _noise(rng, h, w)
        fibres = np.clip(1 + 0.22 * texture + 0.10 * _noise(rng, h, w), 0.3, 1.8)
        ts, st = self.tumour, self.stain
        eosin = tissue_a * (1 - lumen) * ((1 - tumour_a) * 0.48 * fibres
                                          + tumour_a * ts.cytoplasm_eosin * (1 + 0.08 * texture))
        h_normal = st.h_scale * (np.minimum(nuc_normal, 1.8) * 0.95 * chromatin + 0.04 * tissue_a)
        h_tumour = st.h_scale * np.minimum(nuc_tumour, 1.8) * 0.95 * chromatin * (1 - lumen) * tissue_a
        od = (h_normal[..., None] * self.h_vector + h_tumour[..., None] * self.h_vector_tumour
              + (st.e_scale * eosin)[..., None] * self.e_vector + (BACKGROUND_OD + noise))
        return _to_rgb(od)


def _paste(canvas: np.ndarray, stamp: np.ndarray, x: float, y: float, value: float) -> None:
    half = stamp.shape[0] // 2
    cx, cy = int(x + 0.5), int(y + 0.5)
    y_lo, x_lo = cy - half, cx - half
    if y_lo < 0 or x_lo < 0 or y_lo + stamp.shape[0] > canvas.shape[0] or x_lo + stamp.shape[1] > canvas.shape[1]:
        return  # entirely or partly outside the margin-padded canvas: owned by a neighbouring window
    region = canvas[y_lo : y_lo + stamp.shape[0], x_lo : x_lo + stamp.shape[1]]
    np.maximum(region, stamp * value, out=region)


def _to_rgb(od: np.ndarray) -> np.ndarray:
    return (255.0 * np.exp(-np.maximum(od, 0, dtype=np.float32))).astype(np.uint8)
