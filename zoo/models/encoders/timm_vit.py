"""timm VisionTransformers from a plain architecture name, `pretrained=False`: nothing is fetched.

Class-valued kwargs are written in the registry as dotted names ("timm.layers.SwiGLUPacked", "torch.nn.SiLU")
so the registry stays printable and torch-free; they are resolved here.
"""
from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from zoo.models.encoders.pooling import ClsMeanPool, Flatten
from zoo.models.encoders.registry import EncoderRecord

_CLASS_PREFIXES = ("timm.layers.", "torch.nn.")


def resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(_CLASS_PREFIXES):
            module, _, attr = value.rpartition(".")
            return getattr(importlib.import_module(module), attr)
        return value

    return {key: resolve(value) for key, value in kwargs.items()}


def build(record: EncoderRecord) -> tuple[nn.Module, nn.Module]:
    import timm

    if ":" in record.architecture or "/" in record.architecture:
        raise ValueError(f"encoder {record.name!r}: architecture {record.architecture!r} is a hub name; timm would "
                         "fetch its config from the network. Register a plain timm architecture name")
    trunk = timm.create_model(record.architecture, pretrained=False, **resolve_kwargs(record.kwargs))
    if record.pooling == "cls_mean":
        return trunk, ClsMeanPool(trunk.num_prefix_tokens)
    return trunk, Flatten()
