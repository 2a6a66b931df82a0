"""Patch features in TRIDENT's layout from any coords (zoo.data.tile, TRIDENT, CLAM): ``python -m zoo.features``.

    python -m zoo.features extract --encoder NAME [--weights FILE|random] --slides DIR --coords DIR --output DIR
        [--batch-size 64] [--device cpu] [--input-size 224] [--tile [--patch-size 256 ...]]
        [--slides-list FILE] [--shard I/N] [--lock-timeout 7200] [--ray [ADDRESS] [--workers N]]

writes ``DIR/features_<NAME>/<slide>.h5``: ``features`` float32 [N,D] (attrs name, savetodir, encoder, and the
weights and coords hashes that make a re-run skip finished slides) and ``coords`` int64 [N,2] with the coords
file's attrs copied, the file TRIDENT's ``extract_patch_features`` writes. Each slide is written to a temp file
and moved into place; one bad slide is reported and the others are done; the exit code is 1 if any failed.

One slide is one unit of work (`run_slide`: tile -> read patches -> encode -> write), idempotent and atomic, under
a lock ``OUTPUT/features_<NAME>/.locks/<slide>.lock`` (zoo.locks), so any number of processes, shards
(``--shard I/N``) or hosts on a shared filesystem can run over the same slides: each slide is done once, a slide
locked by a live owner is left to it, a dead owner's lock is reclaimed (logged). ``--ray`` runs the same unit as a
Ray Data pipeline (zoo.training.ray_extract); the files are the same whichever way they were made.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
from zoo.data.shards import parse_shard, read_slides_list, select_listed, shard_items
from zoo.data.tile import SLIDE_SUFFIXES, check_resolution_options, tile_slide
from zoo.hashing import sha256_file
from zoo.locks import (
    DEFAULT_LOCK_TIMEOUT_S,
    Heartbeat,
    heartbeat_interval,
    lock_path,
    owner_record,
    remove_empty_locks_dir,
    try_lock,
)
from zoo.training.feature_cache import encode_batches, patch_bar, weights_hash

log = logging.getLogger(__name__)


@dataclass
class ExtractReport:
    directory: Path
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)        # locked by another live process or host
    reclaimed: list[str] = field(default_factory=list)   # log lines of stale locks taken over

    def add(self, slide_id: str, status: str, message: str = "") -> None:
        if status == "extracted":
            self.computed.append(slide_id)
        elif status == "skipped":
            self.skipped.append(slide_id)
        elif status == "busy":
            self.busy.append(slide_id)
        else:
            self.failed[slide_id] = message

    def summary(self) -> str:
        lines = [f"features in {self.directory}: {len(self.computed)} extracted, {len(self.skipped)} already done, "
                 f"{len(self.busy)} being done by another process, {len(self.failed)} failed"]
        lines += [f"  {line}" for line in self.reclaimed]
        lines += [f"  FAILED {k}: {v}" for k, v in sorted(self.failed.items())]
        return "\n".join(lines)


def build_encoder(name: str, weights: str | None = None, input_size: int = 224) -> nn.Module:
    """A frozen zoo patch encoder by backbone name; `weights` a state_dict file, or None/"random" (random init,
    seeded: the same weights in every process, shard and Ray actor, so their files agree)."""
    from zoo.models.patch_encoders import PatchEncoder

    source: Any = False if weights in (None, "", "random") else str(weights)
    params = inspect.signature(PatchEncoder).parameters
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
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


def iter_slide_batches(slide_path: Path, coords: np.ndarray, attrs: dict[str, Any], batch_size: int,
                       reader_threads: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(coords, uint8 patches [b, 3, H, W]) batches of one slide, read as its coords file's geometry says."""
    size, level, read_size = _read_geometry(attrs)
    kwargs: dict[str, Any] = {}
    if read_size is not None and read_size != size:
        kwargs["read_size"] = read_size
    return iter_patch_batches(str(slide_path), coords, size, level, batch_size=batch_size, threads=reader_threads,
                              **kwargs)


def encode_coords(encoder: nn.Module, slide_path: Path, coords: np.ndarray, attrs: dict[str, Any],
                  batch_size: int, device: torch.device, reader_threads: int | None = None,
                  on_patches: Callable[[int], Any] | None = None) -> np.ndarray:
    return encode_batches(encoder, iter_slide_batches(slide_path, coords, attrs, batch_size, reader_threads), device,
                          on_patches)


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


# ------------------------------------------------------------------------------------------- the unit of work
@dataclass(frozen=True)
class SlideUnit:
    """One slide to do: its file (None when there is none) and its coords file (None: tiled by the unit)."""
    slide_id: str
    slide_path: Path | None
    coords_path: Path | None


@dataclass(frozen=True)
class ExtractSettings:
    """Everything a unit needs besides the encoder; picklable (Ray ships it to its tasks)."""
    encoder_name: str
    directory: Path                      # OUTPUT/features_<encoder_name>
    coords_dir: Path
    weights_sha: str
    batch_size: int = 64
    reader_threads: int | None = None
    tile: dict[str, Any] | None = None   # tile_slide options (patch_size, level, ...): tile slides lacking coords
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S

    def target(self, slide_id: str) -> Path:
        return self.directory / f"{slide_id}.h5"


@dataclass
class Prepared:
    """A locked slide, tiled, with its coords read: ready to encode."""
    unit: SlideUnit
    slide_path: Path
    coords_path: Path
    coords: np.ndarray
    attrs: dict[str, Any]
    coords_sha: str


def prepare_slide(unit: SlideUnit, settings: ExtractSettings, owner: dict[str, Any],
                  on_reclaim: Callable[[str], None] | None = None) -> tuple[str, Prepared | str]:
    """First half of the unit: ("skipped" | "busy" | "failed", message) or ("ready", Prepared) holding the lock.

    Checks the finished file before and after taking the lock (another process may finish the slide in between);
    under the lock, removes temp files of this slide that an earlier writer (any host) left."""
    slide_id, target = unit.slide_id, settings.target(unit.slide_id)
    if unit.slide_path is None:
        return "failed", f"FileNotFoundError: no slide file {slide_id}.* for {unit.coords_path}"
    try:
        if unit.coords_path is not None and settings.tile is None and _done(unit.coords_path, target, settings):
            return "skipped", ""
        lock = try_lock(lock_path(settings.directory, slide_id), owner, settings.lock_timeout, on_reclaim)
        if lock is None:
            return "busy", ""
    except Exception as exc:  # noqa: BLE001 - one bad slide must not lose the others' work
        return "failed", f"{type(exc).__name__}: {exc}"
    try:
        remove_orphaned_temps(settings.directory, names=[target.name], any_pid=True)  # we hold its lock
        coords_path = unit.coords_path
        if settings.tile is not None:
            result = tile_slide(unit.slide_path, settings.coords_dir, **settings.tile)
            if not result.ok:
                raise FeatureFileError(f"tiling failed: {result.message}")
            coords_path = result.h5_path
        if coords_path is None:
            raise FileNotFoundError(f"no coords file for {slide_id} in {settings.coords_dir}")
        coords, attrs = read_coords_file(coords_path)
        coords_sha = sha256_file(coords_path)
        if _finished(target, settings.encoder_name, settings.weights_sha, coords_sha, len(coords)):
            lock.release()
            return "skipped", ""
        return "ready", Prepared(unit, unit.slide_path, Path(coords_path), coords, attrs, coords_sha)
    except Exception as exc:  # noqa: BLE001
        lock.release()
        return "failed", f"{type(exc).__name__}: {exc}"


def _done(coords_path: Path, target: Path, settings: ExtractSettings) -> bool:
    if not target.is_file():
        return False
    coords, _ = read_coords_file(coords_path)
    return _finished(target, settings.encoder_name, settings.weights_sha, sha256_file(coords_path), len(coords))


def write_slide(prepared: Prepared, features: np.ndarray, settings: ExtractSettings) -> Path:
    """Last step of the unit: the TRIDENT-layout file, atomically (the caller holds the slide's lock)."""
    copied = {k: v for k, v in prepared.attrs.items() if k not in ("columns",)}
    return write_trident_features(settings.target(prepared.unit.slide_id), features, prepared.coords, copied,
                                  encoder=settings.encoder_name,
                                  extra_attrs={"weights_sha256": settings.weights_sha,
                                               "coords_sha256": prepared.coords_sha,
                                               "coords_path": str(prepared.coords_path.resolve()),
                                               "slide_path": str(prepared.slide_path.resolve())})


def run_slide(unit: SlideUnit, encoder: nn.Module, device: torch.device, settings: ExtractSettings,
              owner: dict[str, Any], heartbeat: Heartbeat | None = None,
              on_reclaim: Callable[[str], None] | None = None,
              on_patches: Callable[[int], Any] | None = None) -> tuple[str, str]:
    """The whole unit in this process: (status, message), status extracted | skipped | busy | failed."""
    status, prepared = prepare_slide(unit, settings, owner, on_reclaim)
    if status != "ready":
        return status, str(prepared)
    assert isinstance(prepared, Prepared)
    lock = lock_path(settings.directory, unit.slide_id)
    if heartbeat is not None:
        from zoo.locks import SlideLock
        heartbeat.add(unit.slide_id, SlideLock(lock, owner))
    try:
        features = encode_coords(encoder, prepared.slide_path, prepared.coords, prepared.attrs, settings.batch_size,
                                 device, settings.reader_threads, on_patches)
        write_slide(prepared, features, settings)
        return "extracted", ""
    except Exception as exc:  # noqa: BLE001 - one bad slide must not lose the others' work
        return "failed", f"{type(exc).__name__}: {exc}"
    finally:
        if heartbeat is not None:
            heartbeat.release(unit.slide_id)
        else:
            from zoo.locks import SlideLock
            SlideLock(lock, owner).release()


# --------------------------------------------------------------------------------------------- which slides
def plan_units(slides_dir: str | Path, coords_dir: str | Path, *, tile: bool = False,
               slides_list: str | os.PathLike | None = None, shard: tuple[int, int] | None = None) -> list[SlideUnit]:
    """The units of one job, sorted by slide id: every slide with a coords file (with `tile`: every slide), or
    those named in `slides_list`, then shard (I, N) of them."""
    slides_dir, coords_dir = Path(slides_dir), Path(coords_dir)
    slides = {p.stem: p for p in sorted(slides_dir.iterdir())
              if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES} if slides_dir.is_dir() else {}
    if not slides:
        raise FileNotFoundError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in {slides_dir}")
    coords_files = find_coords_files(coords_dir) if coords_dir.is_dir() else {}
    if slides_list is not None:
        listed = select_listed(slides, read_slides_list(slides_list), str(slides_dir))
        if not tile:
            missing = sorted(set(listed) - set(coords_files))
            if missing:
                raise FileNotFoundError(f"--slides-list: no coords file in {coords_dir} for {', '.join(missing[:10])}"
                                        "; tile them first or pass --tile")
        ids = list(listed)
    elif tile:
        ids = list(slides)
    else:
        ids = list(coords_files)
        if not ids:
            raise FileNotFoundError(f"no coords files (<slide>.h5 or <slide>_patches.h5) in {coords_dir} or "
                                    f"{coords_dir / 'patches'}; tile first (python -m zoo.data.tile, TRIDENT or CLAM)"
                                    " or pass --tile")
    return [SlideUnit(i, slides.get(i), coords_files.get(i)) for i in shard_items(ids, shard)]


def make_settings(encoder: nn.Module, encoder_name: str, output_dir: str | Path, coords_dir: str | Path, *,
                  batch_size: int = 64, reader_threads: int | None = None, tile: dict[str, Any] | None = None,
                  lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> ExtractSettings:
    if tile is not None:
        check_resolution_options(tile.get("target_magnification"), tile.get("target_mpp"),
                                 tile.get("assume_magnification"))
    directory = Path(output_dir) / f"{TRIDENT_PREFIX}{encoder_name}"
    return ExtractSettings(encoder_name, directory, Path(coords_dir), weights_hash(encoder), int(batch_size),
                           reader_threads, tile, float(lock_timeout))


def extract_features(encoder: nn.Module, encoder_name: str, slides_dir: str | Path, coords_dir: str | Path,
                     output_dir: str | Path, *, batch_size: int = 64, device: str | torch.device = "cpu",
                     progress: bool = True, slides_list: str | os.PathLike | None = None,
                     shard: tuple[int, int] | None = None, tile: dict[str, Any] | None = None,
                     lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
                     reader_threads: int | None = None) -> ExtractReport:
    """Features of every slide with a coords file in `coords_dir` (or of every slide, tiled into `coords_dir`
    with `tile` = tile_slide's options) into `output_dir/features_<encoder_name>/`, one `run_slide` each."""
    units = plan_units(slides_dir, coords_dir, tile=tile is not None, slides_list=slides_list, shard=shard)
    settings = make_settings(encoder, encoder_name, output_dir, coords_dir, batch_size=batch_size,
                             reader_threads=reader_threads, tile=tile, lock_timeout=lock_timeout)
    settings.directory.mkdir(parents=True, exist_ok=True)
    report = ExtractReport(settings.directory)
    device = torch.device(device)
    encoder = encoder.eval().to(device)
    owner = owner_record()
    heartbeat = Heartbeat(heartbeat_interval(settings.lock_timeout))

    def reclaimed(line: str) -> None:
        log.warning(line)
        report.reclaimed.append(line)

    patches = patch_bar(progress)
    try:
        for unit in tqdm(units, desc=f"features {encoder_name}", unit="slide", disable=not progress,
                         dynamic_ncols=True):
            status, message = run_slide(unit, encoder, device, settings, owner, heartbeat, reclaimed,
                                        patches.update)
            report.add(unit.slide_id, status, message)
    finally:
        patches.close()
        heartbeat.close()
        remove_empty_locks_dir(settings.directory)
    return report


def tile_options(a: argparse.Namespace) -> dict[str, Any] | None:
    if not a.tile:
        return None
    return {"patch_size": a.patch_size, "level": a.level, "tissue_threshold": a.tissue_threshold,
            "target_magnification": a.target_magnification, "target_mpp": a.target_mpp,
            "assume_magnification": a.assume_magnification}


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
                   "under patches/) or CLAM's (patches/<slide>.h5); with --tile, where slides are tiled to")
    p.add_argument("--output", required=True, help="writes OUTPUT/features_<encoder>/<slide>.h5")
    p.add_argument("--batch-size", type=int, default=64, help="patches per encoder call (GPUs: 256 or more)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--input-size", type=int, default=224, help="patches are resized to this inside the encoder")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    p.add_argument("--reader-threads", type=int, default=None,
                   help="patch-reading threads (default: one per core, at most 8; 0 reads in the encoding thread)")
    jobs = p.add_argument_group("many slides, many machines (docs/cluster.md)")
    jobs.add_argument("--slides-list", default=None, metavar="FILE",
                      help="only the slides named in FILE (one file name, path or slide id a line; # comments)")
    jobs.add_argument("--shard", default=None, metavar="I/N",
                      help="shard I of N (0-based) of the sorted slide list, for job arrays")
    jobs.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT_S, metavar="S",
                      help="a slide lock not touched for S seconds is stale and taken over (a lock of a dead pid "
                           "on this host at once)")
    jobs.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                      help="run as a Ray Data pipeline: on the cluster at ADDRESS (HOST:PORT, or 'auto'), or "
                           "without one on a local cluster bound to 127.0.0.1")
    jobs.add_argument("--workers", type=int, default=None,
                      help="with --ray: encoder actors (default: one per GPU, else half the CPUs)")
    tiling = p.add_argument_group("tiling inside the unit (--tile; zoo.data.tile's options)")
    tiling.add_argument("--tile", action="store_true", help="tile each slide into --coords first (skipped when "
                        "its coords file is already there with these options)")
    tiling.add_argument("--patch-size", type=int, default=256)
    scale = tiling.add_mutually_exclusive_group()
    scale.add_argument("--level", type=int, default=0)
    scale.add_argument("--target-magnification", type=float, default=None, metavar="X")
    scale.add_argument("--target-mpp", type=float, default=None, metavar="MPP")
    tiling.add_argument("--assume-magnification", type=float, default=None, metavar="X")
    tiling.add_argument("--tissue-threshold", type=float, default=0.5)
    a = parser.parse_args(argv)
    try:
        shard = parse_shard(a.shard) if a.shard is not None else None
    except ValueError as exc:
        p.error(str(exc))
    if a.workers is not None and a.workers < 1:
        p.error(f"--workers must be >= 1 (got {a.workers})")
    if a.lock_timeout <= 0:
        p.error(f"--lock-timeout must be > 0 seconds (got {a.lock_timeout})")
    if a.threads is not None:
        torch.set_num_threads(max(1, a.threads))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        encoder = build_encoder(a.encoder, a.weights, a.input_size)
        if a.weights in (None, "", "random"):
            print(f"warning: --weights not given: {a.encoder} has RANDOM weights", file=sys.stderr)
        kwargs = dict(batch_size=a.batch_size, slides_list=a.slides_list, shard=shard, tile=tile_options(a),
                      lock_timeout=a.lock_timeout, reader_threads=a.reader_threads)
        if a.ray is not None:
            from zoo.training.ray_extract import extract_features_ray

            report = extract_features_ray(encoder, a.encoder, a.slides, a.coords, a.output,
                                          address=None if a.ray == "local" else a.ray, workers=a.workers,
                                          device=a.device, threads=a.threads, **kwargs)
        else:
            report = extract_features(encoder, a.encoder, a.slides, a.coords, a.output, device=a.device, **kwargs)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
