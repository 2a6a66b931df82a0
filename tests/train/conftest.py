"""Training-test fixtures: an easy cohort and two torch threads."""
from __future__ import annotations

import pytest
import torch

# Strong class signal in every modality so a 2-core, few-epoch tiny run must beat chance.
EASY_SIGNALS = dict(pathology=4.0, mri=4.0, clinical=4.0)
EASY_COHORT = dict(num_samples=32, seed=3, slide_size=256, missing_mri=0.05, missing_wsi=0.05)


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def easy_cohort(tmp_path_factory):
    """A small synthetic cohort with strong signals, generated, tiled and MRI-preprocessed for the tiny recipe."""
    from zoo.data.prepare import ensure_cohort
    from zoo.data.synthetic import Signals, generate_cohort
    from zoo.registry import get_entry

    data_dir = tmp_path_factory.mktemp("easy_cohort")
    generate_cohort(data_dir, signals=Signals(**EASY_SIGNALS), workers=2, progress=False, **EASY_COHORT)
    cfg = get_entry("attention").config("tiny")
    p, m = cfg["data"]["modalities"]["pathology"], cfg["data"]["modalities"]["mri"]
    ensure_cohort(data_dir, generate_if_missing=False, patch_size=p["patch_size"], level=p["level"],
                  tissue_threshold=p["tissue_threshold"], target_spacing=m["target_spacing"],
                  output_shape=m["output_shape"], workers=2, progress=False)
    return data_dir


@pytest.fixture(scope="session")
def attention_run(easy_cohort, tmp_path_factory):
    """One short all-modality training run whose outputs several tests inspect."""
    from zoo.training.pipeline import run_training

    out = tmp_path_factory.mktemp("attention_run") / "attention"
    result = run_training("attention", recipe="tiny", data_dir=easy_cohort, output_dir=out,
                          overrides=["training.epochs=2", "data.modalities.pathology.max_patches=4"],
                          progress=False, log=lambda _m: None)
    return out, result
