"""Synthetic multimodal breast-cancer cohort generator (``python -m zoo.data.synthetic``)."""
from .cohort import COHORT_MANIFEST, DEFAULT_SIGNALS, QUICKSTART, generate_cohort, split_patients
from .phenotype import PREVALENCE, Signals

__all__ = ["COHORT_MANIFEST", "DEFAULT_SIGNALS", "PREVALENCE", "QUICKSTART", "Signals", "generate_cohort",
           "split_patients"]
