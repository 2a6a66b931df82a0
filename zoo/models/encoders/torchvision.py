"""torchvision ResNets: the classifier removed; `truncate_after: layer3` drops layer4 (CLAM's resnet50_trunc)."""
from __future__ import annotations

from torch import nn

from zoo.models.encoders.pooling import Flatten
from zoo.models.encoders.registry import EncoderRecord

_CUT = {"layer3": ("layer4",), "layer4": ()}


def build(record: EncoderRecord, input_size: int | None = None) -> tuple[nn.Module, nn.Module]:
    import torchvision  # slow to import: only when one of its backbones is used

    net = getattr(torchvision.models, record.architecture)(weights=None)
    net.fc = nn.Identity()
    for name in _CUT[record.kwargs.get("truncate_after", "layer4")]:
        setattr(net, name, nn.Identity())
    return net, Flatten()
