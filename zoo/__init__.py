"""Breast-cancer multimodal fusion model zoo.

Public names are imported lazily (importing `zoo` does not import torch): add a re-export by adding a line
to _EXPORTS (public name -> module that defines it).
"""
from __future__ import annotations

import importlib

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
    "MultimodalTrainer": "zoo.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
