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


def build_trunk(record: EncoderRecord, input_size: int | None = None) -> tuple[nn.Module, nn.Module]:
    """Build `record`'s architecture with random (or, under a meta device context, no) weights. Never downloads.

    `input_size`: the size the trunk will see (ViTs get a fixed positional grid for it, so exported graphs hold
    no resampling); None = the published layout (the record's kwargs)."""
    return importlib.import_module(FAMILIES[record.family]).build(record, input_size)


def adapt_state(record: EncoderRecord, trunk: nn.Module, state: dict) -> dict:
    """A published state_dict fitted to `trunk`'s input size where the family knows how (ViT positional
    embeddings resampled, as timm does on load); everything else is left for the strict check."""
    family = importlib.import_module(FAMILIES[record.family])
    return family.adapt_state(trunk, state) if hasattr(family, "adapt_state") else state


__all__ = ["ENCODERS", "EncoderRecord", "FAMILIES", "adapt_state", "build_trunk", "get_record"]
