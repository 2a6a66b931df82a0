"""Shared fixtures: a tiny prepared synthetic cohort and a config pointing at it."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO_ROOT / "configs" / "breast_cancer_config.yaml"

TINY_COHORT = dict(num_samples=24, seed=0, slide_size=512, missing_mri=0.15, missing_wsi=0.15, mri_shape=(96, 96, 24))
TINY_PATCH_SIZE = 64


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A prepared synthetic cohort (~20 s on 2 cores), shared by the whole session; treat it as read-only.

    Parameters (``TINY_COHORT``): 24 patients (seed 0; 16/4/4 train/val/test), slides with sides of 410-512 px
    (1-5 per patient, ~2.3 on average), raw MRI 96x96x24 voxels at 0.7x0.7x3 mm, 15% of patients without MRI
    and 15% without slides (so both missing cases occur). Prepared with ``ensure_cohort``: tiled at
    patch_size 64 (``wsi_patches/ps64_l0_t0.5``, ~10-40 patches per slide) and at the config default 256
    (``wsi_patches/ps256_l0_t0.5``: few patches, some slides fail with "no patch reaches tissue fraction"),
    MRI preprocessed to 64x64x32 at 1x1x3 mm in ``mri_processed``.
    """
    from zoo.data.prepare import ensure_cohort
    from zoo.data.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("tiny_cohort") / "breast_cancer"
    generate_cohort(root, workers=2, progress=False, **TINY_COHORT)
    for patch_size in (TINY_PATCH_SIZE, 256):
        ensure_cohort(root, generate_if_missing=False, patch_size=patch_size, workers=2, progress=False)
    return root


@pytest.fixture()
def tiny_cohort_config(tiny_cohort) -> dict:
    """The seed-schema base config with its data section pointing at ``tiny_cohort`` (patch_size 64,
    max_patches 16, batch_size 4, num_workers 0). A fresh deep copy per test: mutate freely."""
    cfg = copy.deepcopy(yaml.safe_load(BASE_CONFIG.read_text()))
    data = cfg["data"]
    data["data_dir"] = str(tiny_cohort)
    data["batch_size"] = 4
    data["num_workers"] = 0
    data["modalities"]["pathology"].update(patch_size=TINY_PATCH_SIZE, max_patches=16)
    return cfg
