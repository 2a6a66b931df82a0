"""Where an export comes from: resolve `ENTRY_OR_CHECKPOINT`, load and validate the checkpoint, rebuild the model.

Checkpoints are read and rebuilt by `zoo.checkpoint.load_model` (`torch.load(weights_only=True)` only).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from zoo.checkpoint import TRAIN_HINT, CheckpointError
from zoo.hashing import sha256_file
from zoo.spec import BEST_CHECKPOINT

DEFAULT_CHECKPOINT_ROOT = Path("outputs")
CHECKPOINT_NAME = BEST_CHECKPOINT


class SourceError(CheckpointError):
    """The requested checkpoint is missing, unreadable, or not the entry/version asked for (a CheckpointError)."""


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
    """Load `target`'s checkpoint, check it is the entry (and version) asked for, rebuild the model in eval mode
    (`zoo.checkpoint.load_model`, the checkpoint format's one owner)."""
    from zoo.checkpoint import load_model

    path = target.checkpoint
    try:
        model, payload = load_model(path, entry=target.requested_entry, version=version)
    except CheckpointError as exc:
        raise SourceError(str(exc)) from exc
    entry = get_entry(str(payload["entry"]))
    return ExportSource(entry=entry, checkpoint=path, checkpoint_sha256=sha256_file(path), payload=payload,
                        model=model)
