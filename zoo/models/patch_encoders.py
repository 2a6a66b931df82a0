"""2D patch encoders: uint8 or float patches [N,3,H,W] -> features [N,D].

Preprocessing lives inside the graph (so exported/served encoders take raw uint8 patches):
uint8 -> float/255 -> resize to `input_size` (bilinear) -> ImageNet normalisation. Resizing before
normalising is exactly equivalent (both are per-pixel affine maps) and cheaper when downsampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo import spec
from zoo.models._lookup import lookup
from zoo.models.weights import resolve_pretrained


@dataclass(frozen=True)
class PatchBackbone:
    make: Callable[[], nn.Module]  # trunk without classifier, output [N,D] (or [N,D,1,1])
    out_dim: int
    # torchvision weights URL (the file is looked up in the local hub cache only); None = no published weights
    hub_url: Callable[[], str] | None = None


def _torchvision_resnet(name: str, weights_enum: str, out_dim: int) -> PatchBackbone:
    # torchvision is imported only when one of its backbones is used (it is slow to import).
    def make() -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        net.fc = nn.Identity()
        return net

    def hub_url() -> str:
        import torchvision

        return getattr(torchvision.models, weights_enum).DEFAULT.url

    return PatchBackbone(make, out_dim, hub_url)


def _cnn_tiny() -> nn.Module:
    """A 3-conv encoder for tests and smoke runs (32-dim features)."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 8), *block(8, 16), *block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


PATCH_BACKBONES: dict[str, PatchBackbone] = {
    "resnet18": _torchvision_resnet("resnet18", "ResNet18_Weights", 512),
    "resnet34": _torchvision_resnet("resnet34", "ResNet34_Weights", 512),
    "resnet50": _torchvision_resnet("resnet50", "ResNet50_Weights", 2048),
    "cnn_tiny": PatchBackbone(_cnn_tiny, 32),
}


class PatchEncoder(nn.Module):
    """Raw patches in, features out; `freeze=True` fixes the weights and keeps BatchNorm in eval mode."""

    def __init__(self, backbone: str = "resnet50", input_channels: int = 3, pretrained: bool | str = False,
                 freeze: bool = False, input_size: int = 224):
        super().__init__()
        if input_channels != 3:
            raise ValueError(f"pathology input_channels must be 3 (RGB patches), got {input_channels}")
        if int(input_size) < 16:
            raise ValueError(f"pathology input_size must be >= 16 pixels, got {input_size}")
        spec_ = lookup(PATCH_BACKBONES, backbone, "pathology backbone")
        self.backbone_name = backbone
        self.trunk = spec_.make()
        hub_url = spec_.hub_url() if spec_.hub_url and pretrained is True else None
        resolve_pretrained(self.trunk, pretrained, backbone, hub_url)
        self.out_dim = spec_.out_dim
        self.input_size = int(input_size)
        self.frozen = bool(freeze)
        self.normalisation = (tuple(spec.IMAGENET_MEAN), tuple(spec.IMAGENET_STD))  # exact values, for records
        self.register_buffer("mean", torch.tensor(spec.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if self.frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    def preprocessing(self) -> dict:
        """What the graph does to raw uint8 patches, as the record that travels checkpoint -> manifest -> Triton."""
        return {"backbone": self.backbone_name, "input_size": self.input_size,
                "normalisation": {"mean": list(self.normalisation[0]), "std": list(self.normalisation[1])}}

    def train(self, mode: bool = True) -> "PatchEncoder":
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.float() / 255.0 if patches.dtype == torch.uint8 else patches.float()
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=False)
        return (x - self.mean) / self.std

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.preprocess(patches)).flatten(1)
