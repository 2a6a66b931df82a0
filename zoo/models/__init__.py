"""Encoders, MIL pooling, fusion and the multimodal model (pure nn.Modules, no I/O).

Imported lazily so that `zoo.models._lookup` and friends stay cheap to import.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MultiModalModelBuilder": "zoo.models.builder",
    "build_model_from_config": "zoo.models.builder",
    "MultiModalModel": "zoo.models.multimodal",
    "PatchEncoder": "zoo.models.patch_encoders",
    "build_mil": "zoo.models.mil",
    "FusionHead": "zoo.models.fusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'zoo.models' has no attribute {name!r}")
