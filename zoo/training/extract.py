"""Patch features in TRIDENT's layout from any coords (zoo.data.tile, TRIDENT, CLAM): ``python -m zoo.features``.

    python -m zoo.features extract --encoder NAME [--weights FILE|random] --slides DIR --coords DIR --output DIR
        [--batch-size 64] [--device cpu] [--input-size 224]

writes ``DIR/features_<NAME>/<slide>.h5``: ``features`` float32 [N,D] (attrs name, savetodir, encoder, and the
weights and coords hashes that make a re-run skip finished slides) and ``coords`` int64 [N,2] with the coords
file's attrs copied, the file TRIDENT's ``extract_patch_features`` writes. Each slide is written to a temp file
and moved into place; one bad slide is reported and the others are done; the exit code is 1 if any failed.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.atomic import remove_orphaned_temps
from zoo.cli_help import HelpFormatter
from zoo.data.feature_files import (
    TRIDENT_PREFIX,
    FeatureFileError,
    find_coords_files,
    read_coords_file,
    write_trident_features,
)
from zoo.data.patches import iter_patch_batches
from zoo.data.tile import SLIDE_SUFFIXES
from zoo.training.feature_cache import sha256_file, weights_hash


@dataclass
class ExtractReport:
    directory: Path
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"features in {self.directory}: {len(self.computed)} extracted, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed"]
        lines += [f"  FAILED {k}: {v}" for k, v in sorted(self.failed.items())]
        return "\n".join(lines)


def build_encoder(name: str, weights: str | None = None, input_size: int = 224) -> nn.Module:
    """A frozen zoo patch encoder by backbone name; `weights` a state_dict file, or None/"random" (random init)."""
    from zoo.models.patch_encoders import PatchEncoder

    source: Any = False if weights in (None, "", "random") else str(weights)
    params = inspect.signature(PatchEncoder).parameters
    if "weights" in params:  # the foundation-model registry's signature
        return PatchEncoder(backbone=name, weights=source or "random", freeze=True, input_size=input_size)
    return PatchEncoder(name, 3, source, True, input_size)


def _read_geometry(attrs: dict[str, Any]) -> tuple[int, int, int | None]:
    """(patch_size, level, read_size): ours/CLAM read `patch_size` at `level`; TRIDENT's coords (magnification
    tiling, no level) read `patch_size_level0` level-0 pixels resized to `patch_size`, as TRIDENT does."""
    size = int(attrs["patch_size"])
    if "level" in attrs and "read_size" not in attrs:
        return size, int(attrs["level"]), None
    if "level" in attrs:
        return size, int(attrs["level"]), int(attrs["read_size"])
    if "patch_size_level0" not in attrs:
        raise FeatureFileError("coords attrs give neither a level nor patch_size_level0")
    return size, 0, int(attrs["patch_size_level0"])


@torch.no_grad()
def encode_coords(encoder: nn.Module, slide_path: Path, coords: np.ndarray, attrs: dict[str, Any],
                  batch_size: int, device: torch.device) -> np.ndarray:
    size, level, read_size = _read_geometry(attrs)
    kwargs: dict[str, Any] = {}
    if read_size is not None and read_size != size:
        if "read_size" not in inspect.signature(iter_patch_batches).parameters:
            raise FeatureFileError(f"these coords need {read_size} level-0 px resized to {size}; this zoo.data "
                                   "cannot resize patches while reading")
        kwargs["read_size"] = read_size
    chunks = [encoder(torch.from_numpy(np.ascontiguousarray(p)).to(device)).float().cpu().numpy()
              for _, p in iter_patch_batches(str(slide_path), coords, size, level, batch_size=batch_size, **kwargs)]
    out_dim = int(getattr(encoder, "out_dim", 0))
    return np.concatenate(chunks) if chunks else np.zeros((0, out_dim), np.float32)


def _finished(target: Path, encoder_name: str, weights_sha: str, coords_sha: str, rows: int) -> bool:
    if not target.is_file():
        return False
    try:
        with h5py.File(target, "r") as fh:
            a = fh["features"].attrs
            return (fh["features"].shape[0] == rows and fh["coords"].shape[0] == rows
                    and str(a.get("encoder")) == encoder_name and str(a.get("weights_sha256")) == weights_sha
                    and str(a.get("coords_sha256")) == coords_sha)
    except (OSError, KeyError):
        return False


def extract_features(encoder: nn.Module, encoder_name: str, slides_dir: str | Path, coords_dir: str | Path,
                     output_dir: str | Path, *, batch_size: int = 64, device: str | torch.device = "cpu",
                     progress: bool = True) -> ExtractReport:
    """Features of every slide with a coords file in `coords_dir` into `output_dir/features_<encoder_name>/`."""
    slides_dir, coords_dir = Path(slides_dir), Path(coords_dir)
    directory = Path(output_dir) / f"{TRIDENT_PREFIX}{encoder_name}"
    report = ExtractReport(directory)
    coords_files = find_coords_files(coords_dir)
    if not coords_files:
        raise FileNotFoundError(f"no coords files (<slide>.h5 or <slide>_patches.h5) in {coords_dir} or "
                                f"{coords_dir / 'patches'}; tile first (python -m zoo.data.tile, TRIDENT or CLAM)")
    slides = {p.stem: p for p in sorted(slides_dir.iterdir())
              if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES} if slides_dir.is_dir() else {}
    if not slides:
        raise FileNotFoundError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in {slides_dir}")
    directory.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(directory)
    device = torch.device(device)
    encoder = encoder.eval().to(device)
    weights_sha = weights_hash(encoder)
    for slide_id, coords_path in tqdm(sorted(coords_files.items()), desc=f"features {encoder_name}", unit="slide",
                                      disable=not progress, dynamic_ncols=True):
        target = directory / f"{slide_id}.h5"
        try:
            if slide_id not in slides:
                raise FileNotFoundError(f"no slide file {slide_id}.* in {slides_dir} for {coords_path}")
            coords, attrs = read_coords_file(coords_path)
            coords_sha = sha256_file(coords_path)
            if _finished(target, encoder_name, weights_sha, coords_sha, len(coords)):
                report.skipped.append(slide_id)
                continue
            features = encode_coords(encoder, slides[slide_id], coords, attrs, batch_size, device)
            copied = {k: v for k, v in attrs.items() if k not in ("columns",)}
            write_trident_features(target, features, coords, copied, encoder=encoder_name,
                                   extra_attrs={"weights_sha256": weights_sha, "coords_sha256": coords_sha,
                                                "coords_path": str(Path(coords_path).resolve()),
                                                "slide_path": str(slides[slide_id].resolve())})
            report.computed.append(slide_id)
        except Exception as exc:  # noqa: BLE001 - one bad slide must not lose the others' work
            report.failed[slide_id] = f"{type(exc).__name__}: {exc}"
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.features", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract", formatter_class=HelpFormatter,
                       help="patch features of every tiled slide, TRIDENT layout")
    p.add_argument("--encoder", required=True, help="patch encoder (backbone) name, e.g. resnet18; also the "
                   "features_<encoder>/ folder name")
    p.add_argument("--weights", default=None, help="state_dict file of the encoder (default: random weights)")
    p.add_argument("--slides", required=True, help="folder of slides (.svs, .tif, ...)")
    p.add_argument("--coords", required=True, help="coords folder: zoo.data.tile's, TRIDENT's (<name>_patches.h5 "
                   "under patches/) or CLAM's (patches/<slide>.h5)")
    p.add_argument("--output", required=True, help="writes OUTPUT/features_<encoder>/<slide>.h5")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--input-size", type=int, default=224, help="patches are resized to this inside the encoder")
    a = parser.parse_args(argv)
    try:
        encoder = build_encoder(a.encoder, a.weights, a.input_size)
        if a.weights in (None, "", "random"):
            print(f"warning: --weights not given: {a.encoder} has RANDOM weights", file=sys.stderr)
        report = extract_features(encoder, a.encoder, a.slides, a.coords, a.output, batch_size=a.batch_size,
                                  device=a.device)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
