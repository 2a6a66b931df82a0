"""Clinical table row of a synthetic patient: noisy receptor status plus weakly informative variables."""
from __future__ import annotations

import numpy as np

from zoo import spec

from .phenotype import Phenotype, patient_rng

# Weak per-subtype shifts (Luminal A, Luminal B, HER2-enriched, Triple-negative).
AGE_MEAN = (62.0, 57.0, 55.0, 50.0)
TUMOR_SIZE_MEAN_MM = (18.0, 24.0, 28.0, 30.0)
LYMPH_NODES_RATE = (0.8, 1.6, 2.0, 1.5)
# Fraction of values not recorded.
MISSING_RATE = {"age": 0.02, "tumor_size": 0.06, "lymph_nodes": 0.08, "receptor": 0.10}


def clinical_row(ph: Phenotype, seed: int) -> dict[str, object]:
    rng = patient_rng(seed, ph.index, "clinical_table")
    k = ph.label
    row: dict[str, object] = {
        spec.CLINICAL_ID: ph.patient_id,
        "age": float(np.clip(rng.normal(AGE_MEAN[k], 12.0), 25, 95).round()),
        "tumor_size": float(np.clip(rng.lognormal(np.log(TUMOR_SIZE_MEAN_MM[k]), 0.5), 3, 120).round(1)),
        "lymph_nodes": float(rng.poisson(LYMPH_NODES_RATE[k] * rng.gamma(2.0, 0.5))),
    }
    for name in ("age", "tumor_size", "lymph_nodes"):
        if rng.random() < MISSING_RATE[name]:
            row[name] = np.nan
    for name, expression in zip(spec.RECEPTOR_FEATURES, ph.receptors):
        row[name] = np.nan if rng.random() < MISSING_RATE["receptor"] else float(expression > 0)
    row[spec.CLINICAL_LABEL] = k
    return row
