"""The export manifest (`<export dir>/manifest.json`): what each part file is, its tensors, and how to feed it.

Schema (version 1) is documented in README.md (Export, `manifest.json`). `load_manifest` validates it and the
sha256 of every file for downstream users (Triton repository builder, clients, benchmarks).
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zoo import spec
from zoo.hashing import sha256_file

if TYPE_CHECKING:  # torch-free at import: triton_repo reads ManifestError and MANIFEST_NAME from here
    from export.geometry import Geometry
    from export.signature import Signature

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
FORMATS = ("onnx", "torchscript")
PRECISIONS = ("fp32", "fp16", "int8")
REQUIRED_KEYS = ("schema_version", "format", "entry", "version", "modalities", "class_names", "precision",
                 "parts", "preprocessing", "source_checkpoint", "parity")


class ManifestError(ValueError):
    """manifest.json is missing, malformed, or does not match the files next to it."""


def preprocessing_constants(payload: Mapping[str, Any], model: Any, modalities: tuple[str, ...]) -> dict[str, Any]:
    """What a client must do to raw data before the graphs see it, per modality the model uses: the checkpoint's
    preprocessing record (`zoo.checkpoint.preprocessing_record`, written by the trainer), copied."""
    from zoo.checkpoint import preprocessing_record

    recorded = dict(payload.get("preprocessing") or {})
    if int(payload.get("format", 1)) < 2:
        # Checkpoints written before the trainer stored the complete record (checkpoint format 1, entry version
        # 1.1) hold only part of it: rebuild it from their config and rebuilt model, keeping the fitted clinical
        # preprocessor. The only place export derives preprocessing from a config.
        recorded = preprocessing_record(payload["config"], model, clinical=recorded.get(spec.KEY_CLINICAL))
    return {m: recorded.get(m) for m in modalities}


def build_manifest(*, fmt: str, entry: Any, version: str, class_names: list[str], geometry: Geometry,
                   parts: dict[str, dict[str, Any]], preprocessing: dict[str, Any], checkpoint: Path,
                   checkpoint_sha256: str, opset: int | None, precision: str, parity: dict[str, Any],
                   tolerance: float, quantization: dict[str, Any] | None = None) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    return {
        "schema_version": SCHEMA_VERSION,
        "format": fmt,
        "entry": entry.name,
        "version": version,
        "fusion": getattr(entry, "fusion", None),
        "modalities": list(geometry.modalities),
        "class_names": list(class_names),
        "num_classes": geometry.num_classes,
        "precision": precision,
        **({"quantization": quantization} if quantization else {}),
        "opset": opset,
        "dynamic_axes": {"num_patches": "patches of one slide (bag size), >= 1", "batch": "patients, >= 1"},
        "parts": parts,
        "preprocessing": preprocessing,
        "source_checkpoint": {"path": os.fspath(checkpoint), "sha256": checkpoint_sha256},
        "parity": {**parity, "tolerance": tolerance},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
    }


def part_record(file: str, files: dict[str, str], signature: Signature, exporter: str) -> dict[str, Any]:
    """One part's manifest record; `files` maps every file of the part (graph, external data) to its sha256."""
    return {"file": file, "sha256": files[file], "files": files, "exporter": exporter, **signature.to_json()}


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> Path:
    from zoo.atomic import atomic_write_json

    return atomic_write_json(directory / MANIFEST_NAME, manifest)


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ManifestError(f"{where}: {message}; re-export with python -m export.onnx <entry> --overwrite")


def _check_tensor(t: Any, where: str) -> None:
    from export.signature import TORCH_DTYPES

    _require(isinstance(t, dict) and {"name", "dtype", "shape"} <= set(t), where,
             "tensor needs name, dtype and shape")
    _require(t["dtype"] in TORCH_DTYPES, where, f"dtype {t['dtype']!r} is not one of {sorted(TORCH_DTYPES)}")
    _require(isinstance(t["shape"], list) and all(
        (isinstance(d, int) and d >= -1) or (isinstance(d, str) and d) for d in t["shape"]), where,
        f"shape {t['shape']!r} must list ints or axis names")


def load_manifest(path: str | os.PathLike, verify_files: bool = True, require_parity: bool = True) -> dict[str, Any]:
    """Read and validate `<dir>/manifest.json` (a directory or the file itself); returns the manifest dict.

    Checks the schema, that every part file exists with the recorded sha256 (`verify_files`), and that the
    export passed its parity check (`require_parity`).
    """
    from export.parts import parts_for

    path = Path(path)
    file = path / MANIFEST_NAME if path.is_dir() else path
    where = str(file)
    if not file.is_file():
        raise ManifestError(f"{where}: no export manifest; export the entry first (python -m export.onnx <entry>)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where}: unreadable JSON ({exc}); re-export the entry") from exc
    _require(isinstance(manifest, dict), where, "top level must be an object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    _require(not missing, where, f"missing keys {missing}")
    _require(manifest["schema_version"] == SCHEMA_VERSION, where,
             f"schema_version {manifest['schema_version']!r} is not {SCHEMA_VERSION}")
    _require(manifest["format"] in FORMATS, where, f"format {manifest['format']!r} not in {FORMATS}")
    _require(manifest["precision"] in PRECISIONS, where, f"precision {manifest['precision']!r} not in {PRECISIONS}")
    modalities = manifest["modalities"]
    _require(isinstance(modalities, list) and modalities and all(m in spec.MODALITIES for m in modalities)
             and modalities == [m for m in spec.MODALITIES if m in modalities], where,
             f"modalities {modalities!r} must be a non-empty subset of {list(spec.MODALITIES)} in that order")
    parts = manifest["parts"]
    expected = [p.name for p in parts_for(modalities)]
    _require(isinstance(parts, dict) and sorted(parts) == sorted(expected), where,
             f"parts {sorted(parts) if isinstance(parts, dict) else parts!r} are not {expected} "
             f"(the parts modalities {modalities} need)")
    for name, part in parts.items():
        at = f"{where}: part {name!r}"
        _require(isinstance(part, dict) and {"file", "sha256", "files", "inputs", "outputs"} <= set(part), at,
                 "needs file, sha256, files, inputs, outputs")
        _require(part["files"].get(part["file"]) == part["sha256"], at, "sha256 differs from files[file]")
        for t in (*part["inputs"], *part["outputs"]):
            _check_tensor(t, f"{at} tensor {t.get('name') if isinstance(t, dict) else t!r}")
        for rel, digest in part["files"].items():
            _require(Path(rel).name == rel, at, f"file name {rel!r} must be a plain name inside the export dir")
            if verify_files:
                target = file.parent / rel
                _require(target.is_file(), at, f"file {target} is missing")
                actual = sha256_file(target)
                _require(actual == digest, at, f"file {target} has sha256 {actual}, manifest says {digest} "
                                               "(changed after export)")
    if require_parity:
        parity = manifest["parity"]
        _require(isinstance(parity, dict) and parity.get("passed") is True, where,
                 f"parity check did not pass (see {file.parent / 'parity_report.md'}); do not serve this export")
    return manifest


def part_signature(manifest: Mapping[str, Any], part: str) -> Signature:
    from export.signature import Signature

    return Signature.from_json(manifest["parts"][part])
