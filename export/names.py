"""Part names and tensor names of every exported graph, chosen once here and written to the manifest.

Batch keys and aux keys are reused from `zoo.spec` so a served tensor has the same name as the batch key the
model was trained with. Serving code reads tensor names from the manifest; it imports the part names from here
(this module is torch-free: `import triton_repo.client` must not load torch).
"""
from __future__ import annotations

from zoo import spec

PATCHES = spec.KEY_PATHOLOGY                   # uint8 patches
PATCH_MASK = spec.KEY_PATHOLOGY_MASK           # bool, True = real patch
PATCH_FEATURES = spec.KEY_PATHOLOGY_FEATURES   # float patch features from the patch encoder
PATCH_ATTENTION = spec.AUX_PATHOLOGY_ATTENTION
MRI = spec.KEY_MRI
CLINICAL = spec.KEY_CLINICAL
PRESENCE = spec.KEY_PRESENCE
FUSION_ATTENTION = spec.AUX_FUSION_ATTENTION
PROBABILITIES = "probabilities"

# Served parts (one graph file each), in the order a request flows through them.
PATCH_ENCODER = "patch_encoder"
MIL_POOL = "mil_pool"
MRI_ENCODER = "mri_encoder"
CLINICAL_ENCODER = "clinical_encoder"
FUSION_HEAD = "fusion_head"
WHOLE_MODEL = "model"

# The part that turns each modality's input into its embedding (pathology: patches -> features -> mil_pool).
MODALITY_ENCODER: dict[str, str] = {
    spec.KEY_PATHOLOGY: PATCH_ENCODER,
    spec.KEY_MRI: MRI_ENCODER,
    spec.KEY_CLINICAL: CLINICAL_ENCODER,
}

# Dynamic axis symbols (ONNX dim_param, TorchScript documentation).
DIM_PATCHES = "num_patches"
DIM_BATCH = "batch"


def embedding(modality: str) -> str:
    """Name of the per-modality embedding tensor passed from an encoder part to the fusion head."""
    if modality not in spec.MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {spec.MODALITIES}")
    return f"{modality}_embedding"
