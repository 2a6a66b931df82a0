"""3D MRI encoders: volumes [B,C,X,Y,Z] -> embeddings [B,E].

The last axis Z is the thick-slice axis (about 3x the in-plane spacing), so the stem and the first pooling
neither stride nor mix along Z: after them the voxels are roughly isotropic (e.g. 4 x 4 x 3 mm), and the
residual stages then downsample all axes alike.

Global pooling: `avg` (the seed's) averages the last feature map over the whole field of view, where a lesion of
1-5 % of the volume is diluted; `avgmax` appends the global max, so one strongly responding location (the
lesion's margin, its rim) reaches the embedding whatever its size. With few hundred volumes that is what lets a
small network learn what intensity statistics of the lesion already show.

`statistics=True` appends first-order statistics of each input channel's bright tail (as radiomics does): the
values at the top 0.1 / 0.5 / 1 / 5 / 10 / 25 % ranks, mean and std of the top 1 % ("hot") voxels and their
spatial spread along each axis, batch-normalised. They have no weights; the network learns what to make of them
next to the convolutional features (which see shape and texture). Exportable: top-k, comparisons and sums only.

`norm="group"` puts GroupNorm where the seed's ResNet has BatchNorm: with batches of 16 volumes the batch
statistics are noisy, and the running averages used in evaluation lag the weights (out-of-fold validation losses
of 1.3's MRI entry jumped to 5-200 in early epochs). `cnn_gate=True` multiplies the convolutional features by a
learnable scalar that starts at 0 (as ReZero does for residual branches): training starts from the read-out of
the statistics, which a few hundred volumes suffice for, and the network's features enter as far as they help.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from zoo.lookup import lookup
from zoo.models.weights import resolve_pretrained


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, min(8, channels // 4)), channels)


NORMS = {"batch": nn.BatchNorm3d, "group": group_norm}


class BasicBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm=nn.BatchNorm3d):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), norm(cout))
        )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet3d(nn.Module):
    """3D ResNet with an anisotropic stem; `width` base channels, stages width x (1, 2, 4, 8)."""

    def __init__(self, blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2), input_channels: int = 1, width: int = 64,
                 pool: str = "avg", statistics: bool = False, norm: str = "batch", cnn_gate: bool = False):
        super().__init__()
        if int(input_channels) < 1 or int(width) < 1:
            raise ValueError(f"mri input_channels and width must be >= 1, got {input_channels}, {width}")
        if pool not in POOLS:
            raise ValueError(f"mri pool must be one of {POOLS}, got {pool!r}")
        norm_layer = lookup(NORMS, norm, "mri norm")
        if cnn_gate and not statistics:
            raise ValueError("mri cnn_gate needs statistics: true (the gate starts the network at the statistics' "
                             "read-out; without them the embedding would start at zero)")
        self.stem = nn.Sequential(
            nn.Conv3d(input_channels, width, kernel_size=(7, 7, 1), stride=(2, 2, 1), padding=(3, 3, 0), bias=False),
            norm_layer(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(3, 3, 1), stride=(2, 2, 1), padding=(1, 1, 0)),
        )
        stages, cin = [], width
        for i, n_blocks in enumerate(blocks_per_stage):
            cout = width * 2 ** i
            stages += [BasicBlock3d(cin if b == 0 else cout, cout, stride=1 if i == 0 or b > 0 else 2, norm=norm_layer)
                       for b in range(n_blocks)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool_type = pool
        self.statistics = TailStatistics(int(input_channels)) if statistics else None
        self.cnn_gate = nn.Parameter(torch.zeros(1)) if cnn_gate else None
        self.out_dim = cin * (2 if pool == "avgmax" else 1) + (self.statistics.out_dim if statistics else 0)

    def forward(self, x):
        features = self.stages(self.stem(x.float())).flatten(2)
        pooled = [features.mean(-1)] + ([features.amax(-1)] if self.pool_type == "avgmax" else [])
        if self.cnn_gate is not None:
            pooled = [self.cnn_gate * p for p in pooled]
        if self.statistics is not None:
            pooled.append(self.statistics(x))
        return torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]


POOLS = ("avg", "avgmax")
TAIL_FRACTIONS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25)
HOT_FRACTION = 0.01


class TailStatistics(nn.Module):
    """[B,C,X,Y,Z] -> [B, C * (len(TAIL_FRACTIONS) + 5)]: tail values, hot mean/std, hot spread per axis."""

    def __init__(self, channels: int):
        super().__init__()
        self.per_channel = len(TAIL_FRACTIONS) + 5
        self.out_dim = channels * self.per_channel
        self.norm = nn.BatchNorm1d(self.out_dim)

    def forward(self, x):
        b, c = x.shape[:2]
        shape = tuple(int(s) for s in x.shape[2:])  # fixed per model (data.modalities.mri.output_shape)
        flat = x.float().flatten(2)  # [B,C,N]
        n = math.prod(shape)
        ranks = [max(1, round(f * n)) - 1 for f in TAIL_FRACTIONS]
        top = torch.topk(flat, ranks[-1] + 1, dim=-1).values  # descending
        tail = top[..., ranks]
        k_hot = max(1, round(HOT_FRACTION * n))
        hot_values = top[..., :k_hot]
        threshold = top[..., k_hot - 1:k_hot]
        hot = (flat >= threshold).float()  # [B,C,N]
        weight = hot / hot.sum(-1, keepdim=True).clamp_min(1.0)
        spreads = []
        for axis, size in enumerate(shape):
            coord = torch.arange(size, dtype=flat.dtype, device=flat.device)
            view = [1] * len(shape)
            view[axis] = size
            coord = coord.view(view).expand(shape).reshape(1, 1, n)
            mean = (weight * coord).sum(-1, keepdim=True)
            spreads.append(((weight * (coord - mean) ** 2).sum(-1)).clamp_min(0).sqrt() / size)
        stats = torch.cat([tail, hot_values.mean(-1, keepdim=True), hot_values.std(-1, keepdim=True),
                           torch.stack(spreads, -1)], dim=-1)  # [B,C,per_channel]
        return self.norm(stats.reshape(b, c * self.per_channel))

VOLUME_BACKBONES = {
    "resnet3d_18": partial(ResNet3d, (2, 2, 2, 2)),
    "resnet3d_tiny": partial(ResNet3d, (1, 1)),
}


def build_volume_encoder(backbone: str = "resnet3d_18", input_channels: int = 1, pretrained: bool | str = False,
                         width: int = 64, pool: str = "avg", statistics: bool = False, norm: str = "batch",
                         cnn_gate: bool = False) -> ResNet3d:
    encoder = lookup(VOLUME_BACKBONES, backbone, "mri backbone")(
        input_channels=int(input_channels), width=int(width), pool=str(pool), statistics=bool(statistics),
        norm=str(norm), cnn_gate=bool(cnn_gate))
    resolve_pretrained(encoder, pretrained, backbone, hub_url=None)
    return encoder
