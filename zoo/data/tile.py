"""WSI tiling: tissue detection on a thumbnail, a patch grid, level-0 coordinates in HDF5 (no patch images).

``python -m zoo.data.tile --input-dir DIR/wsi_raw --output-dir DIR/wsi_patches/ps256_l0_t0.5``
``python -m zoo.data.tile --input-dir DIR/wsi_raw --output-dir DIR/wsi_patches/ps256_m20_t0.5
--target-magnification 20``

By pyramid level (default): patches are ``patch_size`` px at ``level``. Slides without an mpp are tiled anyway;
``mpp`` is recorded as NaN and the result carries a warning.

By magnification or mpp (``target_magnification`` / ``target_mpp``, as TRIDENT): the target downsample is the
slide's level-0 magnification over the target (or target mpp over the slide's); patches are read from the level
with the largest downsample not above it (``read_size`` = patch_size * target / level downsample px there),
resized to ``patch_size`` (zoo.data.patches.RESAMPLE), and the grid steps by ``patch_size_level0`` =
round(patch_size * target downsample) level-0 px. Magnification and mpp convert as mpp = 10 / magnification
(20x = 0.5 mpp). A slide recording neither is an error unless ``assume_magnification`` is given; a target finer
than level 0 is an error (patches are never upsampled).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np
import openslide
from PIL import Image, ImageDraw
from skimage import color, morphology, util
from tqdm import tqdm

from zoo import spec
from zoo.atomic import atomic_path, remove_orphaned_temps
from zoo.cli_help import HelpFormatter

from .feature_files import trident_coords_attrs
from .files import default_workers, map_in_processes
from .patches import TilingError, direct_tiles, open_slide, read_patches
from .shards import parse_shard, read_slides_list, select_listed, shard_items

TILING_VERSION = 1
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
THUMBNAIL_MAX = 2048
THUMBNAIL_MIN = 512
# Formats whose levels are each one plain grid of TIFF tiles; others (e.g. Ventana's overlapping tiles) need OpenSlide.
THUMBNAIL_CHECK_PX = 256  # side of the two windows a directly decoded thumbnail level is checked on
DIRECT_THUMBNAIL_MIN_PX = 16 * THUMBNAIL_CHECK_PX ** 2  # below, OpenSlide reads the level about as fast as the check
THUMBNAIL_PX_PER_PATCH = 8  # tissue fraction of a patch is measured on at least 8x8 thumbnail pixels
SATURATION_THRESHOLD = 0.1
MIN_OBJECT_FRACTION = 1.25e-4  # the seed's 500 px at a 2000 x 2000 thumbnail, scaled to the thumbnail's area
CLOSING_FOOTPRINT = 5
# Relative slack when matching a target downsample: a level within 2 % of it is read as it is, and a target up to
# 2 % finer than level 0 (40x asked of a 0.2525 mpp scan) is read at level 0 without upsampling.
RESOLUTION_TOLERANCE = 0.02
RESOLUTION_KEYS = spec.TILING_RESOLUTION_KEYS  # config / manifest keys selecting tiling by magnification


@dataclass
class TileResult:
    slide_path: Path
    h5_path: Path | None
    status: str  # "tiled" | "skipped" | "failed"
    num_patches: int = 0
    message: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class TilingSummary:
    results: list[TileResult]

    @property
    def failed(self) -> list[TileResult]:
        return [r for r in self.results if not r.ok]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def report(self, max_failures: int | None = None) -> str:
        """Summary line, warnings and failures (the first ``max_failures`` of them when given)."""
        lines = [f"tiling: {self.count('tiled')} tiled, {self.count('skipped')} already done, "
                 f"{len(self.failed)} failed, {sum(r.num_patches for r in self.results if r.ok)} patches"]
        lines += [f"  WARNING {r.slide_path.name}: {w}" for r in self.results for w in r.warnings]
        failed = self.failed if max_failures is None else self.failed[:max_failures]
        lines += [f"  FAILED {r.message}" for r in failed]
        if len(failed) < len(self.failed):
            lines.append(f"  ... and {len(self.failed) - len(failed)} more failures")
        return "\n".join(lines)


def tiling_dir_name(patch_size: int, level: int, tissue_threshold: float,
                    target_magnification: float | None = None, target_mpp: float | None = None) -> str:
    """Sub-directory of ``DIR/wsi_patches`` for one tiling configuration: ``ps256_l0_t0.5`` by pyramid level,
    ``ps256_m20_t0.5`` at a target magnification, ``ps256_mpp0.5_t0.5`` at a target mpp (``level`` is then unused)."""
    check_resolution_options(target_magnification, target_mpp)
    if target_magnification is not None:
        scale = f"m{float(target_magnification):g}"
    elif target_mpp is not None:
        scale = f"mpp{float(target_mpp):g}"
    else:
        scale = f"l{int(level)}"
    return f"ps{int(patch_size)}_{scale}_t{float(tissue_threshold):g}"


def resolution_options(settings: Mapping[str, Any]) -> dict[str, float]:
    """The RESOLUTION_KEYS set (not None) in a config's ``data.modalities.pathology`` or a manifest's
    ``preprocessing.pathology``: keyword arguments for tile_slide(s), tiling_dir and the dataset."""
    return {k: float(settings[k]) for k in RESOLUTION_KEYS if settings.get(k) is not None}


def check_resolution_options(target_magnification: float | None = None, target_mpp: float | None = None,
                             assume_magnification: float | None = None) -> None:
    """ValueError for a call that asks both targets or a non-positive one."""
    if target_magnification is not None and target_mpp is not None:
        raise ValueError(f"give target_magnification ({target_magnification}) or target_mpp ({target_mpp}), not both")
    for name, value in (("target_magnification", target_magnification), ("target_mpp", target_mpp),
                        ("assume_magnification", assume_magnification)):
        if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
            raise ValueError(f"{name} must be a positive number (got {value})")


@dataclass(frozen=True)
class PatchGeometry:
    """How one slide's patches are read: ``read_size`` px square at pyramid ``level``, resized to ``patch_size``
    when different; each covers (and the grid steps by) ``patch_size_level0`` level-0 px."""

    level: int
    patch_size: int
    read_size: int
    patch_size_level0: int
    level_downsample: float
    attrs: dict = field(default_factory=dict)  # magnification attrs of the coords file (empty by level)
    warnings: tuple[str, ...] = ()


def slide_resolution(slide: openslide.OpenSlide) -> tuple[float, float]:
    """(mpp, objective magnification) of level 0 as the slide records them (``openslide.mpp-x``,
    ``openslide.objective-power``); NaN where absent, unreadable or not positive."""
    def number(key: str) -> float:
        try:
            value = float(slide.properties.get(key))
        except (TypeError, ValueError):
            return math.nan
        return value if math.isfinite(value) and value > 0 else math.nan

    return number(openslide.PROPERTY_NAME_MPP_X), number(openslide.PROPERTY_NAME_OBJECTIVE_POWER)


def patch_geometry(slide: openslide.OpenSlide, slide_path: str | os.PathLike, patch_size: int, level: int = 0,
                   target_magnification: float | None = None, target_mpp: float | None = None,
                   assume_magnification: float | None = None) -> PatchGeometry:
    """Where and how big one slide's patches are read, by pyramid `level` or at a target magnification / mpp
    (module docstring); TilingError naming the slide when the slide cannot give that."""
    check_resolution_options(target_magnification, target_mpp, assume_magnification)
    if target_magnification is None and target_mpp is None:
        if not 0 <= level < slide.level_count:
            raise TilingError(f"{slide_path}: level {level} does not exist (the slide has {slide.level_count} levels)")
        downsample = float(slide.level_downsamples[level])
        return PatchGeometry(level, patch_size, patch_size, int(round(patch_size * downsample)), downsample)
    asked = f"{target_magnification:g}x" if target_magnification is not None else f"{target_mpp:g} mpp"
    mpp, magnification = slide_resolution(slide)
    assumed = math.isnan(mpp) and math.isnan(magnification)
    warnings: list[str] = []
    if assumed:
        if assume_magnification is None:
            raise TilingError(
                f"{slide_path}: the slide records neither microns per pixel (openslide.mpp-x) nor objective power "
                f"(openslide.objective-power), so {asked} cannot be located in it; pass --assume-magnification X "
                "(its scan magnification: 20x = 0.5 mpp, 40x = 0.25 mpp) or tile by --level")
        magnification, mpp = float(assume_magnification), 10.0 / float(assume_magnification)
        warnings.append(f"no mpp or objective power in the slide; assumed {magnification:g}x ({mpp:g} mpp)")
    elif math.isnan(mpp):
        mpp = 10.0 / magnification
    elif math.isnan(magnification):
        magnification = 10.0 / mpp
    if target_magnification is not None:
        target_downsample = magnification / float(target_magnification)
    else:
        target_downsample = float(target_mpp) / mpp
    if target_downsample < 1 - RESOLUTION_TOLERANCE:
        raise TilingError(
            f"{slide_path}: {asked} is finer than the slide's level 0 ({magnification:g}x, {mpp:g} mpp"
            f"{', assumed' if assumed else ''}); patches are never upsampled: ask for {magnification:g}x or less "
            f"(--target-mpp {mpp:g} or more)")
    if target_downsample < 1:
        warnings.append(f"{asked} is within {RESOLUTION_TOLERANCE:.0%} of the slide's level 0 ({magnification:g}x, "
                        f"{mpp:g} mpp); read at level 0 as it is")
        target_downsample = 1.0
    downsamples = [float(d) for d in slide.level_downsamples]
    level = max((i for i, d in enumerate(downsamples) if d <= target_downsample * (1 + RESOLUTION_TOLERANCE)),
                key=lambda i: downsamples[i])
    size0 = int(round(patch_size * target_downsample))
    read_size = max(1, int(round(size0 / downsamples[level])))
    attrs = {"tiled_by": "magnification" if target_magnification is not None else "mpp",
             "target_magnification": float(target_magnification if target_magnification is not None
                                           else 10.0 / float(target_mpp)),
             "target_mpp": float(target_mpp if target_mpp is not None else 10.0 / float(target_magnification)),
             "level0_magnification": float(magnification), "mpp": float(mpp),
             "target_downsample": float(target_downsample),
             "assume_magnification": float(assume_magnification or 0.0), "magnification_assumed": int(assumed)}
    return PatchGeometry(level, patch_size, read_size, size0, downsamples[level], attrs, tuple(warnings))


def patch_read_size(attrs: Mapping[str, Any]) -> int | None:
    """Pixels read per patch side at a zoo coords file's ``level`` (its ``read_size`` attr) when they differ from
    its ``patch_size`` (the region is then resized to patch_size); None when patches are read as they are (every
    tiling by level, files from before read_size was recorded, other tools' files)."""
    size = attrs.get("read_size")
    return None if size is None or int(size) == int(attrs["patch_size"]) else int(size)


_UINT8_AS_FLOAT = util.img_as_float(np.arange(256, dtype=np.uint8))


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """The S channel of skimage's rgb2hsv, bit for bit, without computing hue (3-6x faster on thumbnails)."""
    rgb = np.asarray(rgb)[..., :3]
    if rgb.dtype != np.uint8:
        return color.rgb2hsv(rgb)[..., 1]
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = np.maximum(np.maximum(red, green), blue)  # elementwise: ~10x faster than a reduction over a 3-wide axis
    bottom = np.minimum(np.minimum(red, green), blue)
    value = _UINT8_AS_FLOAT[top]
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = (value - _UINT8_AS_FLOAT[bottom]) / value
    saturation[top == bottom] = 0.0
    return saturation


def read_thumbnail(slide: openslide.OpenSlide, slide_path: str | os.PathLike, side: int,
                   direct_jpeg: bool = True) -> np.ndarray:
    """RGB uint8 [H, W, 3]: exactly OpenSlide's ``get_thumbnail((side, side))``, with the level it shrinks decoded
    straight from its JPEG tiles when they match OpenSlide's pixels on two windows (that read is ~75 % of
    tiling a large slide through OpenSlide); anything else goes through OpenSlide."""
    level = slide.get_best_level_for_downsample(max(d / side for d in slide.dimensions))
    size = slide.level_dimensions[level]
    tiles = None
    if (direct_jpeg and size[0] * size[1] >= DIRECT_THUMBNAIL_MIN_PX
            and slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff").lower() == "ffffff"):
        tiles = direct_tiles(slide, slide_path, level)
    if tiles is not None:
        try:
            pixels = tiles.region(0, 0, *size)
        except Exception:  # noqa: BLE001 - a tile tifffile cannot decode: OpenSlide reads this slide
            pixels = None
        if pixels is not None and _matches_openslide(slide, level, pixels):
            thumb = Image.fromarray(pixels)
            thumb.thumbnail((side, side), Image.Resampling.LANCZOS)  # as openslide-python's get_thumbnail
            return np.asarray(thumb)
    return np.asarray(slide.get_thumbnail((side, side)).convert("RGB"))


def _matches_openslide(slide: openslide.OpenSlide, level: int, pixels: np.ndarray,
                       window: int = THUMBNAIL_CHECK_PX) -> bool:
    """Whether `pixels` (all of `level`) equal OpenSlide's on white in a square window at the top-left corner
    and one at the centre."""
    height, width = pixels.shape[:2]
    size = min(window, width, height)
    downsample = slide.level_downsamples[level]
    for x, y in ((0, 0), ((width - size) // 2, (height - size) // 2)):
        corner = np.array([[round(x * downsample), round(y * downsample)]])
        reference = read_patches(slide, corner, size, level)[0].transpose(1, 2, 0)
        if not np.array_equal(reference, pixels[y:y + size, x:x + size]):
            return False
    return True


def detect_tissue(thumbnail: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail (HSV saturation, small-object removal, closing)."""
    mask = hsv_saturation(thumbnail) > SATURATION_THRESHOLD
    min_size = max(4, int(round(MIN_OBJECT_FRACTION * mask.size)))
    mask = morphology.remove_small_objects(mask, max_size=min_size - 1)
    return morphology.closing(mask, np.ones((CLOSING_FOOTPRINT, CLOSING_FOOTPRINT), bool))


def grid_tissue_fraction(mask: np.ndarray, scale: tuple[float, float], xs: np.ndarray, ys: np.ndarray,
                         size0: int) -> np.ndarray:
    """Tissue fraction of each level-0 square (x, y, size0) from a mask at ``scale`` = level-0 px per mask px."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, 0), 1)

    def bounds(v: np.ndarray, s: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.clip(np.floor(v / s).astype(int), 0, n - 1)
        hi = np.clip(np.ceil((v + size0) / s).astype(int), lo + 1, n)
        return lo, hi

    x0, x1 = bounds(xs, scale[0], mask.shape[1])
    y0, y1 = bounds(ys, scale[1], mask.shape[0])
    x0, y0 = np.meshgrid(x0, y0)
    x1, y1 = np.meshgrid(x1, y1)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return total / ((y1 - y0) * (x1 - x0))


_ATTR_DEFAULTS = {"tiled_by": "level"}  # files written before tiling by magnification existed


def _attrs_match(h5_path: Path, expected: dict) -> bool:
    try:
        with h5py.File(h5_path, "r") as f:
            return (all(f.attrs.get(k, _ATTR_DEFAULTS.get(k)) == v for k, v in expected.items())
                    and "coords" in f)
    except OSError:
        return False


def tile_slide(
    slide_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    patch_size: int = 256,
    level: int = 0,
    tissue_threshold: float = 0.5,
    overwrite: bool = False,
    qc: bool = True,
    *,
    target_magnification: float | None = None,
    target_mpp: float | None = None,
    assume_magnification: float | None = None,
) -> TileResult:
    """Tile one slide into ``output_dir/<slide_id>.h5`` (+ ``qc/<slide_id>.png`` unless ``qc`` is False: inference
    paths skip the overlay, which costs as much as the tissue detection); never raises for bad input (a bad
    combination of options is a ValueError). ``target_magnification`` / ``target_mpp`` tile at that resolution
    instead of ``level`` (module docstring); ``assume_magnification`` is the level-0 magnification of slides that
    record neither mpp nor objective power."""
    check_resolution_options(target_magnification, target_mpp, assume_magnification)
    slide_path, output_dir = Path(slide_path), Path(output_dir)
    h5_path = output_dir / f"{slide_path.stem}.h5"
    expected: dict[str, Any] = {"patch_size": int(patch_size), "tissue_threshold": float(tissue_threshold),
                                "version": TILING_VERSION}
    if target_magnification is not None:
        expected.update(tiled_by="magnification", target_magnification=float(target_magnification))
    elif target_mpp is not None:
        expected.update(tiled_by="mpp", target_mpp=float(target_mpp))
    else:
        expected.update(tiled_by="level", level=int(level))
    if expected["tiled_by"] != "level":
        expected["assume_magnification"] = float(assume_magnification or 0.0)
    if not overwrite and h5_path.exists() and _attrs_match(h5_path, expected):
        with h5py.File(h5_path, "r") as f:
            return TileResult(slide_path, h5_path, "skipped", int(f["coords"].shape[0]))
    resolution = dict(target_magnification=target_magnification, target_mpp=target_mpp,
                      assume_magnification=assume_magnification)
    try:
        return _tile(slide_path, output_dir, h5_path, int(patch_size), int(level), float(tissue_threshold), qc,
                     resolution)
    except TilingError as e:
        return TileResult(slide_path, None, "failed", message=str(e))
    except Exception as e:  # noqa: BLE001 - one bad slide must not stop the others
        return TileResult(slide_path, None, "failed", message=f"{slide_path}: {type(e).__name__}: {e}")


def _tile(slide_path: Path, output_dir: Path, h5_path: Path, patch_size: int, level: int, threshold: float,
          qc: bool = True, resolution: Mapping[str, float | None] | None = None) -> TileResult:
    if patch_size < 8:
        raise TilingError(f"patch_size must be >= 8 (got {patch_size})")
    if not 0 <= threshold <= 1:
        raise TilingError(f"tissue_threshold must be in [0, 1] (got {threshold})")
    warnings: list[str] = []
    with open_slide(slide_path) as slide:
        geometry = patch_geometry(slide, slide_path, patch_size, level, **(resolution or {}))
        warnings += geometry.warnings
        level, downsample, size0 = geometry.level, geometry.level_downsample, geometry.patch_size_level0
        width, height = slide.dimensions
        if size0 > width or size0 > height:
            raise TilingError(f"{slide_path}: slide ({width}x{height} px at level 0) is smaller than one patch "
                              f"({patch_size} px at level {level} = {size0} px at level 0); use a smaller --patch-size")
        mpp = slide_resolution(slide)[0]
        if math.isnan(mpp) and not geometry.attrs:
            warnings.append("no microns-per-pixel (openslide.mpp-x) in the slide; tiled in pixels, mpp recorded as NaN")
        side = int(np.clip(max(width, height) * THUMBNAIL_PX_PER_PATCH / size0, THUMBNAIL_MIN, THUMBNAIL_MAX))
        try:
            thumb = read_thumbnail(slide, slide_path, side)
        except openslide.OpenSlideError as e:
            raise TilingError(f"{slide_path}: cannot read pixels ({e}); the file may be truncated or corrupt") from e
        mask = detect_tissue(thumb)
        if not mask.any():
            raise TilingError(f"{slide_path}: no tissue found (HSV saturation > {SATURATION_THRESHOLD} nowhere on the "
                              "thumbnail); check the slide is an H&E scan with tissue")
        scale = (width / mask.shape[1], height / mask.shape[0])
        xs = np.arange(0, width - size0 + 1, size0)
        ys = np.arange(0, height - size0 + 1, size0)
        frac = grid_tissue_fraction(mask, scale, xs, ys, size0)
        keep_y, keep_x = np.nonzero(frac >= threshold)
        coords = np.stack([xs[keep_x], ys[keep_y]], 1).astype(np.int64)
        if len(coords) == 0:
            raise TilingError(f"{slide_path}: tissue found but no patch reaches tissue fraction {threshold}; "
                              "lower --tissue-threshold or --patch-size")
        attrs = {"slide_path": str(slide_path.resolve()), "slide_id": slide_path.stem, "width": int(width),
                 "height": int(height), "mpp": mpp, "level": level, "patch_size": patch_size,
                 "patch_size_level0": size0,
                 "downsample": downsample, "read_size": geometry.read_size, "tissue_threshold": threshold,
                 "version": TILING_VERSION, **geometry.attrs}
        # TRIDENT's names too (zoo.data.feature_files), so TRIDENT/CLAM-style readers take our coords as theirs;
        # a magnification tiling's own level0/target magnifications stay
        for key, value in trident_coords_attrs(
                patch_size=patch_size, patch_size_level0=size0, downsample=downsample, mpp=mpp,
                objective_power=slide.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER), name=slide_path.stem,
                savetodir=str(output_dir.resolve()), width=width, height=height).items():
            attrs.setdefault(key, value)
    with atomic_path(h5_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=coords)
            f["coords"].attrs["columns"] = "x,y (level 0, top-left)"
            f["coords"].attrs.update(attrs)  # where TRIDENT reads them
            f.attrs.update(attrs)
    if qc:
        _write_qc(output_dir / "qc" / f"{slide_path.stem}.png", thumb, mask, coords, scale, size0)
    return TileResult(slide_path, h5_path, "tiled", len(coords), warnings=warnings)


def _write_qc(path: Path, thumb: np.ndarray, mask: np.ndarray, coords: np.ndarray, scale: tuple[float, float],
              size0: int) -> None:
    overlay = thumb.astype(np.float32)
    overlay[mask] = overlay[mask] * 0.7 + np.array([0, 160, 0]) * 0.3
    img = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for x, y in coords:
        draw.rectangle([x / scale[0], y / scale[1], (x + size0) / scale[0] - 1, (y + size0) / scale[1] - 1],
                       outline=(0, 0, 255))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def find_slides(input_dir: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(input_dir).iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)


def slide_patient(slide_id: str) -> str:
    """The patient a slide belongs to in the cohort layout (wsi_raw/<patient_id>-<n>.<ext>; ids may hold '-')."""
    return slide_id.rsplit("-", 1)[0]


def patient_slides(slides_dir: str | os.PathLike, patient_id: str) -> list[Path]:
    """One patient's slides in any supported format, assigned as training assigns them (not by a name prefix, which
    would also take the slides of patient '<patient_id>-x')."""
    slides_dir = Path(slides_dir)
    return [p for p in find_slides(slides_dir) if slide_patient(p.stem) == patient_id] if slides_dir.is_dir() else []


def tile_slides(
    paths: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    patch_size: int = 256,
    level: int = 0,
    tissue_threshold: float = 0.5,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    *,
    target_magnification: float | None = None,
    target_mpp: float | None = None,
    assume_magnification: float | None = None,
    shared_output: bool = False,
) -> TilingSummary:
    """Tile many slides in parallel (tile_slide's options); failures are collected in the summary, never raised.
    ``shared_output``: other jobs (shards, hosts) write into ``output_dir`` too, so only the temp files of these
    slides left by dead writers are removed, never another job's."""
    check_resolution_options(target_magnification, target_mpp, assume_magnification)
    task = functools.partial(tile_slide, output_dir=Path(output_dir), patch_size=patch_size, level=level,
                             tissue_threshold=tissue_threshold, overwrite=overwrite,
                             target_magnification=target_magnification, target_mpp=target_mpp,
                             assume_magnification=assume_magnification)
    tasks = [Path(p) for p in paths]
    for folder, suffix in ((Path(output_dir), ".h5"), (Path(output_dir) / "qc", ".png")):  # of a killed earlier run
        remove_orphaned_temps(folder, names=[t.stem + suffix for t in tasks] if shared_output else None)
    n_workers = min(default_workers(workers), max(1, len(tasks)))
    bar = dict(total=len(tasks), desc="tiling", unit="slide", disable=not progress)
    if n_workers == 1:
        results = [task(t) for t in tqdm(tasks, **bar)]
    else:
        with tqdm(**bar) as shown:
            results = map_in_processes(task, tasks, n_workers, advance=shown.update,
                                       on_crash=lambda path, why: TileResult(path, None, "failed",
                                                                            message=f"{path}: {why}"))
    return TilingSummary(results)


def select_slides(slides: Sequence[Path], slides_list: str | os.PathLike | None = None,
                  shard: tuple[int, int] | None = None, where: str | os.PathLike = "the input folder") -> list[Path]:
    """The slides named in `slides_list` (all when None), then shard (I, N) of them sorted by slide id."""
    by_id = {Path(s).stem: Path(s) for s in slides}
    if slides_list is not None:
        by_id = select_listed(by_id, read_slides_list(slides_list), str(where))
    return [by_id[k] for k in shard_items(list(by_id), shard)]


def load_coords(h5_path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Return (coords int64 [N, 2] level-0 (x, y), attrs dict) of a tiling file."""
    h5_path = Path(h5_path)
    try:
        with h5py.File(h5_path, "r") as f:
            if "coords" not in f:
                raise TilingError(f"{h5_path}: no 'coords' dataset; re-run python -m zoo.data.tile --overwrite")
            coords = np.asarray(f["coords"][()], np.int64).reshape(-1, 2)
            attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                     for source in (f["coords"].attrs, f.attrs) for k, v in source.items()}  # root (ours) wins
    except OSError as e:
        raise TilingError(f"{h5_path}: unreadable tiling file ({e}); re-run python -m zoo.data.tile --overwrite") from e
    if "slide_path" in attrs:
        attrs["slide_path"] = str(relocated_slide(h5_path, Path(str(attrs["slide_path"]))))
    return coords, attrs


def relocated_slide(h5_path: Path, recorded: Path) -> Path:
    """The slide a tiling file was made from: the recorded (absolute) path, or, when the cohort folder was moved or
    copied, the slide of that name in the cohort layout's <data_dir>/wsi_raw/ beside <data_dir>/wsi_patches/."""
    if recorded.is_file():
        return recorded
    moved = h5_path.resolve().parent.parent.parent / "wsi_raw" / recorded.name
    return moved if moved.is_file() else recorded


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.data.tile", formatter_class=HelpFormatter,
                                description="Tile whole-slide images into patch coordinates.")
    p.add_argument("--input-dir", required=True, help="folder of slides (.svs, .tif, ...)")
    p.add_argument("--output-dir", required=True, help="folder for <slide_id>.h5 and qc/<slide_id>.png")
    p.add_argument("--patch-size", type=int, default=256, help="patch side in pixels (at --level or at the target)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--level", type=int, default=0, help="pyramid level to tile (when no target is given)")
    scale.add_argument("--target-magnification", type=float, default=None, metavar="X",
                       help="tile at X magnification (e.g. 20), read from the best pyramid level and resized")
    scale.add_argument("--target-mpp", type=float, default=None, metavar="MPP",
                       help="tile at MPP microns per pixel (e.g. 0.5), read from the best level and resized")
    p.add_argument("--assume-magnification", type=float, default=None, metavar="X",
                   help="level-0 magnification of slides that record neither mpp nor objective power "
                        "(mpp = 10 / X); only with --target-magnification or --target-mpp")
    p.add_argument("--tissue-threshold", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="re-tile slides that are already done")
    p.add_argument("--slides-list", default=None, metavar="FILE",
                   help="tile only the slides named in FILE (one file name, path or slide id a line; # comments)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="tile shard I of N (0-based) of the sorted slide list, for job arrays (docs/cluster.md)")
    a = p.parse_args(argv)
    if a.assume_magnification is not None and a.target_magnification is None and a.target_mpp is None:
        p.error("--assume-magnification needs --target-magnification or --target-mpp")
    try:
        check_resolution_options(a.target_magnification, a.target_mpp, a.assume_magnification)
    except ValueError as e:
        p.error(str(e))
    if not Path(a.input_dir).is_dir():
        print(f"error: --input-dir {a.input_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        shard = parse_shard(a.shard) if a.shard is not None else None
    except ValueError as e:
        p.error(str(e))
    slides = find_slides(a.input_dir)
    if not slides:
        print(f"error: no slides ({', '.join(SLIDE_SUFFIXES)}) in {a.input_dir}", file=sys.stderr)
        return 2
    try:
        slides = select_slides(slides, a.slides_list, shard, where=a.input_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = tile_slides(slides, a.output_dir, a.patch_size, a.level, a.tissue_threshold, a.overwrite, a.workers,
                          target_magnification=a.target_magnification, target_mpp=a.target_mpp,
                          assume_magnification=a.assume_magnification,
                          shared_output=a.shard is not None or a.slides_list is not None)
    print(summary.report())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
