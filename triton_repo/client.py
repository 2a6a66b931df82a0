"""gRPC client: tile slides locally, stream patches to the patch encoder, finish with the slide ensemble.

    python -m triton_repo.client predict --slide S.svs [--slide ...] [--mri T1.nii.gz] [--clinical-json '{...}']
        [--url 127.0.0.1:8001] [--model ENTRY] [--repository model_repository] [--shared-memory]
        [--heatmap out.png] [--tiling-dir DIR] [--chunk-size 256] [--in-flight 4] [--retries N]
    python -m triton_repo.client predict --patient-id P --data-dir data/breast_cancer [...]
    python -m triton_repo.client predict-cohort --data-dir data/breast_cancer [--split test] [--workers 4] [--ray]
        [--output predictions.csv] [--url ...] [--model ENTRY]

Missing modalities are simply not passed: the client sends the ensemble a placeholder and presence False.
Without --repository the client needs only the server's address: the `<entry>` ensemble's config carries the
export manifest (triton_repo.discovery), read through the model-config API and sha256-checked.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm

from triton_repo import discovery
from triton_repo import inputs as inp
from triton_repo import manifest as mf
from triton_repo.build import REPO_MANIFEST_NAME
from triton_repo.connection import ClientError, connect, with_retries
from triton_repo.plan import CLINICAL, MRI, PATHOLOGY, ensemble_io, part_model_name, placeholder
from triton_repo.streaming import PatchStreamer
from zoo.cli_help import HelpFormatter
from zoo.spec import SPLITS


@dataclass
class Prediction:
    probabilities: np.ndarray          # [K]
    class_names: tuple[str, ...]
    fusion_attention: np.ndarray       # [M] over `modalities`
    modalities: tuple[str, ...]
    presence: np.ndarray               # bool [M]
    patch_attention: np.ndarray | None  # [N] over all slides' patches
    coords: np.ndarray | None          # int64 [N, 3] = (slide index, x, y) level 0
    slide_ids: tuple[str, ...] = ()

    @property
    def predicted_class(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    def top_patches(self, k: int = 5) -> list[dict[str, Any]]:
        if self.patch_attention is None or self.coords is None:
            return []
        order = np.argsort(-self.patch_attention, kind="stable")[:k]
        return [{"slide_id": self.slide_ids[int(self.coords[i, 0])], "x": int(self.coords[i, 1]),
                 "y": int(self.coords[i, 2]), "attention": float(self.patch_attention[i])} for i in order]

    def to_dict(self, top_k: int = 5) -> dict[str, Any]:
        return {"predicted_class": self.predicted_class,
                "probabilities": dict(zip(self.class_names, map(float, self.probabilities))),
                "fusion_attention": dict(zip(self.modalities, map(float, self.fusion_attention))),
                "presence": dict(zip(self.modalities, map(bool, self.presence))),
                "num_patches": 0 if self.coords is None else int(len(self.coords)),
                "top_patches": self.top_patches(top_k)}


def resolve_manifest(manifest_or_repo: mf.ExportManifest | str | Path, model: str | None) -> mf.ExportManifest:
    """An export manifest, an export directory, or a model repository (its `<entry>/manifest.json` copy)."""
    if isinstance(manifest_or_repo, mf.ExportManifest):
        return manifest_or_repo
    path = Path(manifest_or_repo)
    if (path / mf.MANIFEST_NAME).is_file() or path.is_file():
        return mf.load(path, verify_files=False)
    if model is None:
        entries = sorted(p.parent.name for p in path.glob(f"*/{REPO_MANIFEST_NAME}"))
        if len(entries) != 1:
            raise ClientError(f"{path}: pass --model (entries in this repository: {entries or 'none'})")
        model = entries[0]
    copy = path / model / REPO_MANIFEST_NAME
    if not copy.is_file():
        raise ClientError(f"{copy}: not found; is {path} a model repository built with triton_repo.build "
                          f"and {model!r} an entry in it?")
    return mf.load(copy, verify_files=False)  # the served files were verified at build time


def served_manifest(client, url: str, model: str | None, retries: int = 0,
                    backoff_s: float = 0.5) -> mf.ExportManifest:
    """The manifest the server's `<model>` ensemble carries; without `model`, that of the server's only entry."""
    if model is None:
        model = discovery.pick_entry(discovery.served_entries(client, url, retries, backoff_s), None, url)
    return discovery.served_manifest(client, model, url, retries, backoff_s)


class SlideClient:
    """Predict a patient's subtype through a running Triton server.

    `manifest_or_repo`: None (default) reads the export manifest from the server (the `<entry>` ensemble's config;
    `model` may be left out when the server serves one entry); or an ExportManifest, an export directory, or a
    local model repository. `unreadable_slides`: "skip" (a slide that fails to tile is skipped with a warning,
    like training skips it) or "error" (only a slide without tissue is skipped; any other tiling failure, e.g. a
    corrupt file, raises ClientError). Slides skipped by the last `predict` are in `skipped_slides`.
    """

    def __init__(self, url: str = "127.0.0.1:8001", model: str | None = None,
                 manifest_or_repo: mf.ExportManifest | str | Path | None = None, chunk_size: int = 256,
                 in_flight: int = 4, shared_memory: bool = False, retries: int = 0, backoff_s: float = 0.5,
                 progress: bool = False, tiling_dir: str | Path | None = None, reader_threads: int | None = None,
                 unreadable_slides: str = "skip"):
        if unreadable_slides not in ("skip", "error"):
            raise ValueError(f"unreadable_slides must be 'skip' or 'error', not {unreadable_slides!r}")
        self.url, self.retries, self.backoff_s, self.progress = url, retries, backoff_s, progress
        self.chunk_size, self.tiling_dir, self.reader_threads = chunk_size, tiling_dir, reader_threads
        self.unreadable_slides, self.skipped_slides = unreadable_slides, []
        if manifest_or_repo is not None:
            self.manifest = resolve_manifest(manifest_or_repo, model)
            self.client = connect(url, retries, backoff_s)
        else:
            self.client = connect(url, retries, backoff_s)
            try:
                self.manifest = served_manifest(self.client, url, model, retries, backoff_s)
            except (ClientError, mf.ManifestError):
                self.client.close()
                raise
        self.entry = model or self.manifest.entry
        if self.entry != self.manifest.entry:
            self.client.close()
            raise ClientError(f"model {self.entry!r} does not match the manifest's entry {self.manifest.entry!r}")
        self.has_pathology = PATHOLOGY in self.manifest.modalities
        self.io = ensemble_io(self.manifest, from_features=self.has_pathology)
        self.streamer = None
        if self.has_pathology:
            encoder = self.manifest.part(mf.PATCH_ENCODER)
            self.streamer = PatchStreamer(self.client, part_model_name(self.entry, mf.PATCH_ENCODER), encoder.input(0),
                                          encoder.output(0), chunk_size, in_flight, shared_memory, retries, backoff_s)

    def close(self) -> None:
        if self.streamer is not None:
            self.streamer.close()
        self.client.close()

    def __enter__(self) -> "SlideClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def encode_slides(self, bags: Sequence[inp.SlideBag]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Features [N, D] and coords [N, 3] of every slide's patches; a slide without patches is skipped."""
        features, coords, ids = [], [], []
        for bag in tqdm(bags, desc="slides", unit="slide", disable=not self.progress):
            feats = self.streamer.encode(bag.batches)
            if len(feats) != len(bag.coords):
                raise ClientError(f"slide {bag.slide_id}: {len(feats)} features for {len(bag.coords)} coords")
            if len(feats) == 0:
                self.skipped_slides.append(f"slide {bag.slide_id} has no tissue patches")
                print(f"warning: slide {bag.slide_id} has no tissue patches; skipped", file=sys.stderr)
                continue
            coords.append(np.column_stack([np.full(len(feats), len(ids)), bag.coords]).astype(np.int64))
            features.append(feats)
            ids.append(bag.slide_id)
        if not features:
            return np.zeros((0, 0), np.float32), np.zeros((0, 3), np.int64), ()
        return np.concatenate(features), np.concatenate(coords), tuple(ids)

    def stored_features(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Precomputed patch features of TRIDENT (features_<enc>/<slide>.h5) or CLAM (h5_files/<slide>.h5) files:
        (features [N,D], coords [N,3] = (slide index, x, y), slide ids); empty slides are skipped."""
        from zoo.data.feature_files import read_feature_file

        spec_ = self._modality_input(PATHOLOGY)
        dim = int(spec_.shape[-1])
        features, coords, ids = [], [], []
        for path in paths:
            if Path(path).suffix != ".h5":
                raise ClientError(f"{path}: --features takes TRIDENT/CLAM .h5 feature files (CLAM's pt_files have no "
                                  "coords; use its h5_files)")
            slide = read_feature_file(path)
            if dim > 0 and slide.features.shape[1] != dim and len(slide.features):
                raise ClientError(f"{path}: {slide.features.shape[1]}-d features, but {self.entry!r} pools {dim}-d "
                                  "ones; extract them with the encoder the model was trained on")
            if not len(slide.features):
                print(f"warning: {path}: no patches; slide skipped", file=sys.stderr)
                continue
            xy = slide.coords if slide.coords is not None else np.zeros((len(slide.features), 2), np.int64)
            features.append(slide.features.astype(np.float32))
            coords.append(np.column_stack([np.full(len(xy), len(ids)), xy]).astype(np.int64))
            ids.append(slide.slide_id)
        if not features:
            return np.zeros((0, dim), np.float32), np.zeros((0, 3), np.int64), ()
        return np.concatenate(features), np.concatenate(coords), tuple(ids)

    def predict(self, slides: Sequence[str | Path] = (), mri: Any = None, clinical: Any = None,
                bags: Iterable[inp.SlideBag] = (), features: Sequence[str | Path] = ()) -> Prediction:
        """Probabilities, attention and coordinates for one patient; any modality may be left out. `features`:
        precomputed patch features (TRIDENT/CLAM .h5), sent through `<entry>_slide` like encoded slides."""
        m = self.manifest
        items: dict[str, np.ndarray] = {}
        slide_ids: tuple[str, ...] = ()
        coords = None
        self.skipped_slides = []
        if self.has_pathology:
            all_bags = list(bags) + self.tile_slides(slides)
            parts = [self.encode_slides(all_bags)] if all_bags else []
            if features:
                parts.append(self.stored_features(features))
            if parts:
                offset, shifted = 0, []
                for f, c, ids in parts:  # slide indices of later parts follow the earlier parts' slides
                    c = c.copy()
                    c[:, 0] += offset
                    shifted.append((f, c, ids))
                    offset += len(ids)
                shifted = [(f, c, ids) for f, c, ids in shifted if len(f)] or shifted[:1]
                all_features = np.concatenate([f for f, _, _ in shifted])
                coords = np.concatenate([c for _, c, _ in shifted])
                slide_ids = tuple(i for _, _, ids in shifted for i in ids)
                if len(all_features):
                    items[PATHOLOGY] = all_features
        elif slides or bags or features:
            raise ClientError(f"entry {self.entry!r} has no pathology branch (modalities: {list(m.modalities)})")
        if mri is not None:
            items[MRI] = inp.mri_tensor(mri, m, self._modality_input(MRI))[None]
        if clinical is not None:
            items[CLINICAL] = inp.clinical_tensor(clinical, m, self._modality_input(CLINICAL))[None]
        if not items:
            raise ClientError("no modality given: pass slides, an MRI and/or clinical values")
        presence = np.array([[mod in items for mod in m.modalities]])
        arrays = {mod: items.get(mod, placeholder(self.io.modality_inputs[mod])) for mod in m.modalities}
        result = self.infer_slide(arrays, presence)
        patch_attention = result.as_numpy(self.io.patch_attention.name) if PATHOLOGY in items else None
        return Prediction(
            probabilities=result.as_numpy(self.io.probabilities.name)[0], class_names=m.class_names,
            fusion_attention=result.as_numpy(self.io.fusion_attention.name)[0], modalities=m.modalities,
            presence=presence[0], patch_attention=patch_attention,
            coords=coords if PATHOLOGY in items else None, slide_ids=slide_ids)

    def tile_slides(self, slides: Sequence[str | Path]) -> list[inp.SlideBag]:
        """Bags of the slides that tile; one without tissue is skipped with a warning, like training skips it."""
        bags = []
        for slide in slides:
            try:
                bags.append(inp.slide_bag(slide, self.manifest, self.chunk_size, self.tiling_dir,
                                          self.reader_threads))
            except inp.TilingFailed as err:
                if self.unreadable_slides == "error" and not err.no_tissue:
                    raise ClientError(str(err)) from None
                self.skipped_slides.append(str(err))
                print(f"warning: {err}; slide skipped", file=sys.stderr)
        return bags

    def _modality_input(self, modality: str) -> mf.ServedTensor:
        if modality not in self.io.modality_inputs:
            raise ClientError(f"entry {self.entry!r} has no {modality} branch (modalities: "
                              f"{list(self.manifest.modalities)})")
        return self.io.modality_inputs[modality]

    def infer_slide(self, arrays: Mapping[str, np.ndarray], presence: np.ndarray):
        """One request to the slide ensemble: `arrays` maps each of the entry's modalities to its input
        (pathology = patch features [N,D]), `presence` is [1,M] bool; returns the Triton InferResult."""
        tensors = [(self.io.modality_inputs[mod], arrays[mod]) for mod in self.manifest.modalities]
        tensors.append((self.io.presence, presence))
        infer_inputs = []
        for spec_, array in tensors:
            array = np.ascontiguousarray(array, dtype=spec_.dtype)
            item = grpcclient.InferInput(spec_.name, list(array.shape), grpcclient.np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            infer_inputs.append(item)
        outputs = [self.io.probabilities, self.io.fusion_attention] + (
            [self.io.patch_attention] if self.io.patch_attention else [])
        requested = [grpcclient.InferRequestedOutput(t.name) for t in outputs]
        return with_retries(lambda: self.client.infer(self.io.name, infer_inputs, outputs=requested),
                            self.retries, self.backoff_s, f"model {self.io.name} at {self.url}")


def patient_inputs(patient_id: str, data_dir: str | Path, manifest: mf.ExportManifest) -> dict[str, Any]:
    """A patient's files in the cohort layout (docs/ARCHITECTURE.md); what is missing is left out."""
    from zoo.data.files import validate_identifier
    from zoo.data.tile import patient_slides
    patient_id = validate_identifier(patient_id)
    data_dir = Path(data_dir)
    found: dict[str, Any] = {}
    slides = patient_slides(data_dir / "wsi_raw", patient_id)
    if slides and PATHOLOGY in manifest.modalities:
        found["slides"] = slides
    sequences = (manifest.preprocessing.get("mri") or {}).get("sequences", ["T1"])
    volumes = [data_dir / "mri_raw" / patient_id / f"{s}.nii.gz" for s in sequences]
    if MRI in manifest.modalities and all(v.is_file() for v in volumes):
        found["mri"] = volumes
    if CLINICAL in manifest.modalities:
        import pandas as pd
        for table in sorted(data_dir.glob("*_clinical.csv")):
            frame = pd.read_csv(table)
            rows = frame[frame["patient_id"].astype(str) == patient_id]
            if len(rows):
                found["clinical"] = {k: (None if pd.isna(v) else v) for k, v in rows.iloc[0].items()}
                break
    if not found:
        raise ClientError(f"patient {patient_id!r}: no slide, MRI or clinical row found under {data_dir}")
    return found


def _server_options() -> argparse.ArgumentParser:
    """Options shared by predict and predict-cohort: where the server is and how patients are sent."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC host:port")
    common.add_argument("--model", help="entry name (default: the only entry the server (or --repository) holds)")
    common.add_argument("--repository", default=None,
                        help="model repository (or an exports/<entry> directory) to read the manifest from "
                             "(default: read it from the server, whose <entry> ensemble config carries it)")
    common.add_argument("--tiling-dir", help="cache of slide tilings (default: $XDG_CACHE_HOME/breast-fusion-zoo/"
                                             "client-tiles)")
    common.add_argument("--shared-memory", action="store_true", help="send patches via system shared memory")
    common.add_argument("--chunk-size", type=int, default=256)
    common.add_argument("--in-flight", type=int, default=4)
    common.add_argument("--reader-threads", type=int, default=None,
                        help="threads reading patches ahead of the requests (default: one per core, at most 8; "
                             "0: none)")
    common.add_argument("--retries", type=int, default=0, help="retries with exponential backoff on transient errors")
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m triton_repo.client", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = _server_options()
    p = sub.add_parser("predict", formatter_class=HelpFormatter, help="predict one patient's subtype",
                       parents=[common])
    p.add_argument("--slide", action="append", default=[], help="whole-slide image (repeat for several)")
    p.add_argument("--features", action="append", default=[],
                   help="precomputed patch features of one slide, TRIDENT (features_<enc>/<slide>.h5) or CLAM "
                        "(h5_files/<slide>.h5), sent through the <entry>_slide ensemble (repeat for several)")
    p.add_argument("--mri", action="append", default=[], help="MRI NIfTI, one per sequence in manifest order")
    p.add_argument("--clinical-json", help='raw clinical values, e.g. \'{"age": 52, "er_status": 1}\'')
    p.add_argument("--patient-id", help="take the patient's files from --data-dir (cohort layout)")
    p.add_argument("--data-dir", default="data/breast_cancer")
    p.add_argument("--heatmap", help="write a patch-attention heatmap PNG here")
    p.add_argument("--top-k", type=int, default=5)
    c = sub.add_parser("predict-cohort", formatter_class=HelpFormatter, parents=[common],
                       help="predict every patient of a cohort directory into one CSV (resumable)",
                       description="Every patient of --data-dir's clinical tables, each as `predict --patient-id "
                                   "P`, with at most --workers patients in flight; one CSV row per patient "
                                   "(patient_id, split, model, label, predicted_class, p_<class>, n_patches, "
                                   "skipped_slides, error), rewritten atomically after each; a rerun sends only "
                                   "the patients without a successful row. Exit code 1 when a patient failed.")
    c.add_argument("--data-dir", default="data/breast_cancer")
    c.add_argument("--split", choices=list(SPLITS), help="only this split's patients (default: every split)")
    c.add_argument("--workers", type=int, default=4, help="patients in flight at once")
    c.add_argument("--ray", action="store_true",
                   help="run patients as Ray tasks (a local Ray instance, or the cluster RAY_ADDRESS names)")
    c.add_argument("--output", default="predictions.csv", help="predictions CSV (resumed when it exists)")
    c.add_argument("--skip-unreadable-slides", action="store_true",
                   help="skip a slide that fails to tile (as predict does) instead of failing its patient; a "
                        "slide without tissue is always skipped")
    return parser


def _clinical_json(text: str) -> dict[str, Any]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--clinical-json is not valid JSON ({err}); "
                         f"e.g. '{{\"age\": 52, \"er_status\": 1}}'") from err
    if not isinstance(values, dict):
        raise ValueError(f"--clinical-json must be a JSON object of field -> value, e.g. "
                         f"'{{\"age\": 52, \"er_status\": 1}}', not {type(values).__name__}")
    return values


def _heatmap_patch_size(manifest: mf.ExportManifest) -> int | None:
    """Level-0 side of a patch when it is known exactly (tiling by level 0); else (another level, a magnification:
    it depends on each slide's pyramid) the heatmap infers it."""
    tiling = manifest.preprocessing.get(PATHOLOGY) or {}
    if any(tiling.get(k) is not None for k in ("target_magnification", "target_mpp")):
        return None
    return int(tiling["patch_size"]) if tiling.get("level") == 0 and "patch_size" in tiling else None


def _main_cohort(args: argparse.Namespace) -> int:
    from triton_repo.cohort import ClientOptions, predict_cohort
    options = ClientOptions(url=args.url, model=args.model, repository=args.repository, chunk_size=args.chunk_size,
                            in_flight=args.in_flight, shared_memory=args.shared_memory, retries=args.retries,
                            tiling_dir=args.tiling_dir, reader_threads=args.reader_threads,
                            unreadable_slides="skip" if args.skip_unreadable_slides else "error")
    try:
        result = predict_cohort(args.data_dir, args.output, options, args.split, args.workers, args.ray)
    except (ClientError, mf.ManifestError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"output": str(result.path), "patients": result.total, "already_done": result.skipped,
                      "predicted": result.predicted, "failed": result.failed}))
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "predict-cohort":
        return _main_cohort(args)
    try:
        with SlideClient(args.url, args.model, args.repository, args.chunk_size, args.in_flight,
                         args.shared_memory, args.retries, progress=True, tiling_dir=args.tiling_dir,
                         reader_threads=args.reader_threads) as client:
            given: dict[str, Any] = {}
            if args.patient_id:
                given = patient_inputs(args.patient_id, args.data_dir, client.manifest)
            if args.slide:
                given["slides"] = args.slide
            if args.features:
                given["features"] = args.features
            if args.mri:
                given["mri"] = args.mri
            if args.clinical_json:
                given["clinical"] = _clinical_json(args.clinical_json)
            prediction = client.predict(**given)
    except (ClientError, mf.ManifestError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(prediction.to_dict(args.top_k), indent=2))
    if args.heatmap:
        if prediction.patch_attention is None:
            print(f"warning: no slide was used, so there is no heatmap to write to {args.heatmap}", file=sys.stderr)
        else:
            from triton_repo.heatmap import write_heatmap
            try:
                write_heatmap(prediction, args.heatmap, _heatmap_patch_size(client.manifest))
            except OSError as err:
                print(f"error: heatmap {args.heatmap} not written: {err}", file=sys.stderr)
                return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
