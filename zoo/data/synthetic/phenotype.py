"""Per-patient latent phenotype of the synthetic cohort.

Each modality sees the subtype only through its own latent vector::

    latent_m = signal_m * CLASS_MEANS[m][subtype] + N(0, I)

The noise is drawn independently per modality and per patient, so modalities carry partly independent
evidence; the class means are arranged so each modality separates different class pairs
(pathology: grade separates Luminal A from the rest, immune/apocrine features separate HER2-enriched from
triple-negative; MRI: margin and enhancement kinetics; clinical: noisy receptor status, which barely
separates Luminal A from Luminal B). Fusing them therefore beats every subset. The ``signal_*`` strengths
set the difficulty; the defaults approximate the seed tutorial's table (clinical < MRI < pathology < all).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from zoo import spec

# TCGA-BRCA-like prevalence in spec.CLASS_NAMES order (Luminal A, Luminal B, HER2-enriched, Triple-negative).
PREVALENCE: tuple[float, ...] = (0.50, 0.20, 0.12, 0.18)

# Pathology latent: (grade, immune infiltrate, apocrine / eosinophilic cytoplasm).
PATHOLOGY_AXES = ("grade", "immune", "apocrine")
# MRI latent: (spiculation, enhancement, rim enhancement, T2 signal).
MRI_AXES = ("spiculation", "enhancement", "rim", "t2")
# Clinical latent: receptor expression (ER, PR, HER2); status = expression > 0.
RECEPTOR_AXES = ("er", "pr", "her2")

CLASS_MEANS: dict[str, np.ndarray] = {
    "pathology": np.array([
        [-1.2, -0.6, -0.3],   # Luminal A: low grade, glands, few lymphocytes
        [0.0, -0.4, -0.3],    # Luminal B
        [0.6, 0.2, 1.0],      # HER2-enriched: pleomorphic, apocrine
        [1.0, 1.0, -0.6],     # Triple-negative: solid sheets, dense TILs
    ]),
    "mri": np.array([
        [1.0, -0.8, -0.5, -0.3],  # Luminal A: spiculated, slow enhancement
        [0.8, 0.3, -0.3, -0.3],   # Luminal B
        [0.0, 1.0, 0.0, 0.2],     # HER2-enriched: strong enhancement
        [-1.0, 0.3, 1.0, 1.0],    # Triple-negative: round, smooth, rim-enhancing, T2-bright
    ]),
    "clinical": np.array([
        [1.0, 1.0, -1.0],   # Luminal A: ER+ PR+ HER2-
        [1.0, 0.0, 0.0],    # Luminal B: ER+, PR and HER2 variable
        [-1.0, -1.0, 1.0],  # HER2-enriched
        [-1.0, -1.0, -1.0], # Triple-negative
    ]),
}
assert all(m.shape[0] == spec.NUM_CLASSES for m in CLASS_MEANS.values())

# Slides per patient: 1..5, mean ~2.3 (the seed's TCGA subset).
SLIDE_COUNT_PROBS: tuple[float, ...] = (0.32, 0.30, 0.20, 0.11, 0.07)


@dataclass(frozen=True)
class Signals:
    """Class separation of each modality's latent, in units of its per-patient noise."""

    pathology: float = 1.0
    mri: float = 1.0
    clinical: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Phenotype:
    index: int
    patient_id: str
    label: int
    pathology: np.ndarray
    mri: np.ndarray
    receptors: np.ndarray
    n_slides: int
    has_mri: bool
    signals: Signals = field(default_factory=Signals)


# Independent random streams per patient, so any part can be regenerated alone and in any order.
STREAMS = {"label": 0, "pathology": 1, "mri": 2, "clinical": 3, "presence": 4, "slides": 5, "mri_render": 6,
           "clinical_table": 7}


def patient_rng(seed: int, index: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, index, STREAMS[stream]])


def patient_id_for(index: int) -> str:
    return f"BRCA-{index:05d}"


def sample_phenotype(seed: int, index: int, signals: Signals, missing_mri: float, missing_wsi: float) -> Phenotype:
    label = int(patient_rng(seed, index, "label").choice(spec.NUM_CLASSES, p=PREVALENCE))

    def latent(modality: str, strength: float) -> np.ndarray:
        means = CLASS_MEANS[modality][label]
        return strength * means + patient_rng(seed, index, modality).standard_normal(means.shape)

    presence = patient_rng(seed, index, "presence").random(2)
    n_slides = int(patient_rng(seed, index, "slides").choice(len(SLIDE_COUNT_PROBS), p=SLIDE_COUNT_PROBS)) + 1
    return Phenotype(
        index=index,
        patient_id=patient_id_for(index),
        label=label,
        pathology=latent("pathology", signals.pathology),
        mri=latent("mri", signals.mri),
        receptors=latent("clinical", signals.clinical),
        n_slides=0 if presence[1] < missing_wsi else n_slides,
        has_mri=bool(presence[0] >= missing_mri),
        signals=signals,
    )
