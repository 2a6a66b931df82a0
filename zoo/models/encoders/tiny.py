"""`cnn_tiny`: a 3-conv encoder for tests and smoke runs (32-dim features)."""
from __future__ import annotations

from torch import nn

from zoo.models.encoders.pooling import Flatten
from zoo.models.encoders.registry import EncoderRecord


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def build(record: EncoderRecord, input_size: int | None = None) -> tuple[nn.Module, nn.Module]:
    trunk = nn.Sequential(*_block(3, 8), *_block(8, 16), *_block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return trunk, Flatten()
