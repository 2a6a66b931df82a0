"""The served parts: thin nn.Module wrappers around a zoo model's attributes, one class per part.

Every part declares its signature (names from export.names, dynamic axes as symbols), the example inputs used
to trace it, and the parity cases that exercise it. `PARTS` is the one part list every format and the parity
checker iterate; `parts_for(modalities)` keeps only the parts a model's modalities need.

Batch dims (README.md, Export, Parts and tensors): bag parts (`patch_encoder`, `mil_pool`) carry one slide's
patches and have no batch dim (dynamic `num_patches`); `mri_encoder`, `clinical_encoder`, `fusion_head` and
`model` have a dynamic `batch` dim. `model` takes bags padded to a common `num_patches` with a mask, like the
training batches.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from export import names
from export.geometry import Geometry
from export.signature import TORCH_DTYPES, Signature, TensorSpec
from zoo import spec

N = names.DIM_PATCHES
B = names.DIM_BATCH
EXAMPLE_SIZE = 3  # traced size of dynamic axes: not 0 or 1, which tracers specialise on


@dataclass(frozen=True)
class ParitySizes:
    """Dynamic sizes the parity checker runs: patches through the encoder, bag sizes for MIL, batch sizes."""

    patches: tuple[int, ...] = (1, 8, 64)
    bag: tuple[int, ...] = (1, 100, 3000)
    batch: tuple[int, ...] = (1, 3)


@dataclass
class Case:
    label: str
    inputs: dict[str, torch.Tensor]


def presence_patterns(modalities: Sequence[str]) -> list[tuple[bool, ...]]:
    """Every non-empty subset of `modalities` as a presence row: all present first, then single modalities up."""
    rows = [tuple(bool(b) for b in bits) for bits in itertools.product((0, 1), repeat=len(modalities)) if any(bits)]
    return sorted(rows, key=lambda row: (-len(row) if all(row) else sum(row), [not b for b in row]))


def pattern_label(modalities: Sequence[str], row: Sequence[bool]) -> str:
    return "+".join(m for m, present in zip(modalities, row) if present)


def random_tensor(t: TensorSpec, sizes: dict[str, int], generator: torch.Generator) -> torch.Tensor:
    shape = t.concrete_shape(sizes)
    dtype = TORCH_DTYPES[t.dtype]
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, dtype=dtype, generator=generator)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype)
    return torch.randn(shape, generator=generator).to(dtype)


class Part(nn.Module):
    """Base wrapper: casts float inputs to the export precision and float outputs back to float32."""

    name: ClassVar[str]
    modality: ClassVar[str | None] = None  # exported only when the model has this modality; None = always

    def __init__(self, model: nn.Module, geometry: Geometry, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.geometry = geometry
        self.compute_dtype = compute_dtype
        self.bind(model)

    def bind(self, model: nn.Module) -> None:
        raise NotImplementedError

    @classmethod
    def signature(cls, g: Geometry) -> Signature:
        raise NotImplementedError

    @classmethod
    def cases(cls, g: Geometry, sizes: ParitySizes, generator: torch.Generator) -> list[Case]:
        raise NotImplementedError

    @classmethod
    def random_case(cls, g: Geometry, label: str, dims: dict[str, int], generator: torch.Generator) -> Case:
        return Case(label, {t.name: random_tensor(t, dims, generator) for t in cls.signature(g).inputs})

    @classmethod
    def example_inputs(cls, g: Geometry) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        case = cls.random_case(g, "example", {N: EXAMPLE_SIZE, B: EXAMPLE_SIZE}, generator)
        return tuple(case.inputs.values())

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cast = [x.to(self.compute_dtype) if x.is_floating_point() else x for x in inputs]
        outputs = self.compute(*cast)
        return tuple(y.float() if y.is_floating_point() else y for y in outputs)

    def compute(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


class PatchEncoderPart(Part):
    name = names.PATCH_ENCODER
    modality = spec.KEY_PATHOLOGY

    def bind(self, model: nn.Module) -> None:
        self.encoder = model.patch_encoder

    @classmethod
    def signature(cls, g: Geometry) -> Signature:
        p = g.patch_size
        return Signature(
            inputs=(TensorSpec(names.PATCHES, "uint8", (N, 3, p, p)),),
            outputs=(TensorSpec(names.PATCH_FEATURES, "float32", (N, g.patch_feature_dim)),),
        )

    @classmethod
    def cases(cls, g: Geometry, sizes: ParitySizes, generator: torch.Generator) -> list[Case]:
        return [cls.random_case(g, f"random N={n}", {N: n}, generator) for n in sizes.patches]

    def compute(self, patches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.encoder(patches),)


class MilPoolPart(Part):
    name = names.MIL_POOL
    modality = spec.KEY_PATHOLOGY

    def bind(self, model: nn.Module) -> None:
        self.mil = model.mil

    @classmethod
    def signature(cls, g: Geometry) -> Signature:
        return Signature(
            inputs=(TensorSpec(names.PATCH_FEATURES, "float32", (N, g.patch_feature_dim)),),
            outputs=(
                TensorSpec(names.embedding(spec.KEY_PATHOLOGY), "float32", (1, g.embedding_dims[spec.KEY_PATHOLOGY])),
                TensorSpec(names.PATCH_ATTENTION, "float32", (N,)),
            ),
        )

    @classmethod
    def cases(cls, g: Geometry, sizes: ParitySizes, generator: torch.Generator) -> list[Case]:
        return [cls.random_case(g, f"random N={n}", {N: n}, generator) for n in sizes.bag]

    def compute(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bag = features.unsqueeze(0)
        mask = torch.ones(bag.shape[:2], dtype=torch.bool, device=bag.device)
        embedding, attention = self.mil(bag, mask)
        return embedding, attention.squeeze(0)


class BatchEncoderPart(Part):
    """An encoder with a dynamic batch dim: one input tensor -> one embedding."""

    input_name: ClassVar[str]
    attribute: ClassVar[str]

    def bind(self, model: nn.Module) -> None:
        self.encoder = getattr(model, self.attribute)

    @classmethod
    def input_shape(cls, g: Geometry) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def signature(cls, g: Geometry) -> Signature:
        return Signature(
            inputs=(TensorSpec(cls.input_name, "float32", (B, *cls.input_shape(g))),),
            outputs=(TensorSpec(names.embedding(cls.modality), "float32", (B, g.embedding_dims[cls.modality])),),
        )

    @classmethod
    def cases(cls, g: Geometry, sizes: ParitySizes, generator: torch.Generator) -> list[Case]:
        return [cls.random_case(g, f"random B={b}", {B: b}, generator) for b in sizes.batch]

    def compute(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.encoder(x),)


class MriEncoderPart(BatchEncoderPart):
    name = names.MRI_ENCODER
    modality = spec.KEY_MRI
    input_name = names.MRI
    attribute = "mri_encoder"

    @classmethod
    def input_shape(cls, g: Geometry) -> tuple[int, ...]:
        return (g.mri_channels, *g.mri_shape)


class ClinicalEncoderPart(BatchEncoderPart):
    name = names.CLINICAL_ENCODER
    modality = spec.KEY_CLINICAL
    input_name = names.CLINICAL
    attribute = "clinical_encoder"

    @classmethod
    def input_shape(cls, g: Geometry) -> tuple[int, ...]:
        return (g.clinical_dim,)


def with_presence(case: Case, rows: Sequence[Sequence[bool]]) -> Case:
    """Set the case's presence mask to `rows` (one per batch item)."""
    case.inputs[names.PRESENCE] = torch.tensor([list(r) for r in rows], dtype=torch.bool)
    return case


class FusionHeadPart(Part):
    name = names.FUSION_HEAD

    def bind(self, model: nn.Module) -> None:
        self.head = model.fusion_head

    @classmethod
    def signature(cls, g: Geometry) -> Signature:
        return Signature(
            inputs=(
                *(TensorSpec(names.embedding(m), "float32", (B, g.embedding_dims[m])) for m in g.modalities),
                TensorSpec(names.PRESENCE, "bool", (B, g.num_modalities)),
            ),
            outputs=(
                TensorSpec(names.PROBABILITIES, "float32", (B, g.num_classes)),
                TensorSpec(names.FUSION_ATTENTION, "float32", (B, g.num_modalities)),
            ),
        )

    @classmethod
    def cases(cls, g: Geometry, sizes: ParitySizes, generator: torch.Generator) -> list[Case]:
        patterns = presence_patterns(g.modalities)
        cases = [
            with_presence(cls.random_case(g, f"present={pattern_label(g.modalities, row)}", {B: 1}, generator), [row])
            for row in patterns
        ]
        stacked = cls.random_case(g, f"all {len(patterns)} presence patterns, B={len(patterns)}",
                                  {B: len(patterns)}, generator)
        cases.append(with_presence(stacked, patterns))
        return cases

    def compute(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *embeddings, presence = inputs
        logits, attention = self.head(list(embeddings), presence)
        return torch.softmax(logits.float(), dim=-1), attention


class WholeModelPart(Part):
    """The whole model in one graph, for in-process use: padded bags + mask, other modalities, presence."""

    name = names.WHOLE_MODEL

    def bind(self, model: nn.Module) -> None:
        self.model = model
        # Column of each canonical modality in the presence input (over model.modalities), or None if absent.
        self.presence_columns = [
            model.modalities.index(m) if m in model.modalities else None for m in spec.MODALITIES
        ]

    @classmethod
    def modality_inputs(cls, g: Geometry) -> dict[str, tuple[TensorSpec, ...]]:
        p = g.patch_size
        return {
            spec.KEY_PATHOLOGY: (
                TensorSpec(names.PATCHES, "uint8", (B, N, 3, p, p)),
                TensorSpec(names.PATCH_MASK, "bool", (B, N)),
            ),
            spec.KEY_MRI: (TensorSpec(names.MRI, "float32", (B, g.mri_channels, *g.mri_shape)),),
            spec.KEY_CLINICAL: (TensorSpec(names.CLINICAL, "float32", (B, g.clinical_dim)),),
        }

    @classmethod
    def signature(cls, g: Geometry) -> Signature:
        table = cls.modality_inputs(g)
        outputs = [TensorSpec(names.PROBABILITIES, "float32", (B, g.num_classes))]
        if spec.KEY_PATHOLOGY in g.modalities:
            outputs.append(TensorSpec(names.PATCH_ATTENTION, "float32", (B, N)))
        outputs.append(TensorSpec(names.FUSION_ATTENTION, "float32", (B, g.num_modalities)))
        return Signature(
            inputs=(
                *(t for m in g.modalities for t in table[m]),
                TensorSpec(names.PRESENCE, "bool", (B, g.num_modalities)),
            ),
            outputs=tuple(outputs),
        )

    @classmethod
    def cases(cls, g: Geometry, sizes: ParitySizes, generator: torch.Generator) -> list[Case]:
        has_bags = spec.KEY_PATHOLOGY in g.modalities
        mid = sorted(sizes.patches)[len(sizes.patches) // 2]
        cases = []
        for row in presence_patterns(g.modalities):
            case = cls.random_case(g, f"present={pattern_label(g.modalities, row)}", {B: 1, N: mid}, generator)
            if has_bags and not row[g.modalities.index(spec.KEY_PATHOLOGY)]:
                case.inputs[names.PATCH_MASK].zero_()
            cases.append(with_presence(case, [row]))
        if has_bags:
            cases += [cls.random_case(g, f"random N={n}", {B: 1, N: n}, generator) for n in sizes.patches if n != mid]
            padded = cls.random_case(g, f"padded bags B=2 N={mid}", {B: 2, N: mid}, generator)
            padded.inputs[names.PATCH_MASK][1, max(1, mid // 2):] = False
            cases.append(padded)
        else:
            cases += [cls.random_case(g, f"random B={b}", {B: b}, generator) for b in sizes.batch if b != 1]
        return cases

    def compute(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Input names are zoo.spec batch keys (export.names), so the inputs form a training-style batch.
        by_name = dict(zip(self.signature(self.geometry).input_names, inputs))
        presence = by_name.pop(names.PRESENCE)
        absent = torch.zeros_like(presence[:, 0])
        by_name[spec.KEY_PRESENCE] = torch.stack(
            [presence[:, c] if c is not None else absent for c in self.presence_columns], dim=1
        )
        logits, aux = self.model(by_name)
        outputs = [torch.softmax(logits.float(), dim=-1)]
        if spec.KEY_PATHOLOGY in self.geometry.modalities:
            outputs.append(aux[spec.AUX_PATHOLOGY_ATTENTION])
        outputs.append(aux[spec.AUX_FUSION_ATTENTION])
        return tuple(outputs)


PARTS: tuple[type[Part], ...] = (
    PatchEncoderPart,
    MilPoolPart,
    MriEncoderPart,
    ClinicalEncoderPart,
    FusionHeadPart,
    WholeModelPart,
)
PARTS_BY_NAME: dict[str, type[Part]] = {p.name: p for p in PARTS}


def parts_for(modalities: Sequence[str]) -> list[type[Part]]:
    """The parts a model with these modalities serves, in `PARTS` order."""
    return [p for p in PARTS if p.modality is None or p.modality in modalities]
