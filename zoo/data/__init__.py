"""Data layer: synthetic cohort, WSI tiling, MRI preprocessing, clinical encoding, the multimodal dataset.

Heavy submodules (torch, OpenSlide) load on first use, so ``python -m zoo.data.synthetic`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BreastCancerMultiModalDataset": "dataset",
    "collate_multimodal": "dataset",
    "ClinicalPreprocessor": "clinical",
    "load_clinical_csv": "clinical",
    "ensure_cohort": "prepare",
    "tiling_dir": "prepare",
    "build_augmentation": "augment",
    "generate_cohort": "synthetic",
    "QUICKSTART": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
