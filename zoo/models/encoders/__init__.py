"""Patch-encoder registry (`registry.py`, torch-free) and the families that build each trunk offline.

`build_trunk(record) -> (trunk, pool)`: `trunk` holds every weight (its state_dict is the published file's,
minus `record.drop_prefixes`), `pool` is parameter-free and turns the trunk's output into [N, embedding_dim].
"""
from __future__ import annotations

import importlib

from torch import nn

from zoo.models.encoders.registry import ENCODERS, EncoderRecord, get_record

FAMILIES: dict[str, str] = {
    "torchvision": "zoo.models.encoders.torchvision",
    "timm_vit": "zoo.models.encoders.timm_vit",
    "zoo": "zoo.models.encoders.tiny",
}


def build_trunk(record: EncoderRecord) -> tuple[nn.Module, nn.Module]:
    """Build `record`'s architecture with random (or, under a meta device context, no) weights. Never downloads."""
    return importlib.import_module(FAMILIES[record.family]).build(record)


__all__ = ["ENCODERS", "EncoderRecord", "FAMILIES", "build_trunk", "get_record"]
