"""2D patch encoders: uint8 or float patches [N,3,H,W] -> features [N,D].

The encoder is one record of the registry (`zoo.models.encoders.registry`): its architecture, embedding dim and
preprocessing. Preprocessing lives inside the graph (so exported/served encoders take raw uint8 patches):
uint8 -> float/255 -> resize to `input_size / crop_pct` (the record's interpolation, antialias off) -> centre
crop `input_size` (when crop_pct < 1) -> (x - mean) / std with the record's mean/std. Resizing before
normalising is exactly equivalent (both are per-pixel affine maps) and cheaper when downsampling.

Weights (see the registry's docstring): `weights` = a file (strict), "random" (warned), False (random and
silent: the caller loads every weight, e.g. from a training checkpoint), or None = the env var / default local
path, else foundation models are an error and torchvision backbones follow `pretrained`. Never a download.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.encoders import ENCODERS, EncoderRecord, adapt_state, build_trunk, get_record
from zoo.models.weights import (
    RANDOM,
    check_state_dict,
    load_checked,
    read_weights_file,
    sha256_file,
    torch_hub_checkpoint,
    warn_random_once,
)

PROVENANCE_FILE = "provenance.json"  # next to self-supervised weights (zoo.training.pretrain writes it)
PATCH_BACKBONES: dict[str, EncoderRecord] = ENCODERS  # name -> record (kept name: configs call them backbones)


@dataclass(frozen=True)
class WeightsChoice:
    kind: str                 # "file" | "random" (warned) | "none" (random, silent)
    path: Path | None = None
    how: str = ""             # where the path came from, for messages


def _torchvision_cache(record: EncoderRecord) -> tuple[Path, str] | None:
    if not record.weights_url:
        return None
    return torch_hub_checkpoint(record.weights_url), record.weights_url


def find_weights(record: EncoderRecord) -> tuple[Path | None, str]:
    """Where this encoder's weights would be read from without a `weights` key (never a download):
    (path, how) or (None, what was looked at)."""
    env = os.environ.get(record.weights_env)
    if env:
        return Path(env).expanduser(), f"${record.weights_env}"
    for path in record.default_weights_paths():
        if path.is_file():
            return path, "default path"
    cached = _torchvision_cache(record)
    if cached and cached[0].is_file():
        return cached[0], "torch hub cache"
    looked = [f"${record.weights_env}", *map(str, record.default_weights_paths())]
    if cached:
        looked.append(str(cached[0]))
    return None, "not found: " + ", ".join(looked)


def _no_weights_error(record: EncoderRecord) -> FileNotFoundError:
    defaults = " or ".join(map(str, record.default_weights_paths()))
    if record.self_supervised:
        return FileNotFoundError(
            f"encoder {record.name!r} is pretrained on each cohort's own patches and no weights file was given: "
            f"training (python -m zoo.train) makes it when absent; or run python -m zoo.pretrain --data-dir <cohort> "
            f"and set model.modalities.pathology.weights to the model.safetensors it prints, or {record.weights_env}"
            f"=/path; or weights: random for an explicitly random encoder")
    return FileNotFoundError(
        f"encoder {record.name!r} ({record.architecture}) is a pretrained foundation model and no weights file "
        f"was given or found: set model.modalities.pathology.weights: /path/to/{record.name} weights "
        f"(.bin/.pt/.pth/.safetensors state_dict; {record.weights_hint or 'see its model card'}), or "
        f"{record.weights_env}=/path, or put the file at {defaults}; or set weights: random for an explicitly "
        f"random encoder. Nothing is downloaded")


def resolve_weights(record: EncoderRecord, pretrained: bool | str | None, weights: str | bool | None) -> WeightsChoice:
    """Which weights `PatchEncoder(record.name, pretrained=..., weights=...)` loads; errors say what to do."""
    if weights is False:
        return WeightsChoice("none")
    if isinstance(weights, str) and weights.strip():
        if weights.strip() == RANDOM:
            return WeightsChoice("random")
        return WeightsChoice("file", Path(weights).expanduser(), "weights")
    if weights not in (None, ""):
        raise ValueError(f"encoder {record.name!r}: weights must be a file path, 'random' or null, got {weights!r}")
    if isinstance(pretrained, str) and pretrained.strip():
        return WeightsChoice("file", Path(pretrained).expanduser(), "pretrained")
    if not record.requires_weights and not pretrained:
        return WeightsChoice("none")  # torchvision / cnn_tiny with pretrained: false, as before
    env = os.environ.get(record.weights_env)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{record.weights_env}={env} names no file: the weights of encoder "
                                    f"{record.name!r} ({record.weights_hint or record.architecture}) are not there; "
                                    f"fix or unset {record.weights_env}")
        return WeightsChoice("file", path, f"${record.weights_env}")
    for path in record.default_weights_paths():
        if path.is_file():
            return WeightsChoice("file", path, "default path")
    if record.requires_weights:
        raise _no_weights_error(record)
    cached = _torchvision_cache(record)
    if cached is None:
        raise ValueError(f"backbone {record.name!r} has no published pretrained weights; set pretrained: false "
                         f"or pretrained: /path/to/state_dict.pt")
    path, url = cached
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained: true for {record.name!r} needs the torchvision weights file {path} "
            f"(downloads are never started). Copy {os.path.basename(url)} (from {url}) there, "
            f"or set pretrained: /path/to/checkpoint.pt (or {record.weights_env}), or pretrained: false")
    return WeightsChoice("file", path, "torch hub cache")


def read_provenance(weights_path: Path) -> dict | None:
    """The provenance.json written next to a weights file by zoo.training.pretrain (cohort, tiling, recipe, seed,
    sha256), when it is there and describes this very file; else None."""
    path = Path(weights_path).with_name(PROVENANCE_FILE)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("weights_sha256") != sha256_file(weights_path):
        return None
    return record


class PatchEncoder(nn.Module):
    """Raw patches in, features out; `freeze=True` fixes the weights and keeps BatchNorm in eval mode."""

    def __init__(self, backbone: str = "resnet50", input_channels: int = 3, pretrained: bool | str = False,
                 freeze: bool = False, input_size: int | None = None, weights: str | bool | None = None):
        super().__init__()
        if input_channels != 3:
            raise ValueError(f"pathology input_channels must be 3 (RGB patches), got {input_channels}")
        record = get_record(backbone)
        input_size = record.input_size if input_size is None else int(input_size)
        if input_size < 16:
            raise ValueError(f"pathology input_size must be >= 16 pixels, got {input_size}")
        if record.patch_size and input_size % record.patch_size:
            raise ValueError(f"pathology input_size {input_size} must be a multiple of encoder {backbone!r}'s ViT "
                             f"patch size {record.patch_size} (its native size is {record.input_size})")
        self.record = record
        self.backbone_name = backbone
        choice = resolve_weights(record, pretrained, weights)
        self.weights_sha256: str | None = None
        self.weights_provenance: dict | None = None
        self.weights_source = choice.how if choice.kind == "file" else choice.kind
        if choice.kind == "file":
            state = read_weights_file(choice.path, backbone)
            with torch.device("meta"):  # no random init and no second copy: the file's tensors are adopted
                self.trunk, self.pool = build_trunk(record, input_size)
            state = check_state_dict(self.trunk, adapt_state(record, self.trunk, state), encoder=backbone,
                                     source=str(choice.path), drop_prefixes=record.drop_prefixes,
                                     hint=record.weights_hint)
            load_checked(self.trunk, state, assign=True)
            self.weights_sha256 = sha256_file(choice.path)
            self.weights_provenance = read_provenance(choice.path)
        else:
            self.trunk, self.pool = build_trunk(record, input_size)
            if choice.kind == "random":
                warn_random_once(backbone)
        self.out_dim = record.embedding_dim
        self.input_size = input_size
        self.resize_size = int(round(input_size / record.crop_pct))
        self.interpolation = record.interpolation
        self.frozen = bool(freeze)
        self.normalisation = (tuple(record.mean), tuple(record.std))  # exact values, for records
        self.register_buffer("mean", torch.tensor(record.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(record.std).view(1, 3, 1, 1), persistent=False)
        if self.frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    def preprocessing(self) -> dict:
        """What the graph does to raw uint8 patches, as the record that travels checkpoint -> manifest -> Triton."""
        return {"backbone": self.backbone_name, "encoder": self.backbone_name,
                "architecture": self.record.architecture, "embedding_dim": self.out_dim,
                "input_size": self.input_size, "resize_size": self.resize_size, "crop_pct": self.record.crop_pct,
                "interpolation": self.interpolation, "antialias": False,
                "normalisation": {"mean": list(self.normalisation[0]), "std": list(self.normalisation[1])},
                "pooling": self.record.pooling, "weights_sha256": self.weights_sha256,
                "weights_provenance": self.weights_provenance}

    def train(self, mode: bool = True) -> "PatchEncoder":
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.float() / 255.0 if patches.dtype == torch.uint8 else patches.float()
        size = self.resize_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode=self.interpolation, align_corners=False, antialias=False)
        if size != self.input_size:
            top = (size - self.input_size) // 2
            x = x[..., top:top + self.input_size, top:top + self.input_size]
        return (x - self.mean) / self.std

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(self.preprocess(patches)))
