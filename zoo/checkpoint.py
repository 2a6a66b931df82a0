"""The checkpoint format's one owner: payloads built (`checkpoint_payload`), saved atomically, loaded
`torch.load(weights_only=True)`-safe and rebuilt into models (`load_model`); RNG state capture/restore.

Payload (docs/ARCHITECTURE.md): entry, version, config (resolved), class_names, state_dict, preprocessing, epoch,
metrics; last.pt adds optimizer / scheduler / scaler / RNG state and the trainer's progress for --resume.
`preprocessing` is `preprocessing_record`: built once where training knows it, copied by export into the manifest.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from zoo import spec
from zoo.atomic import atomic_write

# 1: the first format. 2: `preprocessing` holds the complete record of `preprocessing_record` for every modality
# of the model (format-1 checkpoints recorded the clinical preprocessor and, from training, part of the rest).
CHECKPOINT_FORMAT = 2
TRAIN_HINT = "train one first: uv run python -m zoo.train <entry> (e.g. --recipe tiny for a smoke run)"
# What the patch encoder graph does to raw patches (the encoder's preprocessing() may state its own).
PATCH_ENCODER_APPLIED = "inside patch_encoder: uint8/255, resize to input_size, (x-mean)/std"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not the entry/version asked for, or does not fit the model its config
    describes; every message names the file and says what to do."""


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
        raise CheckpointError(f"checkpoint {path} could not be loaded safely ({exc}); delete it and retrain") from exc
    missing = [k for k in ("entry", "config", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by zoo.train")
    return payload


def plain(obj: Any) -> Any:
    """Config -> plain dict/list/scalars (safe for YAML and weights_only checkpoints)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def preprocessing_record(config: Mapping[str, Any], model: torch.nn.Module, *,
                         clinical: Mapping[str, Any] | None = None,
                         feature_standardization: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a client must do to raw data before the model sees it, per modality of `model`: the record a checkpoint
    stores and export copies into its manifest (README.md, Export, `manifest.json` lists the keys).

    pathology: the tiling (patch_size, level, tissue_threshold, max_patches of `config`, and target_magnification /
    target_mpp / assume_magnification when tiled at a magnification) plus the patch encoder's own
    `preprocessing()` (backbone, input_size, normalisation); mri: sequences, target_spacing, output_shape;
    clinical: `clinical` (the fitted `ClinicalPreprocessor.to_dict()`, None when there is none).
    """
    data = config["data"]["modalities"]
    modalities = tuple(getattr(model, "modalities", ()))
    record: dict[str, Any] = {}
    if spec.KEY_PATHOLOGY in modalities:
        tiling = data[spec.KEY_PATHOLOGY]
        if getattr(model, "patch_encoder", None) is not None:
            encoder = dict(model.patch_encoder.preprocessing())
        else:  # trained on stored features (data.modalities.pathology.features_dir): no patch encoder in the model
            encoder = {"backbone": None, "stored_features": {
                "features_dir": tiling.get("features_dir"), "encoder": tiling.get("features_encoder"),
                "feature_dim": int(config["model"]["modalities"][spec.KEY_PATHOLOGY].get("feature_dim", 0))}}
        normalisation = {**encoder.get("normalisation", {})}
        normalisation.setdefault("applied", PATCH_ENCODER_APPLIED)
        record[spec.KEY_PATHOLOGY] = {
            "patch_size": int(tiling["patch_size"]), "level": int(tiling["level"]),
            "max_patches": int(tiling["max_patches"]), "tissue_threshold": float(tiling["tissue_threshold"]),
            **{k: float(tiling[k]) for k in spec.TILING_RESOLUTION_KEYS if tiling.get(k) is not None},
            **encoder, "normalisation": normalisation,
        }
    if spec.KEY_MRI in modalities:
        mri = data[spec.KEY_MRI]
        record[spec.KEY_MRI] = {"sequences": [str(v) for v in mri["sequences"]],
                                "target_spacing": [float(v) for v in mri["target_spacing"]],
                                "output_shape": [int(v) for v in mri["output_shape"]]}
    if spec.KEY_CLINICAL in modalities:
        record[spec.KEY_CLINICAL] = dict(clinical) if clinical is not None else None
    record["feature_standardization"] = dict(feature_standardization) if feature_standardization else None
    return record


def checkpoint_payload(entry: Any, config: Mapping[str, Any], model: torch.nn.Module,
                       preprocessing: Mapping[str, Any] | None = None, epoch: int = 0,
                       metrics: Mapping[str, Any] | None = None, *, version: str | None = None,
                       class_names: tuple[str, ...] | list[str] = spec.CLASS_NAMES, **extra: Any) -> dict[str, Any]:
    """The payload of best.pt / last.pt (`save_checkpoint` writes it): `entry` is a registry Entry or its name
    (then `version` gives the version); `preprocessing` defaults to `preprocessing_record(config, model)`.
    `extra` adds keys (last.pt: optimizer, scheduler, scaler, rng, trainer)."""
    return {
        "entry": str(getattr(entry, "name", entry)),
        "version": str(version if version is not None else getattr(entry, "version", "")),
        "config": plain(config),
        "class_names": list(class_names),
        "state_dict": model.state_dict(),
        "preprocessing": dict(preprocessing) if preprocessing is not None else preprocessing_record(config, model),
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        **extra,
    }


def load_model(path: str | os.PathLike, entry: Any = None, version: str | None = None,
               map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint holds, in eval mode: (model, payload).

    Loaded weights_only; its entry must be `entry` (a name or Entry) when given, and its version `version` or, by
    default, the registry's. The model is built from the checkpoint's config without pretrained weights (the
    checkpoint holds every weight: a pretrained file it was trained from may be gone) and loaded strictly.
    Raises `CheckpointError` naming the file.
    """
    from zoo.models import build_model_from_config
    from zoo.registry import get_entry

    path = Path(path)
    asked = getattr(entry, "name", entry)
    if not path.is_file():
        where = f" for entry {asked!r}" if asked is not None else ""
        raise CheckpointError(f"checkpoint {path}{where} does not exist; {TRAIN_HINT}")
    try:
        payload = load_checkpoint(path, map_location=map_location)
    except (ValueError, FileNotFoundError) as exc:
        raise CheckpointError(str(exc)) from exc
    except Exception as exc:  # anything torch.load raises on a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                              "delete it and retrain") from exc
    name = str(payload["entry"])
    if asked is not None and name != asked:
        raise CheckpointError(f"checkpoint {path} belongs to entry {name!r}, not {asked!r} as asked; "
                              f"pass the right checkpoint or retrain {asked!r}")
    try:
        registered = get_entry(name)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc.args[0] if exc.args else f'unknown zoo entry {name!r}'}") \
            from None
    have = str(payload.get("version", ""))
    want = str(version) if version is not None else str(registered.version)
    if have != want:
        where = "asked with --version" if version is not None else "in the registry"
        raise CheckpointError(f"checkpoint {path} is version {have!r} of entry {name!r}, but version {want!r} is "
                              f"{where}; retrain {name!r} (uv run python -m zoo.train {name}) or pass --version {have} "
                              "(python -m export.onnx, python -m zoo.viz, python -m zoo.viewer)")
    for key in ("state_dict", "config"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint {path}: '{key}' is missing or not a dict; "
                                  "it was not written by zoo.train")
    try:
        model = build_model_from_config(_with_legacy_defaults(payload["config"]["model"]), load_pretrained=False)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model its config describes "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]}); retrain {name!r}") from exc
    model.to(map_location).eval()
    if tuple(model.modalities) != tuple(m for m in spec.MODALITIES if m in registered.modalities):
        raise CheckpointError(f"checkpoint {path}: model modalities {model.modalities} differ from entry {name!r}'s "
                              f"{tuple(registered.modalities)}; retrain {name!r}")
    return model, payload


def _with_legacy_defaults(model_config: dict[str, Any]) -> dict[str, Any]:
    """Options added after a checkpoint was written, set to what its model did then: attention fusion summed its
    weighted tokens before `attention_combine` existed (entry versions up to 1.4)."""
    fusion = dict(model_config.get("fusion") or {})
    fusion.setdefault("attention_combine", "sum")
    return {**model_config, "fusion": fusion}


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
