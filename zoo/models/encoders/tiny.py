"""The project's own CNNs: `cnn_tiny` (3 convs, 32-d, tests and smoke runs) and `cnn_ssl` (4 stages, 128-d, the
self-supervised encoder of zoo.training.pretrain)."""
from __future__ import annotations

from torch import nn

from zoo.models.encoders.pooling import Flatten
from zoo.models.encoders.registry import EncoderRecord


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


WIDTHS = {"cnn_tiny": (8, 16, 32), "cnn_ssl": (16, 32, 64, 128)}


def build(record: EncoderRecord, input_size: int | None = None) -> tuple[nn.Module, nn.Module]:
    widths = WIDTHS[record.architecture]
    blocks = [layer for cin, cout in zip((3, *widths[:-1]), widths) for layer in _block(cin, cout)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), Flatten()
