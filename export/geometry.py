"""Fixed tensor sizes of a trained model: read from its resolved config, embedding widths probed from the model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from zoo import spec
from zoo.lookup import dotted_get


def config_value(config: Mapping[str, Any], dotted: str) -> Any:
    """`config['a']['b']` for 'a.b', with an error naming the missing key."""
    try:
        return dotted_get(config, dotted)
    except KeyError:
        raise KeyError(f"checkpoint config lacks '{dotted}'; the checkpoint's resolved config is incomplete") from None


@dataclass(frozen=True)
class Geometry:
    modalities: tuple[str, ...]
    num_classes: int
    patch_size: int = 0
    patch_feature_dim: int = 0
    mri_channels: int = 0
    mri_shape: tuple[int, int, int] = (0, 0, 0)
    clinical_dim: int = 0
    embedding_dims: dict[str, int] = field(default_factory=dict)

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)


@torch.no_grad()
def probe_geometry(model: nn.Module, config: Mapping[str, Any]) -> Geometry:
    """Sizes every part signature needs; widths come from running each encoder once on a zero input."""
    modalities = tuple(model.modalities)
    unknown = [m for m in modalities if m not in spec.MODALITIES]
    if unknown:
        raise ValueError(f"model.modalities holds unknown modalities {unknown}; expected a subset of {spec.MODALITIES}")
    sizes: dict[str, Any] = {"modalities": modalities, "num_classes": int(config_value(config, "model.num_classes"))}
    dims: dict[str, int] = {}
    if spec.KEY_PATHOLOGY in modalities:
        patch = int(config_value(config, "data.modalities.pathology.patch_size"))
        features = model.patch_encoder(torch.zeros(2, 3, patch, patch, dtype=torch.uint8))
        embedding, _ = model.mil(features.unsqueeze(0), torch.ones(1, features.shape[0], dtype=torch.bool))
        sizes.update(patch_size=patch, patch_feature_dim=int(features.shape[-1]))
        dims[spec.KEY_PATHOLOGY] = int(embedding.shape[-1])
    if spec.KEY_MRI in modalities:
        channels = len(config_value(config, "data.modalities.mri.sequences"))
        shape = tuple(int(s) for s in config_value(config, "data.modalities.mri.output_shape"))
        embedding = model.mri_encoder(torch.zeros(1, channels, *shape))
        sizes.update(mri_channels=channels, mri_shape=shape)
        dims[spec.KEY_MRI] = int(embedding.shape[-1])
    if spec.KEY_CLINICAL in modalities:
        width = int(config_value(config, "model.modalities.clinical.input_dim"))
        embedding = model.clinical_encoder(torch.zeros(1, width))
        sizes.update(clinical_dim=width)
        dims[spec.KEY_CLINICAL] = int(embedding.shape[-1])
    return Geometry(**sizes, embedding_dims=dims)
