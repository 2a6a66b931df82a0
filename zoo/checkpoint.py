"""Checkpoint I/O: atomic save, `torch.load(weights_only=True)`-safe payloads, RNG state capture/restore.

Payload (docs/ARCHITECTURE.md): entry, version, config (resolved), class_names, state_dict, preprocessing, epoch,
metrics; last.pt adds optimizer / scheduler / scaler / RNG state and the trainer's progress for --resume.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.atomic import atomic_write

CHECKPOINT_FORMAT = 1


def to_safe(obj: Any) -> Any:
    """Convert to types `torch.load(weights_only=True)` accepts: tensors, str, numbers, bool, None, lists, dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, int) else k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"checkpoint payload holds a {type(obj).__name__}, which weights_only loading rejects")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` (converted with `to_safe`) to `path`."""
    safe = to_safe({"format": CHECKPOINT_FORMAT, **payload})
    return atomic_write(path, lambda tmp: torch.save(safe, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` with weights_only=True; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first (python -m zoo.train <entry>)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt / foreign pickle
        raise ValueError(f"checkpoint {path} could not be loaded safely ({exc}); delete it and retrain") from exc
    missing = [k for k in ("entry", "config", "state_dict") if k not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}; it was not written by zoo.train")
    return payload


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as weights_only-safe values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
