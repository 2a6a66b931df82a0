"""What a repository holds for one export: one Triton model per part plus the two ensembles.

Everything here is derived from the manifest; the client uses the same functions to name tensors, so a name is
decided in one place. Missing modalities: an ensemble needs every input, so the client sends a placeholder
(zeros; one zero patch/feature row for pathology) and a False in the presence mask; the fusion head ignores it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from triton_repo.config import ModelConfig, Step, Tensor
from triton_repo.manifest import (
    CLINICAL_ENCODER,
    FUSION_HEAD,
    MIL_POOL,
    MODALITY_ENCODER,
    MRI_ENCODER,
    PATCH_ENCODER,
    ExportManifest,
    ManifestError,
    PartSpec,
    ServedTensor,
)
from zoo import spec

PATHOLOGY, MRI, CLINICAL = spec.MODALITIES
SERVED_PARTS = (PATCH_ENCODER, MIL_POOL, MRI_ENCODER, CLINICAL_ENCODER, FUSION_HEAD)
SLIDE_SUFFIX = "_slide"


@dataclass(frozen=True)
class Flavor:
    platform: str
    backend: str
    instance_kind: str
    runs_python_model: bool


FLAVORS: dict[str, Flavor] = {
    "gpu": Flavor(platform="onnxruntime_onnx", backend="", instance_kind="KIND_GPU", runs_python_model=False),
    "embedded": Flavor(platform="", backend="python", instance_kind="KIND_CPU", runs_python_model=True),
}


@dataclass(frozen=True)
class BuildOptions:
    flavor: str = "embedded"
    max_patch_batch: int = 1024       # largest chunk (and full-ensemble bag) the patch encoder accepts
    batching_delay_us: int = 2000
    tensorrt_fp16: bool = False
    instance_count: int = 1


def part_model_name(entry: str, part: str) -> str:
    return f"{entry}_{part}"


def slide_ensemble_name(entry: str) -> str:
    return f"{entry}{SLIDE_SUFFIX}"


def _is_batchable(part: PartSpec) -> bool:
    """The patch encoder maps N patches to N features: N is Triton's batch axis (dynamic batching)."""
    return part.name == PATCH_ENCODER and all(t.shape and t.shape[0] == -1 for t in (*part.inputs, *part.outputs))


def part_config(manifest: ExportManifest, part_name: str, options: BuildOptions) -> ModelConfig:
    part = manifest.part(part_name)
    flavor = FLAVORS[options.flavor]
    batching = _is_batchable(part)

    def dims(t: ServedTensor) -> tuple[int, ...]:
        return t.shape[1:] if batching else t.shape

    accelerators = ()
    if options.tensorrt_fp16 and options.flavor == "gpu":
        accelerators = (("tensorrt", {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30)}),)
    return ModelConfig(
        name=part_model_name(manifest.entry, part_name),
        inputs=tuple(Tensor(t.name, t.dtype, dims(t)) for t in part.inputs),
        outputs=tuple(Tensor(t.name, t.dtype, dims(t)) for t in part.outputs),
        max_batch_size=options.max_patch_batch if batching else 0,
        platform=flavor.platform, backend=flavor.backend,
        instance_kind=flavor.instance_kind, instance_count=options.instance_count,
        dynamic_batching_delay_us=options.batching_delay_us if batching else None,
        parameters={"entry": manifest.entry, "part": part_name, "export_version": manifest.version,
                    "onnx_file": part.path.name},
        gpu_accelerators=accelerators,
        default_model_filename="" if flavor.runs_python_model else part.path.name,
    )


@dataclass(frozen=True)
class EnsembleIO:
    """Exposed tensors of one ensemble: inputs per modality, presence, and outputs."""
    name: str
    modality_inputs: dict[str, ServedTensor]
    presence: ServedTensor
    probabilities: ServedTensor
    fusion_attention: ServedTensor
    patch_attention: ServedTensor | None


def _intermediate(part: str, tensor: ServedTensor) -> str:
    return f"{part}__{tensor.name}"


def _check_link(manifest: ExportManifest, src: tuple[str, ServedTensor], dst: tuple[str, ServedTensor]) -> None:
    (src_part, a), (dst_part, b) = src, dst
    same_rank = len(a.shape) == len(b.shape)
    if a.dtype != b.dtype or not same_rank or any(x != y and -1 not in (x, y) for x, y in zip(a.shape, b.shape)):
        raise ManifestError(
            f"{manifest.export_dir}: {src_part} output {a.name!r} {a.dtype}{list(a.shape)} cannot feed "
            f"{dst_part} input {b.name!r} {b.dtype}{list(b.shape)}; re-export with matching shapes")


def _exposed(tensors: list[tuple[str, ServedTensor]]) -> dict[str, ServedTensor]:
    """Exposed names are the manifest's; if two roles share a name, both get their role as prefix."""
    counts: dict[str, int] = {}
    for _, t in tensors:
        counts[t.name] = counts.get(t.name, 0) + 1
    return {part: (t if counts[t.name] == 1 else ServedTensor(f"{part}__{t.name}", t.dtype, t.shape))
            for part, t in tensors}


def ensemble_io(manifest: ExportManifest, from_features: bool) -> EnsembleIO:
    """Exposed tensors of `<entry>` (from_features=False) or `<entry>_slide` (True)."""
    name = slide_ensemble_name(manifest.entry) if from_features else manifest.entry
    roles: list[tuple[str, ServedTensor]] = []
    for modality in manifest.modalities:
        part = MIL_POOL if (modality == PATHOLOGY and from_features) else MODALITY_ENCODER[modality]
        roles.append((modality, manifest.part(part).input(0)))
    roles += [("presence", manifest.fusion_presence), ("probabilities", manifest.probabilities),
              ("fusion_attention", manifest.fusion_attention)]
    has_path = PATHOLOGY in manifest.modalities
    if has_path:
        roles.append(("patch_attention", manifest.patch_attention))
    exposed = _exposed(roles)
    return EnsembleIO(
        name=name, modality_inputs={m: exposed[m] for m in manifest.modalities}, presence=exposed["presence"],
        probabilities=exposed["probabilities"], fusion_attention=exposed["fusion_attention"],
        patch_attention=exposed["patch_attention"] if has_path else None)


def ensemble_config(manifest: ExportManifest, from_features: bool) -> ModelConfig:
    io = ensemble_io(manifest, from_features)
    entry = manifest.entry
    steps: list[Step] = []
    head_inputs: dict[str, str] = {manifest.fusion_presence.name: io.presence.name}
    for modality in manifest.modalities:
        head_in = manifest.fusion_embedding_input(modality)
        if modality == PATHOLOGY:
            mil = manifest.part(MIL_POOL)
            features = io.modality_inputs[modality].name
            if not from_features:
                enc = manifest.part(PATCH_ENCODER)
                _check_link(manifest, (PATCH_ENCODER, enc.output(0)), (MIL_POOL, mil.input(0)))
                features = _intermediate(PATCH_ENCODER, enc.output(0))
                steps.append(Step(part_model_name(entry, PATCH_ENCODER),
                                  {enc.input(0).name: io.modality_inputs[modality].name},
                                  {enc.output(0).name: features}))
            _check_link(manifest, (MIL_POOL, mil.output(0)), (FUSION_HEAD, head_in))
            embedding = _intermediate(MIL_POOL, mil.output(0))
            steps.append(Step(part_model_name(entry, MIL_POOL), {mil.input(0).name: features},
                              {mil.output(0).name: embedding, manifest.patch_attention.name: io.patch_attention.name}))
        else:
            part_name = MODALITY_ENCODER[modality]
            enc = manifest.part(part_name)
            _check_link(manifest, (part_name, enc.output(0)), (FUSION_HEAD, head_in))
            embedding = _intermediate(part_name, enc.output(0))
            steps.append(Step(part_model_name(entry, part_name), {enc.input(0).name: io.modality_inputs[modality].name},
                              {enc.output(0).name: embedding}))
        head_inputs[head_in.name] = embedding
    steps.append(Step(part_model_name(entry, FUSION_HEAD), head_inputs,
                      {manifest.probabilities.name: io.probabilities.name,
                       manifest.fusion_attention.name: io.fusion_attention.name}))
    inputs = [*io.modality_inputs.values(), io.presence]
    outputs = [io.probabilities, io.fusion_attention] + ([io.patch_attention] if io.patch_attention else [])
    return ModelConfig(name=io.name, inputs=tuple(Tensor(t.name, t.dtype, t.shape) for t in inputs),
                       outputs=tuple(Tensor(t.name, t.dtype, t.shape) for t in outputs), steps=tuple(steps))


def served_parts(manifest: ExportManifest) -> tuple[str, ...]:
    needed = [MODALITY_ENCODER[m] for m in manifest.modalities]
    if PATHOLOGY in manifest.modalities:
        needed.append(MIL_POOL)
    needed.append(FUSION_HEAD)
    return tuple(p for p in SERVED_PARTS if p in needed)


def model_configs(manifest: ExportManifest, options: BuildOptions) -> list[ModelConfig]:
    """Every model of one entry: parts first, then `<entry>` and (with pathology) `<entry>_slide`."""
    if options.flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {options.flavor!r}; choose one of {sorted(FLAVORS)}")
    configs = [part_config(manifest, p, options) for p in served_parts(manifest)]
    configs.append(ensemble_config(manifest, from_features=False))
    if PATHOLOGY in manifest.modalities:
        configs.append(ensemble_config(manifest, from_features=True))
    return configs


def placeholder(tensor: ServedTensor, batch: int = 1) -> np.ndarray:
    """Zeros standing in for a missing modality: dynamic axes get `batch` (one row / one patch)."""
    return np.zeros([batch if d == -1 else d for d in tensor.shape], dtype=tensor.dtype)
