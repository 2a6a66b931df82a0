"""Encoders, MIL pooling, fusion and the multimodal model (pure nn.Modules, no I/O).

Imported lazily so that importing `zoo.models` stays cheap.
"""
from __future__ import annotations

from zoo.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "MultiModalModelBuilder": "zoo.models.builder",
    "build_model_from_config": "zoo.models.builder",
    "MultiModalModel": "zoo.models.multimodal",
    "PatchEncoder": "zoo.models.patch_encoders",
    "build_mil": "zoo.models.mil",
    "FusionHead": "zoo.models.fusion",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
