"""Patient-level multimodal dataset and its collate function (batch keys: ``zoo.spec``, docs/ARCHITECTURE.md)."""
from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

from zoo import spec

from .augment import Augmentation, build_augmentation
from .clinical import ClinicalPreprocessor, load_clinical_csv
from .feature_files import (
    FeatureFileError,
    detect_feature_folder,
    read_coords_file,
    read_feature_file,
    scan_feature_files,
)
from .mri import DEFAULT_OUTPUT_SHAPE, MRIError, processed_path
from .patches import PatchSource
from .prepare import mri_processed_dir, tiling_dir
from .tile import SLIDE_SUFFIXES, load_coords, patch_read_size, resolution_options, slide_patient

_SAMPLING_STREAM, _AUGMENT_STREAM = 0, 1


class _Slide:
    __slots__ = ("slide_id", "path", "coords", "features_path", "attrs", "read")

    def __init__(self, slide_id: str, path: Path | None, coords: np.ndarray, features_path: Path | None,
                 attrs: dict | None = None, read: tuple[int, int | None] = (0, None)):
        self.slide_id, self.path, self.coords, self.features_path = slide_id, path, coords, features_path
        self.attrs = attrs  # coords attrs of a stored feature file (external features), else None
        self.read = read  # (pyramid level, px read there when resized to patch_size) of the zoo tiling


class BreastCancerMultiModalDataset(Dataset):
    """One item per patient of ``DIR/<split>_clinical.csv``.

    Pathology: up to ``max_patches`` patches sampled over all the patient's tiled slides with a per-(seed, epoch,
    patient) RNG (``max_patches <= 0`` or None = every patch); ``epoch`` only changes the sample when
    ``training``. Disabled modalities have no key in the item (presence False); missing ones are zeros with
    presence False (a bag of one masked patch for pathology).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        use_pathology: bool = True,
        use_mri: bool = True,
        use_clinical: bool = True,
        max_patches: int | None = 50,
        *,
        patch_size: int = 256,
        level: int = 0,
        tissue_threshold: float = 0.5,
        target_magnification: float | None = None,
        target_mpp: float | None = None,
        assume_magnification: float | None = None,
        mri_sequences: Sequence[str] = ("T1",),
        mri_output_shape: Sequence[int] = DEFAULT_OUTPUT_SHAPE,
        clinical_features: Sequence[str] = spec.CLINICAL_FEATURES,
        clinical_preprocessor: ClinicalPreprocessor | None = None,
        feature_dir: str | os.PathLike | None = None,
        external_features: str | os.PathLike | None = None,
        features_encoder: str | None = None,
        expected_feature_dim: int | None = None,
        augment: Augmentation | None = None,
        seed: int = 0,
        training: bool = False,
    ):
        if split not in spec.SPLITS:
            raise ValueError(f"split must be one of {spec.SPLITS} (got {split!r})")
        self.data_dir = Path(data_dir)
        self.split = split
        self.use = dict(zip(spec.MODALITIES, (use_pathology, use_mri, use_clinical)))
        self.max_patches = None if max_patches is None or max_patches <= 0 else int(max_patches)
        self.patch_size, self.level, self.tissue_threshold = int(patch_size), int(level), float(tissue_threshold)
        # Tiling at a magnification / mpp (zoo.data.tile): each slide's level and read size come from its coords file.
        self.resolution = resolution_options({"target_magnification": target_magnification, "target_mpp": target_mpp,
                                              "assume_magnification": assume_magnification})
        self.mri_sequences = tuple(mri_sequences)
        self.mri_output_shape = tuple(int(v) for v in mri_output_shape)
        self.clinical_features = tuple(clinical_features)
        self.feature_dir = Path(feature_dir) if feature_dir is not None else None
        # Stored features (TRIDENT/CLAM/ours): bags come from those files (their coords), no tiling is read.
        self.external_features = Path(external_features) if external_features else None
        self.features_encoder = features_encoder or None
        self.expected_feature_dim = int(expected_feature_dim) if expected_feature_dim else None
        self.feature_folder = None
        self.feature_problems: dict[str, str] = {}
        self.augment = augment if training else None
        self.seed, self.training, self.epoch = int(seed), bool(training), 0

        self.table = load_clinical_csv(self.data_dir / f"{split}_clinical.csv", self.clinical_features)
        self.patient_ids: list[str] = self.table[spec.CLINICAL_ID].tolist()
        self.labels: np.ndarray = self.table[spec.CLINICAL_LABEL].to_numpy(np.int64)

        self.clinical_preprocessor = None
        self._clinical = None
        if use_clinical:
            if clinical_preprocessor is None:
                train = load_clinical_csv(self.data_dir / "train_clinical.csv", self.clinical_features)
                clinical_preprocessor = ClinicalPreprocessor(self.clinical_features).fit(train)
            if tuple(clinical_preprocessor.features) != self.clinical_features:
                raise ValueError(f"clinical_preprocessor features {clinical_preprocessor.features} differ from "
                                 f"clinical_features {self.clinical_features}")
            self.clinical_preprocessor = clinical_preprocessor
            self._clinical = clinical_preprocessor.transform(self.table)

        self._slides: dict[str, list[_Slide]] = {pid: [] for pid in self.patient_ids}
        self.feature_dim: int | None = None
        if use_pathology:
            self._index_slides()
        self._sources: dict[Path, PatchSource] = {}
        self._sources_pid = os.getpid()

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], split: str = "train", training: bool = False, **overrides: Any):
        """Build from a full config (its ``data`` section); keyword overrides win (e.g. feature_dir=...)."""
        data = cfg["data"]
        mods = data.get("modalities", {})
        path, mri, clin = mods.get("pathology", {}), mods.get("mri", {}), mods.get("clinical", {})
        kwargs: dict[str, Any] = dict(
            data_dir=data["data_dir"], split=split,
            use_pathology=bool(path.get("enabled", False)), use_mri=bool(mri.get("enabled", False)),
            use_clinical=bool(clin.get("enabled", False)), max_patches=path.get("max_patches", 50),
            patch_size=path.get("patch_size", 256), level=path.get("level", 0),
            tissue_threshold=path.get("tissue_threshold", 0.5), **resolution_options(path),
            mri_sequences=tuple(mri.get("sequences", ("T1",))),
            mri_output_shape=tuple(mri.get("output_shape", DEFAULT_OUTPUT_SHAPE)),
            clinical_features=tuple(clin.get("features", spec.CLINICAL_FEATURES)),
            seed=data.get("seed", 0), training=training,
            external_features=path.get("features_dir") or None, features_encoder=path.get("features_encoder") or None,
            expected_feature_dim=int(cfg.get("model", {}).get("modalities", {}).get("pathology", {})
                                     .get("feature_dim", 0) or 0) or None,
            augment=build_augmentation(data.get("augmentation")) if training else None,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def _index_external_features(self) -> None:
        """Slides from a stored feature folder: every file whose name is `<patient_id>` or `<patient_id>-<k>` for
        a patient of this split. Bad files (unreadable, coords/features lengths differ, another feature dim) are
        skipped with a warning naming the slide; patients without any file train without pathology."""
        try:
            folder = detect_feature_folder(self.external_features, self.features_encoder)
        except FeatureFileError as exc:
            raise FileNotFoundError(str(exc)) from None
        self.feature_folder = folder
        raw_dir = self.data_dir / "wsi_raw"
        raw = {p.stem: p for p in raw_dir.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES} if raw_dir.is_dir() else {}
        wanted = set(self.patient_ids)
        owner = {}
        for slide_id in folder.files:
            pid = slide_id if slide_id in wanted else slide_patient(slide_id)
            if pid in wanted:
                owner[slide_id] = pid
        report = scan_feature_files(folder, sorted(owner), self.expected_feature_dim)
        self.feature_problems = dict(report.problems)
        for slide_id, why in sorted(report.problems.items()):
            warnings.warn(f"stored features of slide {slide_id} skipped: {why}", stacklevel=2)
        no_coords = []
        for slide_id in sorted(report.rows):
            if report.rows[slide_id] == 0:
                continue  # an empty slide (no tissue patch): TRIDENT writes (0, D)
            path = folder.files[slide_id]
            if path.suffix == ".pt":
                coords, attrs = np.zeros((report.rows[slide_id], 2), np.int64), {}
                no_coords.append(slide_id)
            else:
                with h5py.File(path, "r") as f:
                    has_coords = "coords" in f
                if has_coords:
                    coords, attrs = read_coords_file(path)
                else:
                    coords, attrs = np.zeros((report.rows[slide_id], 2), np.int64), {}
                    no_coords.append(slide_id)
            self._slides[owner[slide_id]].append(_Slide(slide_id, raw.get(slide_id), coords, path, attrs))
        if no_coords:
            warnings.warn(f"{len(no_coords)} stored feature file(s) without coords ({', '.join(no_coords[:5])}"
                          f"{', ...' if len(no_coords) > 5 else ''}): they train, but heatmaps need coords",
                          stacklevel=2)
        without = [pid for pid in self.patient_ids if pid not in set(owner.values())]
        if without:
            warnings.warn(f"{len(without)} patient(s) of split {self.split!r} have no stored feature file in "
                          f"{folder.directory} ({', '.join(without[:10])}{', ...' if len(without) > 10 else ''}); "
                          "they train without pathology", stacklevel=2)
        if not any(self._slides.values()):
            raise FileNotFoundError(f"{folder.directory}: no usable feature file for any patient of split "
                                    f"{self.split!r} (names must be <patient_id> or <patient_id>-<k>)")
        self.feature_dim = report.dim
        self.feature_dir = folder.directory

    def slide_info(self, patient_id: str, slide_id: str) -> dict[str, Any]:
        """slide_path, patch_size, patch_size_level0 (and level) of one of the patient's slides: from the stored
        feature file's coords attrs, else from the zoo tiling."""
        slide = next((s for s in self._slides[patient_id] if s.slide_id == slide_id), None)
        if slide is None:
            raise KeyError(f"slide {slide_id!r} is not one of patient {patient_id!r}'s")
        info: dict[str, Any] = dict(slide.attrs or {})
        if slide.attrs is None or "patch_size_level0" not in info:
            tiling = self._tiling_dir() / f"{slide_id}.h5"
            if tiling.is_file():
                info = {**load_coords(tiling)[1], **{k: v for k, v in info.items() if k != "slide_path"}}
            elif slide.attrs is not None:
                raise FileNotFoundError(f"slide {slide_id}: its feature file's coords attrs do not give the patch "
                                        "size at level 0 (patch_size_level0, or TRIDENT's magnifications, or CLAM's "
                                        "patch_level/downsample)")
        if slide.path is not None:
            info["slide_path"] = str(slide.path)
        return info

    def _index_slides(self) -> None:
        if self.external_features is not None:
            self._index_external_features()
            return
        tiles = self._tiling_dir()
        if not tiles.is_dir():
            raise FileNotFoundError(
                f"{tiles}: no tiling for patch_size={self.patch_size}, "
                f"{', '.join(f'{k}={v:g}' for k, v in self.resolution.items()) or f'level={self.level}'}, "
                f"tissue_threshold={self.tissue_threshold:g}; "
                f"run zoo.data.prepare.ensure_cohort({str(self.data_dir)!r}, "
                f"patch_size={self.patch_size}, ...) or python -m zoo.data.tile --output-dir {tiles}")
        raw = {p.stem: p for p in (self.data_dir / "wsi_raw").iterdir()
               if p.suffix.lower() in SLIDE_SUFFIXES} if (self.data_dir / "wsi_raw").is_dir() else {}
        wanted = set(self.patient_ids)
        for h5 in sorted(tiles.glob("*.h5")):
            slide_id = h5.stem
            pid = slide_patient(slide_id)
            if pid not in wanted:
                continue
            coords, attrs = load_coords(h5)
            if len(coords) == 0:
                continue
            path = raw.get(slide_id) or Path(str(attrs.get("slide_path", "")))
            if not path.is_file():
                warnings.warn(f"{h5}: slide {slide_id} not found in {self.data_dir / 'wsi_raw'}; skipped", stacklevel=2)
                continue
            features_path = None
            if self.feature_dir is not None:
                features_path = self.feature_dir / f"{slide_id}.h5"
                n, dim = self._feature_shape(features_path)
                if n != len(coords):
                    raise ValueError(f"{features_path}: {n} feature rows but the tiling {h5} has {len(coords)} "
                                     "patches; re-extract features for this tiling")
                self.feature_dim = dim
            read = (int(attrs.get("level", self.level)), patch_read_size(attrs))
            self._slides[pid].append(_Slide(slide_id, path, coords, features_path, read=read))
        if self.feature_dir is not None and self.feature_dim is None:
            raise FileNotFoundError(f"{self.feature_dir}: no feature files for any slide of split {self.split!r}")

    @staticmethod
    def _feature_shape(path: Path) -> tuple[int, int]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: feature file missing; extract features for every tiled slide first")
        with h5py.File(path, "r") as f:
            if "features" not in f or f["features"].ndim != 2:
                raise ValueError(f"{path}: expected a 2D 'features' dataset [N, D]")
            return tuple(int(v) for v in f["features"].shape)  # type: ignore[return-value]

    # -- public helpers -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.patient_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def slide_paths(self, patient_id: str) -> list[Path]:
        return [s.path for s in self._slides[patient_id]]

    def feature_paths(self) -> list[Path]:
        """Cached feature files of every slide of this split (empty without ``feature_dir``)."""
        return [s.features_path for slides in self._slides.values() for s in slides if s.features_path is not None]

    def num_patches(self, patient_id: str) -> int:
        return sum(len(s.coords) for s in self._slides[patient_id])

    def _rng(self, patient_id: str, stream: int) -> np.random.Generator:
        epoch = self.epoch if self.training else 0
        return np.random.default_rng([self.seed, epoch, zlib.crc32(patient_id.encode()), stream])

    def sample_rows(self, patient_id: str) -> np.ndarray:
        """int64 [N, 2] = (slide index, row in that slide's tiling) of the patches served for this patient now."""
        slides = self._slides[patient_id]
        if not slides:
            return np.zeros((0, 2), np.int64)
        rows = np.concatenate([np.column_stack([np.full(len(s.coords), i), np.arange(len(s.coords))])
                               for i, s in enumerate(slides)]).astype(np.int64)
        if self.max_patches is not None and len(rows) > self.max_patches:
            chosen = self._rng(patient_id, _SAMPLING_STREAM).choice(len(rows), self.max_patches, replace=False)
            rows = rows[np.sort(chosen)]
        return rows

    def sample_patches(self, patient_id: str) -> np.ndarray:
        """int64 [N, 3] = (slide index, x, y) at level 0 of the patches served for this patient now."""
        rows = self.sample_rows(patient_id)
        slides = self._slides[patient_id]
        xy = np.array([slides[i].coords[r] for i, r in rows], np.int64).reshape(-1, 2)
        return np.column_stack([rows[:, 0], xy]).astype(np.int64)

    # -- item -----------------------------------------------------------------------------------------------------
    def _tiling_dir(self) -> Path:
        return tiling_dir(self.data_dir, self.patch_size, self.level, self.tissue_threshold, **self.resolution)

    def _source(self, slide: _Slide) -> PatchSource:
        if self._sources_pid != os.getpid():  # forked into a DataLoader worker: never share handles
            self._sources, self._sources_pid = {}, os.getpid()
        if slide.path not in self._sources:
            level, read_size = slide.read
            self._sources[slide.path] = PatchSource(slide.path, level, read_size=read_size)
        return self._sources[slide.path]

    def _pathology(self, pid: str) -> dict[str, Any]:
        rows = self.sample_rows(pid)
        coords = self.sample_patches(pid) if len(rows) else np.zeros((0, 3), np.int64)
        slides = self._slides[pid]
        present = len(rows) > 0
        n = max(len(rows), 1)
        item: dict[str, Any] = {
            spec.KEY_PATHOLOGY_MASK: torch.full((n,), present, dtype=torch.bool),
            spec.KEY_PATHOLOGY_COORDS: torch.from_numpy(coords) if present else torch.zeros((1, 3), dtype=torch.int64),
            spec.KEY_SLIDE_IDS: [s.slide_id for s in slides],
        }
        if self.feature_dir is not None:
            feats = np.zeros((n, self.feature_dim or 0), np.float32)
            for i, s in enumerate(slides):
                sel = np.nonzero(rows[:, 0] == i)[0]
                if len(sel):
                    if s.features_path.suffix == ".pt":  # CLAM pt_files
                        feats[sel] = read_feature_file(s.features_path, rows[sel, 1]).features
                        continue
                    with h5py.File(s.features_path, "r") as f:
                        feats[sel] = f["features"][rows[sel, 1]]  # rows are increasing within a slide
            item[spec.KEY_PATHOLOGY_FEATURES] = torch.from_numpy(feats)
            return item
        bag = np.zeros((n, 3, self.patch_size, self.patch_size), np.uint8)
        for i, s in enumerate(slides):
            sel = np.nonzero(rows[:, 0] == i)[0]
            if len(sel):
                bag[sel] = self._source(s).read(coords[sel, 1:], self.patch_size)
        if present and self.augment is not None and self.augment.pathology is not None:
            bag = self.augment.pathology(bag, self._rng(pid, _AUGMENT_STREAM))
        item[spec.KEY_PATHOLOGY] = torch.from_numpy(np.ascontiguousarray(bag))
        return item

    def _mri(self, pid: str) -> tuple[torch.Tensor, bool]:
        paths = [processed_path(mri_processed_dir(self.data_dir), pid, seq) for seq in self.mri_sequences]
        if not all(p.is_file() for p in paths):
            return torch.zeros((len(paths), *self.mri_output_shape), dtype=torch.float32), False
        volumes = []
        for p in paths:
            v = np.asarray(nib.load(str(p)).dataobj, np.float32)
            if v.shape != self.mri_output_shape:
                raise MRIError(f"{p}: shape {v.shape} differs from output_shape {self.mri_output_shape}; "
                               "re-run MRI preprocessing (python -m zoo.data.mri --overwrite)")
            volumes.append(v)
        volume = np.stack(volumes)
        if self.augment is not None and self.augment.mri is not None:
            volume = self.augment.mri(volume, self._rng(pid, _AUGMENT_STREAM + 1))
        return torch.from_numpy(np.ascontiguousarray(volume)), True

    def __getitem__(self, idx: int) -> dict[str, Any]:
        pid = self.patient_ids[idx]
        item: dict[str,
                   Any] = {spec.KEY_PATIENT_ID: pid, spec.KEY_LABEL: torch.tensor(self.labels[idx], dtype=torch.int64)}
        presence = dict.fromkeys(spec.MODALITIES, False)
        if self.use["pathology"]:
            item.update(self._pathology(pid))
            presence["pathology"] = bool(item[spec.KEY_PATHOLOGY_MASK].any())
        if self.use["mri"]:
            item[spec.KEY_MRI], presence["mri"] = self._mri(pid)
        if self.use["clinical"]:
            item[spec.KEY_CLINICAL] = torch.from_numpy(self._clinical[idx].copy())
            presence["clinical"] = True
        item[spec.KEY_PRESENCE] = torch.tensor([presence[m] for m in spec.MODALITIES], dtype=torch.bool)
        return item

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sources"] = {}
        return state


_BAG_KEYS = {spec.KEY_PATHOLOGY: 0, spec.KEY_PATHOLOGY_FEATURES: 0, spec.KEY_PATHOLOGY_MASK: False,
             spec.KEY_PATHOLOGY_COORDS: 0}
_LIST_KEYS = (spec.KEY_PATIENT_ID, spec.KEY_SLIDE_IDS)


def collate_multimodal(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack samples; bags are padded to the batch's largest N with ``pathology_mask`` False."""
    if not samples:
        raise ValueError("collate_multimodal needs at least one sample")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in _LIST_KEYS:
            batch[key] = values
        elif key in _BAG_KEYS:
            n = max(v.shape[0] for v in values)
            padded = values[0].new_full((len(values), n, *values[0].shape[1:]), _BAG_KEYS[key])
            for i, v in enumerate(values):
                padded[i, : v.shape[0]] = v
            batch[key] = padded
        else:
            batch[key] = torch.stack(values)
    return batch
