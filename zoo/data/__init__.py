"""Data layer: synthetic cohort, WSI tiling, MRI preprocessing, clinical encoding, the multimodal dataset.

Heavy submodules (torch, OpenSlide) load on first use, so ``python -m zoo.data.synthetic`` stays light.
"""
from __future__ import annotations

from zoo.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "BreastCancerMultiModalDataset": "zoo.data.dataset",
    "collate_multimodal": "zoo.data.dataset",
    "ClinicalPreprocessor": "zoo.data.clinical",
    "load_clinical_csv": "zoo.data.clinical",
    "ensure_cohort": "zoo.data.prepare",
    "tiling_dir": "zoo.data.prepare",
    "build_augmentation": "zoo.data.augment",
    "generate_cohort": "zoo.data.synthetic",
    "QUICKSTART": "zoo.data.synthetic",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
