"""Feature cache for frozen patch encoders: DIR/features/<encoder_key>/<slide_id>.h5.

A slide's features are computed once per (encoder weights hash, backbone, input_size, tiling configuration,
tiling file hash, slide file) and reused across epochs and zoo entries. Every input is recorded as an attribute
of the cached file and compared on use: a stale file (anything changed) is recomputed, never served. Each slide
is written to a temp file and moved into place, so a killed run loses at most the slide in progress.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import h5py
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.atomic import atomic_path, remove_orphaned_temps
from zoo.data.patches import iter_patch_batches
from zoo.data.tile import load_coords, patch_read_size
from zoo.hashing import sha256_file
from zoo.training import distributed as ddp

FEATURE_CACHE_VERSION = 1
FEATURES_DIRNAME = "features"


def weights_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state_dict (names, dtypes, shapes and values), independent of device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class EncoderIdentity:
    """What determines a patch encoder's output for the patches of one tiling configuration."""

    backbone: str
    input_size: int
    weights_sha256: str
    tiling: str  # tiling configuration directory name, e.g. ps128_l0_t0.5 (patch size, level, tissue threshold)

    @property
    def key(self) -> str:
        return f"{self.backbone}-in{self.input_size}-{self.tiling}-{self.weights_sha256[:16]}"

    def attrs(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "input_size": self.input_size, "weights_sha256": self.weights_sha256,
                "tiling": self.tiling, "encoder_key": self.key}


def encoder_identity(patch_encoder: nn.Module, tiling_dir: str | os.PathLike) -> EncoderIdentity:
    return EncoderIdentity(
        backbone=str(getattr(patch_encoder, "backbone_name", type(patch_encoder).__name__)),
        input_size=int(getattr(patch_encoder, "input_size", 0)),
        weights_sha256=weights_hash(patch_encoder),
        tiling=Path(tiling_dir).name,
    )


def feature_dir(data_dir: str | os.PathLike, identity: EncoderIdentity) -> Path:
    return Path(data_dir) / FEATURES_DIRNAME / identity.key


def expected_attrs(identity: EncoderIdentity, tiling_path: Path) -> dict[str, Any]:
    """Every input the cached features depend on, as HDF5 attributes."""
    _, tiling_attrs = load_coords(tiling_path)
    slide_path = str(tiling_attrs["slide_path"])
    st = os.stat(slide_path)
    read_size = patch_read_size(tiling_attrs)  # recorded for tilings that resize (a magnification between levels)
    return {**identity.attrs(), "tiling_sha256": sha256_file(tiling_path), "slide_path": slide_path,
            "slide_size": int(st.st_size), "slide_mtime_ns": int(st.st_mtime_ns),
            "patch_size": int(tiling_attrs["patch_size"]), "level": int(tiling_attrs["level"]),
            **({"read_size": read_size} if read_size is not None else {}),
            "version": FEATURE_CACHE_VERSION}


def cache_is_valid(path: Path, expected: dict[str, Any]) -> bool:
    """True when `path` holds complete features computed from exactly the `expected` inputs."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as fh:
            if "features" not in fh:
                return False
            stored = {k: _as_py(fh.attrs.get(k)) for k in expected}
            complete = fh["features"].shape[0] == int(fh.attrs.get("num_patches", -1))
    except (OSError, KeyError):
        return False
    return complete and all(stored[k] == _as_py(v) for k, v in expected.items())


def _as_py(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


# (slide_path, coords [N,2], patch_size, level) -> iterable of (coords chunk, uint8 patches [b,3,H,W]); called with
# read_size=<px read at level, resized to patch_size> as a keyword too when the tiling resizes (a magnification).
PatchReader = Callable[..., Iterable[tuple[np.ndarray, np.ndarray]]]


def default_reader(slide_path: str, coords: np.ndarray, patch_size: int, level: int, read_size: int | None = None):
    return iter_patch_batches(slide_path, coords, patch_size, level, batch_size=64, read_size=read_size)


def patch_bar(enabled: bool) -> tqdm:
    """A second bar under a per-slide one, counting patches: one large slide is minutes of work, and patches per
    second is the encoder's real throughput."""
    return tqdm(desc="patches", unit="patch", unit_scale=True, position=1, leave=False, disable=not enabled,
                dynamic_ncols=True)


@torch.no_grad()
def encode_batch(encoder: nn.Module, patches: np.ndarray, device: torch.device) -> np.ndarray:
    """float32 [b, D] features of uint8 patches [b, 3, H, W]."""
    return encoder(torch.from_numpy(np.ascontiguousarray(patches)).to(device)).float().cpu().numpy()


def concat_features(chunks: list[np.ndarray], out_dim: int) -> np.ndarray:
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros((0, out_dim), np.float32)


def encode_batches(encoder: nn.Module, batches: Iterable[tuple[np.ndarray, np.ndarray]], device: torch.device,
                   on_patches: Callable[[int], Any] | None = None) -> np.ndarray:
    """float32 [N, D] features of (coords, uint8 patches) batches, in order; `on_patches(b)` after each batch."""
    chunks = []
    for _, patches in batches:
        chunks.append(encode_batch(encoder, patches, device))
        if on_patches is not None:
            on_patches(len(patches))
    return concat_features(chunks, int(getattr(encoder, "out_dim", 0)))


def encode_slide(patch_encoder: nn.Module, coords: np.ndarray, tiling_attrs: dict[str, Any],
                 device: torch.device, reader: PatchReader = default_reader,
                 on_patches: Callable[[int], Any] | None = None) -> np.ndarray:
    """float32 [N, D] features of the slide's patches at `coords`, read as its tiling says."""
    read_size = patch_read_size(tiling_attrs)
    resize = {"read_size": read_size} if read_size is not None else {}
    batches = reader(str(tiling_attrs["slide_path"]), coords, int(tiling_attrs["patch_size"]),
                     int(tiling_attrs["level"]), **resize)
    return encode_batches(patch_encoder, batches, device, on_patches)


def write_features(path: Path, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("features", data=features.astype(np.float32))
            fh.create_dataset("coords", data=coords)
            for k, v in {**attrs, "num_patches": int(len(coords)), "feature_dim": int(features.shape[1])}.items():
                fh.attrs[k] = v


@dataclass
class CacheReport:
    directory: Path
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def ensure_features(
    data_dir: str | os.PathLike,
    patch_encoder: nn.Module,
    *,
    tiling_dir: str | os.PathLike,
    slide_ids: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    reader: PatchReader = default_reader,
    progress: bool = True,
) -> CacheReport:
    """Make DIR/features/<key>/<slide>.h5 current for every slide tiled in `tiling_dir` (or `slide_ids`).

    Under DDP, ranks share the slides and meet when reports are merged. A slide that fails is reported with
    its error and the others are still cached; a ValueError naming the failed slides is raised at the end.
    """
    data_dir, tiling_dir = Path(data_dir), Path(tiling_dir)
    if slide_ids is None:
        # Dot-names are other writers' temp files (pathlib's glob matches them), never tilings.
        slide_ids = sorted(p.stem for p in tiling_dir.glob("*.h5") if not p.name.startswith("."))
    if not slide_ids:
        raise FileNotFoundError(f"no tiled slides in {tiling_dir}; tile the cohort first (python -m zoo.data.tile)")
    device = torch.device(device)
    was_training = patch_encoder.training
    patch_encoder.eval().to(device)
    identity = encoder_identity(patch_encoder, tiling_dir)
    report = CacheReport(feature_dir(data_dir, identity))
    remove_orphaned_temps(report.directory)  # temp files of a killed earlier run
    mine = list(slide_ids)[ddp.rank()::ddp.world_size()]
    shown = progress and ddp.is_main_process()
    bar = tqdm(mine, desc=f"feature cache {identity.key}", unit="slide", disable=not shown, dynamic_ncols=True)
    with patch_bar(shown) as patches_bar:
        for slide_id in bar:
            target = report.directory / f"{slide_id}.h5"
            try:
                tiling_path = tiling_dir / f"{slide_id}.h5"
                if not tiling_path.is_file():
                    raise FileNotFoundError(f"tiling {tiling_path} is missing; tile the cohort first")
                expected = expected_attrs(identity, tiling_path)
                if cache_is_valid(target, expected):
                    report.reused.append(slide_id)
                    continue
                coords, tiling_attrs = load_coords(tiling_path)
                features = encode_slide(patch_encoder, coords, tiling_attrs, device, reader, patches_bar.update)
                write_features(target, features, coords, {**expected, "slide_id": slide_id})
                report.computed.append(slide_id)
            except Exception as exc:  # one bad slide must not lose the others' work
                report.failed[slide_id] = f"{type(exc).__name__}: {exc}"
    patch_encoder.train(was_training)
    merged = _merge_reports(report)
    if merged.failed:
        details = "; ".join(f"{k}: {v}" for k, v in sorted(merged.failed.items()))
        raise ValueError(f"feature caching failed for {len(merged.failed)} slide(s) (the others were cached in "
                         f"{merged.directory}): {details}")
    return merged


def _merge_reports(report: CacheReport) -> CacheReport:
    parts = ddp.gather_objects((report.computed, report.reused, report.failed))
    merged = CacheReport(report.directory)
    for computed, reused, failed in parts:
        merged.computed += computed
        merged.reused += reused
        merged.failed.update(failed)
    return merged


def feature_statistics(paths: Iterable[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-dimension (mean, std, number of patches) over every patch of the cached slides in `paths`."""
    total, total_sq, n = None, None, 0
    for path in paths:
        if Path(path).suffix == ".pt":  # CLAM's pt_files (stored features)
            from zoo.data.feature_files import read_feature_file

            features = read_feature_file(path).features.astype(np.float64)
        else:
            with h5py.File(path, "r") as fh:
                features = np.asarray(fh["features"], dtype=np.float64)
        if features.size == 0:
            continue
        total = features.sum(0) if total is None else total + features.sum(0)
        total_sq = (features**2).sum(0) if total_sq is None else total_sq + (features**2).sum(0)
        n += len(features)
    if n == 0:
        raise ValueError("no cached patch features to fit the standardisation on (no slide of the training split "
                         "has a tissue patch)")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32), n


def load_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(features [N,D] float32, coords [N,2] int64) of one cached slide."""
    with h5py.File(path, "r") as fh:
        return np.asarray(fh["features"], dtype=np.float32), np.asarray(fh["coords"], dtype=np.int64)
