"""Names shared by every layer: modalities, classes, batch keys.

A tensor or batch key is typed here once; everything else imports it.
"""
from __future__ import annotations

MODALITIES: tuple[str, ...] = ("pathology", "mri", "clinical")

# The fusion type with no fused term: the per-modality heads' predictions combined (zoo.models.fusion.FusionHead).
LATE_FUSION_TYPE = "late"

# Cohort splits (DIR/<split>_clinical.csv) and training recipes (configs/recipes/<recipe>.yaml).
SPLITS: tuple[str, ...] = ("train", "val", "test")
RECIPES: tuple[str, ...] = ("gpu", "cpu", "tiny")

# Files of a training run folder (outputs/<entry>/).
BEST_CHECKPOINT = "best.pt"                 # weights of the best validation epoch (what export reads)
LAST_CHECKPOINT = "last.pt"                 # the latest epoch, with optimizer/RNG state for --resume
METRICS_FILE = "metrics.json"               # the trainer's result: history, best val, test metrics
CONFIG_FILE = "config.yaml"                 # the resolved config the run trained with
PREDICTIONS_FILE = "test_predictions.csv"   # per test patient: label and class probabilities of best.pt
VAL_PREDICTIONS_FILE = "val_predictions.csv"  # the same for the validation patients (choices made on validation)

CLASS_NAMES: tuple[str, ...] = ("Luminal A", "Luminal B", "HER2-enriched", "Triple-negative")
NUM_CLASSES = len(CLASS_NAMES)

# Clinical table columns.
CLINICAL_ID = "patient_id"
CLINICAL_LABEL = "molecular_subtype"
RECEPTOR_FEATURES: tuple[str, ...] = ("er_status", "pr_status", "her2_status")
CLINICAL_FEATURES: tuple[str, ...] = ("age", "tumor_size", "lymph_nodes", *RECEPTOR_FEATURES)
CLINICAL_FEATURES_NO_RECEPTORS: tuple[str, ...] = ("age", "tumor_size", "lymph_nodes")

# Batch keys (dataset -> collate -> model).
KEY_PATIENT_ID = "patient_id"
KEY_PATHOLOGY = "pathology"                    # uint8 [B,N,3,H,W]
KEY_PATHOLOGY_FEATURES = "pathology_features"  # float32 [B,N,D] (cached frozen-encoder features)
KEY_PATHOLOGY_MASK = "pathology_mask"          # bool [B,N], True = real patch
KEY_PATHOLOGY_COORDS = "pathology_coords"      # int64 [B,N,3] = (slide index, x, y) at level 0
KEY_SLIDE_IDS = "slide_ids"                    # list[list[str]]
KEY_MRI = "mri"                                # float32 [B,C,X,Y,Z], Z = thick-slice axis
KEY_CLINICAL = "clinical"                      # float32 [B,F]
KEY_PRESENCE = "presence"                      # bool [B,len(MODALITIES)], canonical order
KEY_LABEL = "label"                            # int64 [B]

# aux keys returned by model forward.
AUX_PATHOLOGY_ATTENTION = "pathology_attention"  # [B,N], zero on padding
AUX_FUSION_ATTENTION = "fusion_attention"        # [B,M] over model.modalities
AUX_EMBEDDINGS = "embeddings"                    # dict modality -> [B,E]
AUX_PRESENCE = "presence"                        # bool [B,M] over model.modalities (before modality dropout)
AUX_UNIMODAL_LOGITS = "unimodal_logits"          # dict modality -> [B,K], with model.fusion.auxiliary_heads

# ImageNet statistics used inside the patch encoder graph.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Keys of data.modalities.pathology (and a manifest's preprocessing.pathology) that tile at a magnification or mpp
# instead of a pyramid level (zoo.data.tile).
TILING_RESOLUTION_KEYS: tuple[str, ...] = ("target_magnification", "target_mpp", "assume_magnification")
