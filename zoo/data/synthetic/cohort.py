"""Synthetic multimodal breast-cancer cohort: clinical CSVs, SVS slides + tumour masks, T1/T2 MRI."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from zoo import spec
from zoo.atomic import atomic_path, atomic_write_text

from ..files import default_workers
from .clinical_table import clinical_row
from .he_render import LAYOUT_DOWNSAMPLE, SlideRenderer, StainStyle, TumourStyle, make_layout
from .mri_volume import DEFAULT_SHAPE, DEFAULT_SPACING, synthesize_breast_mri
from .phenotype import Phenotype, Signals, patient_rng, sample_phenotype
from .svs_writer import write_svs

GENERATOR_VERSION = 1
COHORT_MANIFEST = "cohort.json"
SLIDE_LATENT_JITTER = 0.25  # slide-to-slide variation of one tumour's morphology

DEFAULT_SIGNALS = Signals(pathology=1.4, mri=1.3, clinical=0.8)

# The cohort training generates when none exists: 240 patients, ~550 slides with sides of 1024-1280 px (about
# 2.5-3 CPU-minutes to generate, tile and preprocess); ~30 tissue patches per slide at patch_size 128, ~6 at 256.
QUICKSTART: dict[str, object] = dict(num_samples=240, seed=0, slide_size=1280)


@dataclass(frozen=True)
class CohortParams:
    num_samples: int
    seed: int
    slide_size: int
    missing_mri: float
    missing_wsi: float
    signals: Signals
    mri_shape: tuple[int, int, int]
    mri_spacing: tuple[float, float, float]

    def as_json(self) -> dict:
        d = asdict(self)
        d["mri_shape"], d["mri_spacing"] = list(self.mri_shape), list(self.mri_spacing)
        return d


def slide_dims(ph: Phenotype, k: int, params: CohortParams) -> tuple[int, int]:
    rng = np.random.default_rng([params.seed, ph.index, 100 + k])
    return tuple(int(params.slide_size * f) for f in rng.uniform(0.8, 1.0, 2))  # type: ignore[return-value]


def _write_slide(ph: Phenotype, k: int, params: CohortParams, out: Path) -> None:
    slide_id = f"{ph.patient_id}-{k}"
    svs_path = out / "wsi_raw" / f"{slide_id}.svs"
    mask_path = out / "wsi_masks" / f"{slide_id}.png"
    if svs_path.exists() and mask_path.exists() and mask_path.with_suffix(".json").exists():
        return  # (a run killed between the mask's .png and .json redoes the slide)
    width, height = slide_dims(ph, k, params)
    rng = np.random.default_rng([params.seed, ph.index, 200 + k])
    layout = make_layout(rng, width, height)
    latent = ph.pathology + rng.normal(0, SLIDE_LATENT_JITTER, ph.pathology.shape)
    renderer = SlideRenderer(layout, TumourStyle.from_latent(latent), StainStyle.sample(rng),
                             (params.seed, ph.index, k))
    write_svs(svs_path, width, height, renderer.render)
    with atomic_path(mask_path) as tmp:
        Image.fromarray(layout.tumour_mask().astype(np.uint8) * 255).save(tmp, format="PNG")
    atomic_write_text(mask_path.with_suffix(".json"), json.dumps({"downsample": LAYOUT_DOWNSAMPLE}))


def _write_mri(ph: Phenotype, params: CohortParams, out: Path) -> None:
    folder = out / "mri_raw" / ph.patient_id
    targets = {name: folder / f"{name}.nii.gz" for name in ("T1", "T2")}
    if all(p.exists() for p in targets.values()):
        return
    images = synthesize_breast_mri(patient_rng(params.seed, ph.index, "mri_render"), ph.mri, params.mri_shape,
                                   params.mri_spacing)
    for name, path in targets.items():
        with atomic_path(path) as tmp:
            nib.save(images[name], tmp)


def _generate_patient(task: tuple[int, CohortParams, str]) -> None:
    index, params, out = task
    ph = sample_phenotype(params.seed, index, params.signals, params.missing_mri, params.missing_wsi)
    for k in range(1, ph.n_slides + 1):
        _write_slide(ph, k, params, Path(out))
    if ph.has_mri:
        _write_mri(ph, params, Path(out))


def split_patients(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Patient-level stratified 70/15/15 split; returns indices per split."""
    idx = np.arange(len(labels))
    stratify = labels if np.bincount(labels).min() >= 3 else None
    train, rest = train_test_split(idx, test_size=0.30, random_state=seed, stratify=stratify)
    rest_strat = labels[rest] if stratify is not None and np.bincount(labels[rest]).min() >= 2 else None
    val, test = train_test_split(rest, test_size=0.50, random_state=seed, stratify=rest_strat)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def generate_cohort(
    output_dir: str | os.PathLike,
    num_samples: int = 500,
    seed: int = 0,
    *,
    slide_size: int = 1280,
    workers: int | None = None,
    missing_mri: float = 0.04,
    missing_wsi: float = 0.04,
    signals: Signals = DEFAULT_SIGNALS,
    mri_shape: tuple[int, int, int] = DEFAULT_SHAPE,
    mri_spacing: tuple[float, float, float] = DEFAULT_SPACING,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic cohort into ``output_dir`` (see docs/ARCHITECTURE.md for the layout).

    Deterministic per ``seed``: every patient draws from its own RNG streams (seed, index). Re-running with the
    same parameters resumes (finished files are kept); different parameters need ``overwrite=True``.
    """
    if num_samples < 8:
        raise ValueError(f"num_samples must be >= 8 to fill three stratified splits (got {num_samples})")
    if slide_size < 256:
        raise ValueError(f"slide_size must be >= 256 px (got {slide_size})")
    for name, p in (("missing_mri", missing_mri), ("missing_wsi", missing_wsi)):
        if not 0 <= p < 1:
            raise ValueError(f"{name} must be in [0, 1) (got {p})")
    out = Path(output_dir)
    params = CohortParams(num_samples, seed, slide_size, missing_mri, missing_wsi, signals,
                          tuple(int(v) for v in mri_shape), tuple(float(v) for v in mri_spacing))  # type: ignore[arg-type]
    manifest_path = out / COHORT_MANIFEST
    if manifest_path.exists() and not overwrite:
        existing = json.loads(manifest_path.read_text()).get("params")
        if existing != params.as_json():
            raise FileExistsError(
                f"{out} already holds a cohort generated with other parameters ({manifest_path}); "
                "pass overwrite=True (--overwrite) or choose another output directory")
    if overwrite:
        for folder in ("wsi_raw", "wsi_masks", "mri_raw"):
            for f in sorted((out / folder).rglob("*")) if (out / folder).exists() else []:
                if f.is_file():
                    f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest_path, json.dumps({"generator": "zoo.data.synthetic", "version": GENERATOR_VERSION,
                                                 "complete": False, "params": params.as_json()}, indent=2))

    tasks = [(i, params, str(out)) for i in range(num_samples)]
    n_workers = min(default_workers(workers), num_samples)
    bar = dict(total=num_samples, desc="synthetic cohort", unit="patient", disable=not progress)
    if n_workers == 1:
        for task in tqdm(tasks, **bar):
            _generate_patient(task)
    else:
        with ProcessPoolExecutor(n_workers) as pool:
            for _ in tqdm(pool.map(_generate_patient, tasks, chunksize=2), **bar):
                pass

    phenotypes = [sample_phenotype(seed, i, signals, missing_mri, missing_wsi) for i in range(num_samples)]
    table = pd.DataFrame([clinical_row(ph, seed) for ph in phenotypes])
    table[spec.CLINICAL_LABEL] = table[spec.CLINICAL_LABEL].astype(int)
    for split, idx in split_patients(table[spec.CLINICAL_LABEL].to_numpy(), seed).items():
        with atomic_path(out / f"{split}_clinical.csv") as tmp:
            table.iloc[idx].to_csv(tmp, index=False)
    counts = {
        "patients": num_samples,
        "slides": int(sum(ph.n_slides for ph in phenotypes)),
        "patients_without_slides": int(sum(ph.n_slides == 0 for ph in phenotypes)),
        "patients_without_mri": int(sum(not ph.has_mri for ph in phenotypes)),
        "class_counts": {name: int((table[spec.CLINICAL_LABEL] == k).sum()) for k, name in enumerate(spec.CLASS_NAMES)},
    }
    atomic_write_text(manifest_path, json.dumps({"generator": "zoo.data.synthetic", "version": GENERATOR_VERSION,
                                                 "complete": True, "params": params.as_json(), "counts": counts},
                                                 indent=2))
    return out
