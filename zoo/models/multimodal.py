"""The multimodal model: per-modality encoders + fusion head, forward(batch dict) -> (logits, aux)."""
from __future__ import annotations

import torch
from torch import nn

from zoo import spec


class MultiModalModel(nn.Module):
    """Served parts are attributes (None where the modality is absent): patch_encoder, mil, mri_encoder,
    clinical_encoder, fusion_head. `modalities` is a subset of spec.MODALITIES in canonical order.

    The fusion head's per-modality classifiers (model.fusion.auxiliary_heads, zoo.models.fusion.FusionHead) give
    aux `unimodal_logits`, which training gives their own loss term."""

    def __init__(self, modalities: tuple[str, ...], fusion_head: nn.Module, patch_encoder: nn.Module | None = None,
                 mil: nn.Module | None = None, mri_encoder: nn.Module | None = None,
                 clinical_encoder: nn.Module | None = None, num_classes: int = spec.NUM_CLASSES):
        super().__init__()
        self.modalities = tuple(modalities)
        self.num_classes = num_classes
        self.patch_encoder = patch_encoder
        self.mil = mil
        self.mri_encoder = mri_encoder
        self.clinical_encoder = clinical_encoder
        self.fusion_head = fusion_head
        self._register_load_state_dict_pre_hook(self._legacy_unimodal_keys)

    def _legacy_unimodal_keys(self, state_dict, prefix, *_args) -> None:
        # entry versions 1.2-1.3 kept the per-modality heads on the model (unimodal_heads.<modality>.*)
        for i, modality in enumerate(self.modalities):
            old = f"{prefix}unimodal_heads.{modality}."
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[f"{prefix}fusion_head.unimodal_heads.{i}.{key[len(old):]}"] = state_dict.pop(key)

    @property
    def has_unimodal_heads(self) -> bool:
        return getattr(self.fusion_head, "unimodal_heads", None) is not None

    @property
    def heads_only(self) -> bool:
        """Fusion type `late`: no fused term, the served logits combine the per-modality heads."""
        return bool(getattr(self.fusion_head, "heads_only", False))

    @property
    def embedding_dims(self) -> dict[str, int]:
        parts = {"pathology": self.mil, "mri": self.mri_encoder, "clinical": self.clinical_encoder}
        return {m: parts[m].out_dim for m in self.modalities}

    def _given(self, batch: dict, modality: str) -> bool:
        keys = {"pathology": (spec.KEY_PATHOLOGY, spec.KEY_PATHOLOGY_FEATURES), "mri": (spec.KEY_MRI,),
                "clinical": (spec.KEY_CLINICAL,)}[modality]
        return any(batch.get(k) is not None for k in keys)

    def _batch_size(self, batch: dict) -> int:
        for key in (spec.KEY_PRESENCE, spec.KEY_PATHOLOGY_FEATURES, spec.KEY_PATHOLOGY, spec.KEY_MRI,
                    spec.KEY_CLINICAL):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key].shape[0]
        raise ValueError(f"batch has none of the model's inputs {self.modalities}; keys given: {sorted(batch)}")

    def presence(self, batch: dict, batch_size: int, device: torch.device) -> torch.Tensor:
        """[B,M] over self.modalities: batch['presence'] (canonical order) if given, else which inputs are given."""
        given = torch.tensor([self._given(batch, m) for m in self.modalities], device=device)
        given = given.unsqueeze(0).expand(batch_size, -1)
        if batch.get(spec.KEY_PRESENCE) is None:
            return given
        presence = batch[spec.KEY_PRESENCE].to(device).bool()
        if presence.shape[-1] != len(spec.MODALITIES):
            raise ValueError(f"batch['{spec.KEY_PRESENCE}'] must be [B,{len(spec.MODALITIES)}] in {spec.MODALITIES} "
                             f"order, got shape {tuple(presence.shape)}")
        columns = [spec.MODALITIES.index(m) for m in self.modalities]
        return presence[:, columns] & given

    def _encode_pathology(self, batch: dict, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = batch.get(spec.KEY_PATHOLOGY_FEATURES)
        if features is None and batch.get(spec.KEY_PATHOLOGY) is not None:
            patches = batch[spec.KEY_PATHOLOGY]
            if patches.dim() != 5:
                raise ValueError(f"batch['{spec.KEY_PATHOLOGY}'] must be [B,N,3,H,W], got shape {tuple(patches.shape)}")
            n = patches.shape[1]
            features = self.patch_encoder(patches.flatten(0, 1)).view(b, n, -1)
        if features is None:
            device = self._device()
            return torch.zeros(b, self.mil.out_dim, device=device), torch.zeros(b, 0, device=device)
        mask = batch.get(spec.KEY_PATHOLOGY_MASK)
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return self.mil(features, mask)

    def _encode_dense(self, encoder: nn.Module, x: torch.Tensor | None, b: int) -> tuple[torch.Tensor, None]:
        if x is None:
            return torch.zeros(b, encoder.out_dim, device=self._device()), None
        return encoder(x), None

    def _encode_mri(self, batch: dict, b: int):
        return self._encode_dense(self.mri_encoder, batch.get(spec.KEY_MRI), b)

    def _encode_clinical(self, batch: dict, b: int):
        return self._encode_dense(self.clinical_encoder, batch.get(spec.KEY_CLINICAL), b)

    def _device(self) -> torch.device:
        return next(self.fusion_head.parameters()).device

    _ENCODE = {"pathology": _encode_pathology, "mri": _encode_mri, "clinical": _encode_clinical}

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        b = self._batch_size(batch)
        embeddings, aux = {}, {}
        for modality in self.modalities:
            embeddings[modality], attention = self._ENCODE[modality](self, batch, b)
            if modality == "pathology":
                aux[spec.AUX_PATHOLOGY_ATTENTION] = attention
        device = embeddings[self.modalities[0]].device
        presence = self.presence(batch, b, device)
        logits, fusion_attention = self.fusion_head([embeddings[m] for m in self.modalities], presence)
        aux[spec.AUX_FUSION_ATTENTION] = fusion_attention
        aux[spec.AUX_EMBEDDINGS] = embeddings
        aux[spec.AUX_PRESENCE] = presence
        if self.has_unimodal_heads:
            ordered = [embeddings[m] for m in self.modalities]
            aux[spec.AUX_UNIMODAL_LOGITS] = dict(zip(self.modalities, self.fusion_head.unimodal_logits(ordered)))
        return logits, aux
