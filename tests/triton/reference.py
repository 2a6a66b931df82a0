"""In-process PyTorch reference: the checkpoint's model in eval mode, fed the way training feeds it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo import spec
from zoo.checkpoint import load_checkpoint, load_model


@dataclass
class Reference:
    probabilities: np.ndarray             # [K]
    fusion_attention: np.ndarray          # [M] over model.modalities
    patch_attention: np.ndarray | None    # [N] over the real patches


class TorchReference:
    def __init__(self, checkpoint: Path):
        # the checkpoint's own version: the reference is whatever model the served export was made from
        self.model, _ = load_model(checkpoint, version=str(load_checkpoint(checkpoint).get("version", "")))

    @torch.no_grad()
    def run(self, batch: dict[str, Any]) -> Reference:
        """Forward one patient's collated batch (B=1); absent keys are missing modalities."""
        logits, aux = self.model(batch)
        attention = aux.get(spec.AUX_PATHOLOGY_ATTENTION)
        if attention is not None:  # keep the real patches' attention; none at all when pathology is missing
            mask = batch.get(spec.KEY_PATHOLOGY_MASK)
            attention = attention[0] if mask is None else attention[0][mask[0]]
        return Reference(
            probabilities=torch.softmax(logits, -1)[0].numpy(),
            fusion_attention=aux[spec.AUX_FUSION_ATTENTION][0].numpy(),
            patch_attention=attention.numpy() if attention is not None and len(attention) else None)

    def predict(self, patches: np.ndarray | None = None, mri: np.ndarray | None = None,
                clinical: np.ndarray | None = None) -> Reference:
        """Seed-style batch of the given modalities only: uint8 patches [N,3,H,W], MRI [C,X,Y,Z], clinical [F]."""
        given = {spec.KEY_PATHOLOGY: patches, spec.KEY_MRI: mri, spec.KEY_CLINICAL: clinical}
        return self.run({k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in given.items()
                         if v is not None})
