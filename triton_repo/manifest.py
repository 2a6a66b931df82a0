"""A read-only view of an export manifest, in the terms the Triton layer needs.

The manifest is written by `export`. Building a repository (verify_files=True) reads it with the exporter's own
validator `export.manifest.load_manifest`; clients read the repository's copy, checked at build time, as plain
JSON (no torch import). Tensor names always come from the manifest; part names, `MANIFEST_NAME` and
`ManifestError` are the exporter's (`export.names`, `export.manifest`: both torch-free at import).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import MANIFEST_NAME, ManifestError, load_manifest
from export.names import (  # noqa: F401 - the served part names, re-exported for the Triton layer
    CLINICAL_ENCODER,
    FUSION_HEAD,
    MIL_POOL,
    MODALITY_ENCODER,
    MRI_ENCODER,
    PATCH_ENCODER,
    WHOLE_MODEL,
)
from zoo import spec
from zoo.hashing import sha256_file

_DTYPES: dict[str, np.dtype] = {
    "bool": np.dtype(bool), "uint8": np.dtype(np.uint8), "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16), "int32": np.dtype(np.int32), "int64": np.dtype(np.int64),
    "float16": np.dtype(np.float16), "float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
}
_DTYPE_ALIASES = {"float": "float32", "double": "float64", "fp32": "float32", "fp16": "float16", "half": "float16",
                  "long": "int64", "int": "int32", "boolean": "bool", "tensor(float)": "float32",
                  "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class ServedTensor:
    """A part's tensor as Triton serves it: numpy dtype, -1 for a dynamic axis (export.signature.ServedTensor is
    the exporter's: dtype name, dynamic axes as symbols)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 marks a dynamic axis

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class PartSpec:
    name: str
    path: Path
    sha256: str
    inputs: tuple[ServedTensor, ...]
    outputs: tuple[ServedTensor, ...]
    files: tuple[tuple[str, str], ...] = ()  # every file of the part (graph + external data): (name, sha256)

    @property
    def all_files(self) -> tuple[tuple[str, str], ...]:
        return self.files or ((self.path.name, self.sha256),)

    def input(self, index: int = 0) -> ServedTensor:
        return self.inputs[index]

    def output(self, index: int = 0) -> ServedTensor:
        return self.outputs[index]


@dataclass(frozen=True)
class ExportManifest:
    entry: str
    version: str
    export_dir: Path
    class_names: tuple[str, ...]
    modalities: tuple[str, ...]
    parts: dict[str, PartSpec]
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def part(self, name: str) -> PartSpec:
        if name not in self.parts:
            raise ManifestError(f"{self.export_dir / MANIFEST_NAME}: entry {self.entry!r} has no part {name!r} "
                                f"(parts: {sorted(self.parts)}); re-export the entry")
        return self.parts[name]

    def has(self, name: str) -> bool:
        return name in self.parts

    # Roles inside parts, by position (the export contract: README.md, Export, Parts and tensors).
    @property
    def fusion_presence(self) -> ServedTensor:
        return self.part(FUSION_HEAD).inputs[-1]

    def fusion_embedding_input(self, modality: str) -> ServedTensor:
        return self.part(FUSION_HEAD).inputs[self.modalities.index(modality)]

    @property
    def probabilities(self) -> ServedTensor:
        return self.part(FUSION_HEAD).outputs[0]

    @property
    def fusion_attention(self) -> ServedTensor:
        return self.part(FUSION_HEAD).outputs[1]

    @property
    def patch_attention(self) -> ServedTensor:
        return self.part(MIL_POOL).outputs[1]


def parse_dtype(value: str, where: str) -> np.dtype:
    key = str(value).lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in _DTYPES:
        raise ManifestError(f"{where}: unsupported dtype {value!r} (expected one of {sorted(_DTYPES)})")
    return _DTYPES[key]


def parse_shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ManifestError(f"{where}: shape must be a list, got {value!r}")
    return tuple(int(d) if isinstance(d, int) and d >= 0 else -1 for d in value)


def _tensor(raw: dict, where: str) -> ServedTensor:
    try:
        return ServedTensor(str(raw["name"]), parse_dtype(raw.get("dtype", raw.get("type")), where),
                          parse_shape(raw["shape"], where))
    except KeyError as err:
        raise ManifestError(f"{where}: tensor entry lacks {err}") from None


def _raw_parts(raw: dict, where: str) -> dict[str, dict]:
    parts = raw.get("parts")
    if isinstance(parts, list):
        return {str(p["name"]): p for p in parts}
    if isinstance(parts, dict):
        return {str(k): v for k, v in parts.items()}
    raise ManifestError(f"{where}: no 'parts' mapping; re-run `python -m export.onnx`")


def _read_raw(path: Path, verify_files: bool) -> dict:
    if verify_files:
        # Building a repository: the exporter's own validator (schema, sha256, parity). It imports torch when
        # called, which a client reading the repository's copy (validated at build time) does not need.
        return load_manifest(path, verify_files=True)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from None


def load(export_dir: str | Path, verify_files: bool = True) -> ExportManifest:
    """Read `export_dir/manifest.json` into an `ExportManifest` (verify_files=False for a client's copy)."""
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST_NAME if export_dir.is_dir() else export_dir
    export_dir = path.parent
    if not path.is_file():
        raise ManifestError(f"{path}: no export manifest; run `python -m export.onnx` for this entry first")
    return from_raw(_read_raw(path, verify_files), export_dir, str(path))


def loads(text: str, where: str, export_dir: str | Path = ".") -> ExportManifest:
    """An `ExportManifest` from manifest JSON text (e.g. the copy a served ensemble's config carries); part paths
    are relative to `export_dir`, which need not exist (a client only reads names, shapes and preprocessing)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: a manifest is a JSON object, got {type(raw).__name__}")
    return from_raw(raw, Path(export_dir), where)


def from_raw(raw: dict, export_dir: Path, where: str) -> ExportManifest:
    """An `ExportManifest` from the parsed manifest JSON; `where` names its source in errors."""
    path = where
    parts = {}
    for name, part in _raw_parts(raw, str(path)).items():
        where = f"{path}: part {name!r}"
        if "file" not in part:
            raise ManifestError(f"{where}: lacks 'file'")
        parts[name] = PartSpec(
            name=name, path=export_dir / part["file"], sha256=str(part.get("sha256", "")),
            inputs=tuple(_tensor(t, f"{where} input") for t in part.get("inputs", [])),
            outputs=tuple(_tensor(t, f"{where} output") for t in part.get("outputs", [])),
            files=tuple((str(k), str(v)) for k, v in (part.get("files") or {}).items()))
    modalities = tuple(raw.get("modalities") or [m for m in spec.MODALITIES if MODALITY_ENCODER[m] in parts])
    for modality in modalities:
        if modality not in MODALITY_ENCODER:
            raise ManifestError(f"{path}: unknown modality {modality!r} (known: {list(spec.MODALITIES)})")
    return ExportManifest(
        entry=str(raw.get("entry") or export_dir.name), version=str(raw.get("version", "1")),
        export_dir=export_dir, class_names=tuple(raw.get("class_names") or spec.CLASS_NAMES),
        modalities=modalities, parts=parts, preprocessing=dict(raw.get("preprocessing") or {}))


def verify_file(path: Path, sha256: str, part: str) -> None:
    """Refuse a file that is missing or whose sha256 differs from the manifest."""
    if not path.is_file():
        raise ManifestError(f"{path}: file of part {part!r} is missing; re-export the entry")
    if not sha256:
        raise ManifestError(f"{path}: manifest gives no sha256 for part {part!r}; re-export the entry")
    actual = sha256_file(path)
    if actual != sha256:
        raise ManifestError(f"{path}: sha256 {actual} does not match the manifest's {sha256} "
                            f"for part {part!r}; the file changed after export, re-export the entry")


def verify_part(part: PartSpec, directory: Path | None = None) -> None:
    """Check every file of `part` (in `directory`, default the export directory) against the manifest."""
    directory = directory or part.path.parent
    for name, sha256 in part.all_files:
        verify_file(directory / name, sha256, part.name)
