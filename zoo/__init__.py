"""Breast-cancer multimodal fusion model zoo.

Public names are imported lazily (importing `zoo` does not import torch): add a re-export by adding a line
to _EXPORTS (public name -> module that defines it).
"""
from __future__ import annotations

from zoo.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    # models
    "MultiModalModelBuilder": "zoo.models.builder",
    "build_model_from_config": "zoo.models.builder",
    "MultiModalModel": "zoo.models.multimodal",
    # config
    "load_config": "zoo.config",
    "save_config": "zoo.config",
    "ConfigError": "zoo.config",
    # registry
    "Entry": "zoo.registry",
    "list_entries": "zoo.registry",
    "get_entry": "zoo.registry",
    "build_model": "zoo.registry",
    # training
    "MultimodalTrainer": "zoo.training.trainer",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
