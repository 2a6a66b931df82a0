"""The seed's builder API and its config twin.

    builder = MultiModalModelBuilder(num_classes=4)
    builder.add_modality("pathology", backbone="resnet50", pretrained=False, aggregator="attention_mil")
    builder.add_modality("mri", backbone="resnet3d_18", input_channels=1)
    builder.add_modality("clinical", backbone="mlp", input_dim=6, hidden_dims=[64, 128, 256])
    builder.set_fusion(fusion_type="attention", hidden_dim=512).set_head("classification", dropout=0.5)
    model = builder.build()

`build_model_from_config(config['model'])` drives the same builder from the YAML schema's `model` section.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from zoo import spec
from zoo.lookup import lookup
from zoo.models.fusion import FusionHead
from zoo.models.mil import build_mil
from zoo.models.multimodal import MultiModalModel
from zoo.models.patch_encoders import PatchEncoder
from zoo.models.tabular import build_tabular_encoder
from zoo.models.volume_encoders import build_volume_encoder


def _reject_unknown(modality: str, options: dict[str, Any]) -> None:
    if options:
        raise TypeError(f"add_modality({modality!r}) got unsupported option(s) {sorted(options)}")


def _pathology_parts(backbone="resnet50", input_channels=3, pretrained=False, aggregator="attention_mil",
                     freeze=False, input_size=224, feature_dim=0, weights=None, pretraining=None,
                     **rest) -> dict[str, nn.Module]:
    """`feature_dim` > 0: the MIL pools precomputed D-dim patch features (data.modalities.pathology.features_dir)
    and there is no patch encoder: the encoder that made the features is not part of the model. `pretraining`
    says how a self-supervised backbone's weights are made (zoo.training.pretrain), not what the model is."""
    aggregator = {"type": aggregator} if isinstance(aggregator, str) else dict(aggregator)
    if int(feature_dim or 0) > 0:
        _reject_unknown("pathology", rest)
        return {"patch_encoder": None, "mil": build_mil(int(feature_dim), **aggregator)}
    _reject_unknown("pathology", rest)
    encoder = PatchEncoder(backbone, input_channels, pretrained, freeze, input_size, weights=weights)
    return {"patch_encoder": encoder, "mil": build_mil(encoder.out_dim, **aggregator)}


def _mri_parts(backbone="resnet3d_18", input_channels=1, pretrained=False, width=64, pool="avg", statistics=False,
               norm="batch", cnn_gate=False, **rest) -> dict[str, nn.Module]:
    _reject_unknown("mri", rest)
    return {"mri_encoder": build_volume_encoder(backbone, input_channels, pretrained, width, pool, statistics, norm,
                                                cnn_gate)}


def _clinical_parts(backbone="mlp", input_dim=2 * len(spec.CLINICAL_FEATURES), hidden_dims=(64, 128, 256),
                    dropout=0.1, pretrained=False, input_channels=None, **rest) -> dict[str, nn.Module]:
    _reject_unknown("clinical", rest)
    return {"clinical_encoder": build_tabular_encoder(backbone, input_dim, hidden_dims, dropout, pretrained)}


# modality -> factory of the model attributes that serve it
MODALITY_PARTS: dict[str, Callable[..., dict[str, nn.Module]]] = {
    "pathology": _pathology_parts,
    "mri": _mri_parts,
    "clinical": _clinical_parts,
}
assert tuple(MODALITY_PARTS) == spec.MODALITIES


class MultiModalModelBuilder:
    def __init__(self, num_classes: int = spec.NUM_CLASSES):
        self.num_classes = int(num_classes)
        self._modalities: dict[str, dict[str, Any]] = {}
        self._fusion: dict[str, Any] = {"fusion_type": "attention", "hidden_dim": 512}
        self._head: dict[str, Any] = {"head_type": "classification", "head_dropout": 0.5}

    def add_modality(self, name: str, backbone: str, input_channels: int | None = None, pretrained: bool | str = False,
                     aggregator: str | dict = "attention_mil", input_dim: int | None = None,
                     hidden_dims: list[int] | None = None, **ext) -> "MultiModalModelBuilder":
        """Add one modality (pathology | mri | clinical). ext options: pathology `freeze`, `input_size`,
        `weights` (a state_dict file | "random" | None, see zoo.models.encoders);
        mri `width`; clinical `dropout`. `aggregator` is a type name or {'type', 'hidden_dim', 'dropout'}."""
        lookup(MODALITY_PARTS, name, "modality")
        if name in self._modalities:
            raise ValueError(f"modality {name!r} added twice")
        options = dict(backbone=backbone, pretrained=pretrained, **ext)
        optional = {"input_channels": input_channels, "input_dim": input_dim, "hidden_dims": hidden_dims}
        options.update({k: v for k, v in optional.items() if v is not None})
        if name == "pathology":
            options["aggregator"] = aggregator
        self._modalities[name] = options
        return self

    def set_fusion(self, fusion_type: str = "attention", hidden_dim: int = 512, num_heads: int = 8,
                   dropout: float = 0.1, modality_dropout: float = 0.0, auxiliary_heads: bool = False,
                   late_residual: bool = False, late_rule: str = "mean",
                   attention_combine: str = "concat") -> "MultiModalModelBuilder":
        """`auxiliary_heads`: a linear classifier per modality on its own embedding, trained alongside; only built
        when there are two or more modalities. `late_residual`: the served logits are those classifiers' logits
        combined by `late_rule` (mean | product) plus the fused term (see zoo.models.fusion.FusionHead).
        `attention_combine` (attention fusion only): concat | concat_pool | sum (zoo.models.fusion.AttentionFusion)."""
        self._fusion = dict(fusion_type=fusion_type, hidden_dim=hidden_dim, num_heads=num_heads, dropout=dropout,
                            modality_dropout=modality_dropout, auxiliary_heads=bool(auxiliary_heads),
                            late_residual=bool(late_residual), late_rule=str(late_rule),
                            attention_combine=str(attention_combine))
        return self

    def set_head(self, head_type: str = "classification", dropout: float = 0.5) -> "MultiModalModelBuilder":
        self._head = dict(head_type=head_type, head_dropout=dropout)
        return self

    def build(self) -> MultiModalModel:
        if not self._modalities:
            raise ValueError(f"add at least one modality ({', '.join(spec.MODALITIES)}) before build()")
        modalities = tuple(m for m in spec.MODALITIES if m in self._modalities)
        parts: dict[str, nn.Module] = {}
        for modality in modalities:
            parts.update(MODALITY_PARTS[modality](**self._modalities[modality]))
        model = MultiModalModel(modalities, fusion_head=None, num_classes=self.num_classes, **parts)
        dims = [model.embedding_dims[m] for m in modalities]
        model.fusion_head = FusionHead(dims, self.num_classes, **self._fusion, **self._head)
        return model


def without_pretrained(modalities: dict) -> dict:
    """The `model.modalities` section with every pretrained-weights source turned off (random init, silent):
    `pretrained: false` everywhere and, for pathology, `weights: false` (no file, env var or default path is
    looked at, and foundation-model encoders build without their required weights)."""
    off = {name: {**options, "pretrained": False} for name, options in modalities.items()}
    if "pathology" in off:
        off["pathology"]["weights"] = False
    return off


def build_model_from_config(model_config: dict, *, load_pretrained: bool = True) -> MultiModalModel:
    """Build from the `model` section of the YAML schema (see configs/breast_cancer_config.yaml).

    `load_pretrained=False` never reads pretrained weights (nor looks for their files): for rebuilding a model
    whose every weight comes from a checkpoint (`zoo.checkpoint.load_model`).
    """
    builder = MultiModalModelBuilder(model_config.get("num_classes", spec.NUM_CLASSES))
    modalities = model_config.get("modalities") or {}
    if not load_pretrained:
        modalities = without_pretrained(modalities)
    for name in modalities:
        lookup(MODALITY_PARTS, name, "model.modalities key")
    for name in spec.MODALITIES:
        if name in modalities:
            builder.add_modality(name, **modalities[name])
    fusion = dict(model_config.get("fusion") or {})
    builder.set_fusion(fusion_type=fusion.pop("type", "attention"), **fusion)
    head = dict(model_config.get("head") or {})
    builder.set_head(head.pop("type", "classification"), **head)
    return builder.build()
