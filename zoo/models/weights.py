"""Loading pretrained weights from local files only (never starts a download)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from zoo.hashing import sha256_file  # noqa: F401 - one implementation; patch_encoders imports it from here


def torch_hub_checkpoint(url: str) -> Path:
    """Where torchvision would cache the weights at `url` (the local torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file: a plain state_dict or one under 'state_dict' / 'model'."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist; "
                                "give an existing file or set pretrained: false")
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


# --- patch encoders: one weights file per encoder, strictly loaded -----------------------------------------------

RANDOM = "random"  # `weights: random`: explicit random init (warned once per encoder)
SAFETENSORS_SUFFIXES = (".safetensors",)
_warned_random: set[str] = set()


def read_weights_file(path: str | os.PathLike, encoder: str) -> dict[str, torch.Tensor]:
    """A state_dict from `.safetensors` (safetensors.torch.load_file) or `.bin/.pt/.pth` (torch.load,
    weights_only=True; a plain state_dict or one under 'state_dict' / 'model')."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} for encoder {encoder!r} does not exist; give an existing "
                                f"file in model.modalities.pathology.weights (or weights: random)")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"cannot read weights file {path} for encoder {encoder!r} as safetensors: {err}") \
                from err
        return {k.removeprefix("module."): v for k, v in state.items()}
    return read_state_dict(path)


def _first(items: list, n: int = 5) -> str:
    return f"{items[:n]}{'...' if len(items) > n else ''}"


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], *, encoder: str, source: str,
                     drop_prefixes: tuple[str, ...] = (), hint: str = "") -> dict[str, torch.Tensor]:
    """`state` minus `drop_prefixes`, after checking it has exactly `module`'s keys and shapes (strict).

    Works on meta modules and meta state_dicts (no memory). BatchNorm's `num_batches_tracked` may be absent
    (torchvision's older ImageNet files lack it; load_state_dict fills it in)."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"pretrained weights {source} do not match encoder {encoder!r}: "
            f"{len(missing)} missing {_first(missing)}, {len(unexpected)} unexpected {_first(unexpected)}, "
            f"{len(shapes)} shape mismatches {_first(shapes, 3)}. Give the {encoder} checkpoint"
            f"{' (' + hint + ')' if hint else ''}, pick the backbone that matches this file, "
            f"or set weights: random for an explicitly random encoder")
    return state


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], *, assign: bool) -> None:
    """load_state_dict(strict) after check_state_dict; `assign=True` adopts the file's tensors (the module was
    built on the meta device: no random init, no second copy) and casts floating tensors to float32."""
    module.load_state_dict(state, strict=True, assign=assign)
    if assign:
        module.float()
        left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left and not all(t.is_meta for t in state.values()):
            raise RuntimeError(f"tensors {left[:5]} were not in the weights file and stayed on the meta device")


def warn_random_once(encoder: str) -> None:
    if encoder not in _warned_random:
        _warned_random.add(encoder)
        warnings.warn(f"patch encoder {encoder!r}: weights: random, so its weights are randomly initialised "
                      f"(no pretrained features)", UserWarning, stacklevel=3)
