"""Patch-feature and patch-coordinate files of the tools users already have: TRIDENT, CLAM, and ours.

Layouts (docs/ARCHITECTURE.md, "Bring your own features"):
- TRIDENT features: ``<root>/features_<encoder>/<slide>.h5``: dataset ``features`` [N,D] (attrs ``name``,
  ``savetodir``, ``encoder`` in recent versions) and ``coords`` [N,2] level-0 (x, y) whose attrs are the coords
  file's (``patch_size``, ``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``,
  ``name``, ``savetodir``, ``level0_width``, ``level0_height``). An empty slide is (0, D).
- TRIDENT coords: ``<name>_patches.h5``, dataset ``coords`` with those attrs.
- CLAM features: ``<root>/h5_files/<slide>.h5`` (``features`` float32, ``coords`` int32, no attrs) and
  ``<root>/pt_files/<slide>.pt`` (a float tensor [N,D], read with ``torch.load(weights_only=True)`` only).
- CLAM coords: ``patches/<slide>.h5``, dataset ``coords`` with attrs ``patch_size``, ``patch_level``,
  ``downsample``, ``downsampled_level_dim``, ``level_dim``, ``name``, ``save_path``.
- Ours: ``zoo.data.tile`` coords carry TRIDENT's attribute names as well as ours (root attrs and ``coords``
  attrs); ``python -m zoo.features extract`` writes the TRIDENT features layout.

Only the ``.pt`` reader imports torch (lazily). Attributes are read from the ``coords`` dataset first, then the
file root (our tilings), so every layout reads through one function.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

TRIDENT_PREFIX = "features_"
CLAM_H5, CLAM_PT = "h5_files", "pt_files"
TRIDENT_COORDS_SUFFIX = "_patches"
FEATURE_SUFFIXES = (".h5", ".pt")
_ENCODER_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class FeatureFileError(ValueError):
    """A feature or coords file that cannot be used; the message names the file (and slide) and the fix."""


# ------------------------------------------------------------------------------------------------ attributes
def _py(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _missing(value: Any) -> bool:
    return value is None or value == "None" or (isinstance(value, float) and math.isnan(value))


def level0_magnification(mpp: float | None, objective_power: Any = None) -> float | None:
    """TRIDENT's rule: the objective magnification a level-0 mpp stands for (< 0.16 -> 80, < 0.2 -> 60, < 0.3 -> 40,
    < 0.6 -> 20, < 1.2 -> 10, < 2.4 -> 5); without an mpp the slide's objective power; None when neither is known."""
    if mpp is not None and not (isinstance(mpp, float) and math.isnan(mpp)) and mpp > 0:
        for limit, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
            if mpp < limit:
                return mag
        return None
    try:
        power = float(objective_power)
    except (TypeError, ValueError):
        return None
    return int(power) if power.is_integer() else power if power > 0 else None


def trident_coords_attrs(*, patch_size: int, patch_size_level0: int, downsample: float, mpp: float | None,
                         objective_power: Any, name: str, savetodir: str, width: int, height: int,
                         overlap: int = 0) -> dict[str, Any]:
    """TRIDENT's coords attributes for a tiling at a pyramid level of `downsample` (ours tiles by level).

    Unknown magnifications are NaN (no mpp and no objective power): readers then fall back to
    ``patch_size_level0``, which is always exact here."""
    mag0 = level0_magnification(mpp, objective_power)
    if mag0 is None:
        target: float = math.nan
        mag0_out: float = math.nan
    else:
        target = mag0 / float(downsample)
        target = int(target) if float(target).is_integer() else float(target)
        mag0_out = mag0
    return {"patch_size": int(patch_size), "patch_size_level0": int(patch_size_level0),
            "level0_magnification": mag0_out, "target_magnification": target, "overlap": int(overlap),
            "name": str(name), "savetodir": str(savetodir), "level0_width": int(width), "level0_height": int(height)}


def normalise_coords_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attrs of any layout with ``patch_size_level0`` filled in: as stored; else TRIDENT's
    ``patch_size * level0_magnification // target_magnification``; else CLAM's legacy
    ``patch_size * downsample[patch_level] * custom_downsample`` (``downsample`` is the level's (x, y) factor).
    ``patch_size_level0`` stays absent when nothing determines it."""
    out = {k: _py(v) for k, v in attrs.items()}
    if not _missing(out.get("patch_size_level0")):
        out["patch_size_level0"] = int(out["patch_size_level0"])
        return out
    size = out.get("patch_size")
    if _missing(size):
        return out
    mag0, target = out.get("level0_magnification"), out.get("target_magnification")
    if not _missing(mag0) and not _missing(target) and float(target) > 0:
        out["patch_size_level0"] = int(int(size) * float(mag0) // float(target))
        return out
    downsample = out.get("downsample")
    if downsample is not None:
        factor = float(np.ravel(downsample)[0]) if np.size(downsample) else 1.0
        custom = out.get("custom_downsample", 1)
        out["patch_size_level0"] = int(round(int(size) * factor * float(custom or 1)))
        out.setdefault("level", int(out.get("patch_level", 0) or 0))
    elif "patch_level" in out and int(out["patch_level"]) == 0:
        out["patch_size_level0"] = int(size) * int(out.get("custom_downsample", 1) or 1)
        out.setdefault("level", 0)
    return out


def _merged_attrs(fh: h5py.File) -> dict[str, Any]:
    attrs = {k: _py(v) for k, v in fh.attrs.items()}
    if "coords" in fh:
        attrs.update({k: _py(v) for k, v in fh["coords"].attrs.items()})
    return attrs


# ---------------------------------------------------------------------------------------------------- coords
def coords_slide_id(path: str | os.PathLike) -> str:
    """``<name>_patches.h5`` (TRIDENT) or ``<slide>.h5`` (CLAM, ours) -> slide id."""
    stem = Path(path).stem
    return stem[: -len(TRIDENT_COORDS_SUFFIX)] if stem.endswith(TRIDENT_COORDS_SUFFIX) else stem


def read_coords_file(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """(coords int64 [N,2] level-0 (x, y), normalised attrs) of a TRIDENT, CLAM or zoo coords file."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            if "coords" not in fh:
                raise FeatureFileError(f"{path}: no 'coords' dataset (not a TRIDENT/CLAM/zoo coords file)")
            coords = np.asarray(fh["coords"][()], np.int64)
            attrs = _merged_attrs(fh)
    except OSError as exc:
        raise FeatureFileError(f"{path}: unreadable HDF5 coords file ({exc})") from exc
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise FeatureFileError(f"{path}: coords must be [N, 2] (x, y), got shape {list(coords.shape)}")
    return coords, normalise_coords_attrs(attrs)


def find_coords_files(directory: str | os.PathLike) -> dict[str, Path]:
    """slide id -> coords file in `directory` (or its ``patches/`` sub-folder, TRIDENT's and CLAM's)."""
    directory = Path(directory)
    found: dict[str, Path] = {}
    for folder in (directory / "patches", directory):
        if folder.is_dir():
            for p in sorted(folder.glob("*.h5")):
                if not p.name.startswith("."):
                    found.setdefault(coords_slide_id(p), p)
    return found


# -------------------------------------------------------------------------------------------------- features
@dataclass
class SlideFeatures:
    slide_id: str
    features: np.ndarray          # float32 [N, D]
    coords: np.ndarray | None     # int64 [N, 2] level-0 (x, y); None for CLAM's .pt files
    coords_attrs: dict[str, Any]  # normalised (patch_size_level0 filled in where known)
    features_attrs: dict[str, Any]
    path: Path


def _load_pt(path: Path) -> np.ndarray:
    import torch  # the only torch use of this module

    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickle with objects, a truncated file
        raise FeatureFileError(f"{path}: not a plain tensor file readable with torch.load(weights_only=True) "
                               f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(tensor, torch.Tensor):
        raise FeatureFileError(f"{path}: holds a {type(tensor).__name__}, expected a [N, D] tensor (CLAM pt_files)")
    return tensor.detach().float().numpy()


def _check_matrix(features: np.ndarray, path: Path) -> np.ndarray:
    if features.ndim == 1 and features.size == 0:
        features = features.reshape(0, 0)
    if features.ndim != 2:
        raise FeatureFileError(f"{path}: features must be [N, D], got shape {list(features.shape)}")
    return features


def feature_file_shape(path: str | os.PathLike) -> tuple[int, int, int | None]:
    """(rows, dim, coords rows or None) without reading the data (a .pt file is read whole)."""
    path = Path(path)
    if path.suffix == ".pt":
        n, d = _check_matrix(_load_pt(path), path).shape
        return n, d, None
    try:
        with h5py.File(path, "r") as fh:
            if "features" not in fh:
                raise FeatureFileError(f"{path}: no 'features' dataset (TRIDENT/CLAM feature files have one)")
            shape = tuple(fh["features"].shape)
            coords_rows = int(fh["coords"].shape[0]) if "coords" in fh else None
    except OSError as exc:
        raise FeatureFileError(f"{path}: unreadable HDF5 feature file ({exc})") from exc
    if len(shape) != 2:
        raise FeatureFileError(f"{path}: features must be [N, D], got shape {list(shape)}")
    return int(shape[0]), int(shape[1]), coords_rows


def read_feature_file(path: str | os.PathLike, rows: np.ndarray | None = None) -> SlideFeatures:
    """One slide's features (only `rows`, increasing, when given), coords and attributes, any layout."""
    path = Path(path)
    slide_id = path.stem
    if path.suffix == ".pt":
        features = _check_matrix(_load_pt(path), path)
        return SlideFeatures(slide_id, features if rows is None else features[rows], None, {}, {}, path)
    try:
        with h5py.File(path, "r") as fh:
            if "features" not in fh:
                raise FeatureFileError(f"{path}: no 'features' dataset (TRIDENT/CLAM feature files have one)")
            dset = fh["features"]
            features = np.asarray(dset[()] if rows is None else dset[np.asarray(rows)], np.float32)
            features_attrs = {k: _py(v) for k, v in dset.attrs.items()}
            coords = None
            if "coords" in fh:
                coords = np.asarray(fh["coords"][()], np.int64).reshape(-1, 2)
                if rows is not None:
                    coords = coords[np.asarray(rows)]
            coords_attrs = normalise_coords_attrs(_merged_attrs(fh))
    except OSError as exc:
        raise FeatureFileError(f"{path}: unreadable HDF5 feature file ({exc})") from exc
    features = _check_matrix(features, path)
    return SlideFeatures(slide_id, features, coords, coords_attrs, features_attrs, path)


def feature_file_encoder(path: str | os.PathLike) -> str | None:
    """The encoder name recorded in a feature file (``features`` attr ``encoder``, or our cache's ``backbone``)."""
    path = Path(path)
    if path.suffix != ".h5":
        return None
    try:
        with h5py.File(path, "r") as fh:
            if "features" not in fh:
                return None
            value = fh["features"].attrs.get("encoder", fh.attrs.get("encoder", fh.attrs.get("backbone")))
    except OSError:
        return None
    return None if _missing(_py(value)) else str(_py(value))


# ---------------------------------------------------------------------------------------------------- folders
@dataclass
class FeatureFolder:
    """Where one encoder's per-slide feature files are: ``layout`` trident | clam | flat."""

    root: Path
    layout: str
    directory: Path                   # the folder of <slide>.h5 (TRIDENT, flat) or CLAM's h5_files/
    encoder: str | None
    pt_directory: Path | None = None  # CLAM's pt_files/ (used for slides without an .h5)
    files: dict[str, Path] = field(default_factory=dict)

    def path_for(self, slide_id: str) -> Path | None:
        return self.files.get(slide_id)


def _files_in(directory: Path | None, suffix: str) -> dict[str, Path]:
    if directory is None or not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob(f"*{suffix}")) if not p.name.startswith(".")}


def detect_feature_folder(root: str | os.PathLike, encoder: str | None = None) -> FeatureFolder:
    """Recognise a feature folder from its layout.

    ``root`` may be TRIDENT's job folder (holding ``features_<enc>/``; `encoder` picks one when there are
    several), a ``features_<enc>/`` folder itself, CLAM's feature folder (``h5_files/`` and/or ``pt_files/``),
    or any folder of ``<slide>.h5`` feature files (our cache, a TRIDENT folder renamed)."""
    root = Path(root)
    if not root.is_dir():
        raise FeatureFileError(f"features_dir {root} is not a directory; point it at TRIDENT's job folder (with "
                               "features_<encoder>/), a features_<encoder>/ folder, or CLAM's feature folder "
                               "(h5_files/, pt_files/)")
    if encoder is not None and not _ENCODER_NAME.match(str(encoder)):
        raise FeatureFileError(f"features_encoder {encoder!r} is not a plain name ([A-Za-z0-9_.+-])")
    if (root / CLAM_H5).is_dir() or (root / CLAM_PT).is_dir():
        h5_dir, pt_dir = root / CLAM_H5, root / CLAM_PT
        files = {**_files_in(pt_dir, ".pt"), **_files_in(h5_dir, ".h5")}  # .h5 wins: it has the coords
        folder = FeatureFolder(root, "clam", h5_dir if h5_dir.is_dir() else pt_dir, encoder,
                               pt_dir if pt_dir.is_dir() else None, files)
    else:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(TRIDENT_PREFIX))
        if root.name.startswith(TRIDENT_PREFIX) and not subdirs:
            name = root.name[len(TRIDENT_PREFIX):]
            if encoder is not None and encoder != name:
                raise FeatureFileError(f"{root}: features of encoder {name!r}, but features_encoder is {encoder!r}")
            folder = FeatureFolder(root, "trident", root, name, None, _files_in(root, ".h5"))
        elif subdirs:
            names = [p.name[len(TRIDENT_PREFIX):] for p in subdirs]
            if encoder is None:
                if len(names) > 1:
                    raise FeatureFileError(f"{root} holds features of several encoders ({', '.join(names)}); set "
                                           "data.modalities.pathology.features_encoder to one of them")
                encoder = names[0]
            if encoder not in names:
                raise FeatureFileError(f"{root} has no {TRIDENT_PREFIX}{encoder}/ (encoders there: "
                                       f"{', '.join(names)})")
            directory = root / f"{TRIDENT_PREFIX}{encoder}"
            folder = FeatureFolder(root, "trident", directory, encoder, None, _files_in(directory, ".h5"))
        else:
            folder = FeatureFolder(root, "flat", root, encoder, None, _files_in(root, ".h5"))
    if not folder.files:
        suffixes = "<slide>.h5" + (" or .pt" if folder.layout == "clam" else "")
        raise FeatureFileError(f"{folder.directory}: no feature files ({suffixes})")
    if folder.encoder is None:
        recorded = {feature_file_encoder(p) for p in list(folder.files.values())[:20]} - {None}
        if len(recorded) == 1:
            folder.encoder = recorded.pop()
    return folder


@dataclass
class ScanReport:
    """Per-slide checks of a feature folder: usable slides (rows), the common dim, and each bad slide's reason."""

    dim: int | None
    rows: dict[str, int] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def scan_feature_files(folder: FeatureFolder, slide_ids: Iterable[str] | None = None,
                       expected_dim: int | None = None) -> ScanReport:
    """Check every file's shape: readable, coords rows == feature rows, and one dim for all (`expected_dim`, else
    the most common one). Bad slides are reported, never raised: the others can still be used."""
    ids = sorted(folder.files) if slide_ids is None else [s for s in slide_ids if s in folder.files]
    shapes: dict[str, tuple[int, int]] = {}
    problems: dict[str, str] = {}
    for slide_id in ids:
        path = folder.files[slide_id]
        try:
            n, d, coords_rows = feature_file_shape(path)
        except FeatureFileError as exc:
            problems[slide_id] = str(exc)
            continue
        if coords_rows is not None and coords_rows != n:
            problems[slide_id] = (f"{path}: {n} feature rows but {coords_rows} coords; the file is inconsistent, "
                                  "re-extract this slide")
            continue
        shapes[slide_id] = (n, d)
    dims = Counter(d for n, d in shapes.values() if n > 0) or Counter(d for _, d in shapes.values())
    dim = int(expected_dim) if expected_dim else (dims.most_common(1)[0][0] if dims else None)
    report = ScanReport(dim, problems=problems)
    for slide_id, (n, d) in shapes.items():
        if n > 0 and d != dim:
            why = "the model's input dim" if expected_dim else f"the other files' {dim}"
            report.problems[slide_id] = (f"{folder.files[slide_id]}: feature dim {d} differs from {why}; "
                                         "were these features made by another encoder?")
        else:
            report.rows[slide_id] = n
    return report


def write_trident_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray,
                           coords_attrs: Mapping[str, Any], *, encoder: str,
                           extra_attrs: Mapping[str, Any] | None = None) -> Path:
    """Write one slide in TRIDENT's features layout, atomically: ``features`` float32 [N,D] (attrs name,
    savetodir, encoder, + `extra_attrs`) and ``coords`` int64 [N,2] with the coords file's attrs copied."""
    from zoo.atomic import atomic_path

    path = Path(path)
    features = np.asarray(features, np.float32)
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if len(features) != len(coords):
        raise FeatureFileError(f"{path}: {len(features)} feature rows for {len(coords)} coords")
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as fh:
            feats = fh.create_dataset("features", data=features)
            feats.attrs.update({"name": path.stem, "savetodir": str(path.parent.resolve()), "encoder": str(encoder),
                                **{k: v for k, v in (extra_attrs or {}).items() if v is not None}})
            dset = fh.create_dataset("coords", data=coords)
            dset.attrs.update({k: v for k, v in coords_attrs.items() if v is not None and not isinstance(v, dict)})
    return path
