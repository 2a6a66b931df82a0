"""Where an export comes from: resolve `ENTRY_OR_CHECKPOINT`, load and validate the checkpoint, rebuild the model.

Checkpoints are read with `torch.load(weights_only=True)` (via `zoo.checkpoint.load_checkpoint`) only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from zoo import spec
from zoo.hashing import sha256_file

DEFAULT_CHECKPOINT_ROOT = Path("outputs")
CHECKPOINT_NAME = "best.pt"
TRAIN_HINT = "train one first: uv run python -m zoo.train <entry> (e.g. --recipe tiny for a smoke run)"


class SourceError(ValueError):
    """The requested checkpoint is missing, unreadable, or not the entry/version asked for."""


@dataclass(frozen=True)
class Target:
    """One export request: a checkpoint file and, when the user named an entry, the entry asked for."""

    checkpoint: Path
    requested_entry: str | None = None

    @property
    def label(self) -> str:
        return self.requested_entry or str(self.checkpoint)


@dataclass
class ExportSource:
    entry: Any  # zoo.registry.Entry
    checkpoint: Path
    checkpoint_sha256: str
    payload: dict[str, Any]
    model: nn.Module

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return str(self.payload.get("version", ""))

    @property
    def config(self) -> dict[str, Any]:
        return self.payload["config"]


def get_entry(name: str) -> Any:
    from zoo.registry import get_entry as registry_get

    try:
        return registry_get(name)
    except KeyError as exc:
        raise SourceError(str(exc.args[0]) if exc.args else f"unknown zoo entry {name!r}") from None


def resolve_targets(items: list[str], checkpoint_root: Path = DEFAULT_CHECKPOINT_ROOT) -> list[Target]:
    """Entry names -> checkpoint_root/<entry>/best.pt; paths stay paths; nothing -> every trained checkpoint."""
    if not items:
        found = sorted(checkpoint_root.glob(f"*/{CHECKPOINT_NAME}"))
        if not found:
            raise SourceError(f"no trained checkpoint under {checkpoint_root}/*/{CHECKPOINT_NAME}; {TRAIN_HINT}")
        return [Target(path) for path in found]
    targets = []
    for item in items:
        path = Path(item)
        if path.suffix == ".pt" or path.is_file() or os.sep in item:
            targets.append(Target(path))
        else:
            get_entry(item)  # unknown names fail here, before any work
            targets.append(Target(checkpoint_root / item / CHECKPOINT_NAME, requested_entry=item))
    return targets


def load_source(target: Target, version: str | None = None) -> ExportSource:
    """Load `target`'s checkpoint, check it is the entry (and version) asked for, rebuild the model in eval mode."""
    from zoo.checkpoint import load_checkpoint
    from zoo.models import build_model_from_config

    path = target.checkpoint
    if not path.is_file():
        asked = f" for entry {target.requested_entry!r}" if target.requested_entry else ""
        raise SourceError(f"checkpoint {path}{asked} does not exist; {TRAIN_HINT}")
    try:
        payload = load_checkpoint(path)
    except (ValueError, FileNotFoundError) as exc:
        raise SourceError(str(exc)) from exc
    except Exception as exc:  # anything torch.load raises on a truncated or foreign file
        raise SourceError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                          "delete it and retrain") from exc
    name = str(payload["entry"])
    if target.requested_entry is not None and name != target.requested_entry:
        raise SourceError(f"checkpoint {path} belongs to entry {name!r}, not {target.requested_entry!r} as asked; "
                          f"pass the right checkpoint or retrain {target.requested_entry!r}")
    entry = get_entry(name)
    have = str(payload.get("version", ""))
    want = str(version) if version is not None else str(entry.version)
    if have != want:
        asked = "asked with --version" if version is not None else "in the registry"
        raise SourceError(f"checkpoint {path} is version {have!r} of entry {name!r}, but version {want!r} is {asked}; "
                          f"retrain {name!r} (uv run python -m zoo.train {name}) or pass --version {have}")
    for key in ("state_dict", "config"):
        if not isinstance(payload.get(key), dict):
            raise SourceError(f"checkpoint {path}: '{key}' is missing or not a dict; it was not written by zoo.train")
    try:
        model = build_model_from_config(payload["config"]["model"])
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise SourceError(f"checkpoint {path}: its weights do not fit the model its config describes "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]}); retrain {name!r}") from exc
    model.eval()
    if tuple(model.modalities) != tuple(m for m in spec.MODALITIES if m in entry.modalities):
        raise SourceError(f"checkpoint {path}: model modalities {model.modalities} differ from entry {name!r}'s "
                          f"{tuple(entry.modalities)}; retrain {name!r}")
    return ExportSource(entry=entry, checkpoint=path, checkpoint_sha256=sha256_file(path), payload=payload,
                        model=model)
