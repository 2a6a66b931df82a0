"""Loading pretrained weights from local files only (never starts a download)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def torch_hub_checkpoint(url: str) -> Path:
    """Where torchvision would cache the weights at `url` (the local torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file: a plain state_dict or one under 'state_dict' / 'model'."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist; give an existing file or set pretrained: false")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"cannot read pretrained checkpoint {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained checkpoint {path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_trunk_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str, drop_prefixes=("fc.",)) -> None:
    """Load `state` into `module` strictly, ignoring classifier keys; errors name the source file."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights {source} do not match the backbone: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


def resolve_pretrained(module: nn.Module, pretrained: bool | str | None, backbone: str, hub_url: str | None) -> None:
    """Apply `pretrained` to `module`: False/None = random init, True = torchvision weights from the local hub
    cache (must already be there), a path = a local state_dict."""
    if pretrained is None or pretrained is False:
        return
    if pretrained is True:
        if hub_url is None:
            raise ValueError(
                f"backbone {backbone!r} has no published pretrained weights; set pretrained: false "
                f"or pretrained: /path/to/state_dict.pt"
            )
        path = torch_hub_checkpoint(hub_url)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained: true for {backbone!r} needs the torchvision weights file {path} "
                f"(downloads are never started). Copy {os.path.basename(hub_url)} (from {hub_url}) there, "
                f"or set pretrained: /path/to/checkpoint.pt, or pretrained: false"
            )
        load_trunk_weights(module, read_state_dict(path), str(path))
        return
    load_trunk_weights(module, read_state_dict(pretrained), str(pretrained))
