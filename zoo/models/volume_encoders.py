"""3D MRI encoders: volumes [B,C,X,Y,Z] -> embeddings [B,E].

The last axis Z is the thick-slice axis (about 3x the in-plane spacing), so the stem and the first pooling
neither stride nor mix along Z: after them the voxels are roughly isotropic (e.g. 4 x 4 x 3 mm), and the
residual stages then downsample all axes alike.

Global pooling: `avg` (the seed's) averages the last feature map over the whole field of view, where a lesion of
1-5 % of the volume is diluted; `avgmax` appends the global max, so one strongly responding location (the
lesion's margin, its rim) reaches the embedding whatever its size. With few hundred volumes that is what lets a
small network learn what intensity statistics of the lesion already show.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from zoo.lookup import lookup
from zoo.models.weights import resolve_pretrained


class BasicBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))
        )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet3d(nn.Module):
    """3D ResNet with an anisotropic stem; `width` base channels, stages width x (1, 2, 4, 8)."""

    def __init__(self, blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2), input_channels: int = 1, width: int = 64,
                 pool: str = "avg"):
        super().__init__()
        if int(input_channels) < 1 or int(width) < 1:
            raise ValueError(f"mri input_channels and width must be >= 1, got {input_channels}, {width}")
        if pool not in POOLS:
            raise ValueError(f"mri pool must be one of {POOLS}, got {pool!r}")
        self.stem = nn.Sequential(
            nn.Conv3d(input_channels, width, kernel_size=(7, 7, 1), stride=(2, 2, 1), padding=(3, 3, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(3, 3, 1), stride=(2, 2, 1), padding=(1, 1, 0)),
        )
        stages, cin = [], width
        for i, n_blocks in enumerate(blocks_per_stage):
            cout = width * 2 ** i
            stages += [BasicBlock3d(cin if b == 0 else cout, cout, stride=1 if i == 0 or b > 0 else 2)
                       for b in range(n_blocks)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool_type = pool
        self.out_dim = cin * (2 if pool == "avgmax" else 1)

    def forward(self, x):
        features = self.stages(self.stem(x.float())).flatten(2)
        if self.pool_type == "avgmax":
            return torch.cat([features.mean(-1), features.amax(-1)], dim=1)
        return features.mean(-1)


POOLS = ("avg", "avgmax")

VOLUME_BACKBONES = {
    "resnet3d_18": partial(ResNet3d, (2, 2, 2, 2)),
    "resnet3d_tiny": partial(ResNet3d, (1, 1)),
}


def build_volume_encoder(backbone: str = "resnet3d_18", input_channels: int = 1, pretrained: bool | str = False,
                         width: int = 64, pool: str = "avg") -> ResNet3d:
    encoder = lookup(VOLUME_BACKBONES, backbone, "mri backbone")(input_channels=int(input_channels), width=int(width),
                                                                  pool=str(pool))
    resolve_pretrained(encoder, pretrained, backbone, hub_url=None)
    return encoder
