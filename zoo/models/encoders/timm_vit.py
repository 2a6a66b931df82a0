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


def build(record: EncoderRecord, input_size: int | None = None) -> tuple[nn.Module, nn.Module]:
    """The ViT at `input_size` with a fixed positional grid (`dynamic_img_size` off: PatchEncoder always feeds
    exactly `input_size`, and timm's dynamic resampling, antialiased bicubic, does not export to ONNX);
    None = the published layout, the record's kwargs as TRIDENT passes them."""
    import timm

    if ":" in record.architecture or "/" in record.architecture:
        raise ValueError(f"encoder {record.name!r}: architecture {record.architecture!r} is a hub name; timm would "
                         "fetch its config from the network. Register a plain timm architecture name")
    kwargs = resolve_kwargs(record.kwargs)
    if input_size is not None:
        kwargs.update(img_size=int(input_size), dynamic_img_size=False)
    trunk = timm.create_model(record.architecture, pretrained=False, **kwargs)
    if record.pooling == "cls_mean":
        return trunk, ClsMeanPool(trunk.num_prefix_tokens)
    return trunk, Flatten()


def adapt_state(trunk: nn.Module, state: dict) -> dict:
    """Resample a published `pos_embed` to `trunk`'s grid (timm's resample_abs_pos_embed, as its checkpoint
    filter does) when only the grid differs; any other difference is left to the strict check."""
    ours, theirs = getattr(trunk, "pos_embed", None), state.get("pos_embed")
    if ours is None or theirs is None or theirs.ndim != 3 or tuple(theirs.shape) == tuple(ours.shape) \
            or theirs.shape[-1] != ours.shape[-1]:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
    grid = theirs.shape[1] - prefix
    side = int(round(grid ** 0.5))
    if side * side != grid:
        return state
    resampled = resample_abs_pos_embed(theirs.float(), new_size=list(trunk.patch_embed.grid_size),
                                       old_size=[side, side], num_prefix_tokens=prefix, verbose=False)
    return {**state, "pos_embed": resampled}
