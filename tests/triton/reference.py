"""In-process reference: the export's ONNX parts chained with onnxruntime, as the ensembles should compute."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from triton_repo import manifest as mf
from triton_repo.plan import PATHOLOGY, placeholder


class OnnxReference:
    def __init__(self, manifest: mf.ExportManifest):
        self.m = manifest
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.sessions = {name: ort.InferenceSession(str(part.path), options, providers=["CPUExecutionProvider"])
                         for name, part in manifest.parts.items() if name != mf.WHOLE_MODEL}

    def run(self, part: str, *arrays: np.ndarray) -> list[np.ndarray]:
        spec = self.m.part(part)
        return self.sessions[part].run(None, {t.name: a for t, a in zip(spec.inputs, arrays)})

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        return self.run(mf.PATCH_ENCODER, patches)[0]

    def predict(self, features=None, mri=None, clinical=None):
        """(probabilities [K], fusion attention [M], patch attention [N] | None) for one patient."""
        given = {PATHOLOGY: features, "mri": mri, "clinical": clinical}
        presence = np.array([[given[m] is not None for m in self.m.modalities]])
        embeddings, attention = [], None
        for modality in self.m.modalities:
            value = given[modality]
            if modality == PATHOLOGY:
                bag = value if value is not None else placeholder(self.m.part(mf.MIL_POOL).input(0))
                embedding, patch_attention = self.run(mf.MIL_POOL, bag)
                attention = patch_attention if value is not None else None
            else:
                encoder = mf.MODALITY_ENCODER[modality]
                x = value[None] if value is not None else placeholder(self.m.part(encoder).input(0))
                embedding = self.run(encoder, x)[0]
            embeddings.append(embedding)
        probabilities, fusion_attention = self.run(mf.FUSION_HEAD, *embeddings, presence)
        return probabilities[0], fusion_attention[0], attention
