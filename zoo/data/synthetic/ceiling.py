"""What the synthetic cohort holds: macro F1 of the Bayes classifier on the generator's own latents.

``python -m zoo.data.synthetic.ceiling [--data-dir DIR | --signal-pathology 1.4 ...] [--patients 200000]``

The generator draws each modality's evidence from known distributions (zoo.data.synthetic.phenotype,
clinical_table, cohort), so the posterior over subtypes given everything a model could ever recover from the
rendered files can be written down exactly:

- pathology: the mean of the patient's slide latents, ``signal * CLASS_MEANS + N(0, I) + N(0, jitter^2 / n_slides)``;
- MRI: ``signal * CLASS_MEANS + N(0, I)``;
- clinical: receptor status = ``expression > 0`` with ``expression ~ N(signal * mean, 1)`` (so
  ``P(status = 1) = Phi(signal * mean)``), age ~ N(mean, 12) (clipped to 25..95 and rounded), tumour size
  ~ lognormal(log mean, 0.5) (clipped, rounded), lymph nodes ~ Poisson(rate * Gamma(2, 0.5)) = negative
  binomial; each value missing at its rate; the receptor-free control drops ER/PR/HER2;
- a patient without MRI or slides (``missing_mri`` / ``missing_wsi``) contributes no evidence for it.

Patients are simulated from those distributions (Monte Carlo, seeded) and classified by the MAP rule
(prior x likelihood: the accuracy-optimal rule). Its macro F1 per modality subset is the ceiling a model of the
rendered images can reach in expectation; rendering, tiling and clipping only lose information. MAP maximises
accuracy, not macro F1: a class-weighted model can trade a little accuracy for minority-class recall, so the
``balanced`` rule (equal priors) is reported next to it, and ``ceiling`` is the better of the two.
The Monte Carlo standard error of each figure is about 0.002 at 200,000 patients.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import stats

from zoo import spec
from zoo.cli_help import HelpFormatter

from .clinical_table import AGE_MEAN, LYMPH_NODES_RATE, MISSING_RATE, TUMOR_SIZE_MEAN_MM
from .phenotype import CLASS_MEANS, PREVALENCE, SLIDE_COUNT_PROBS, Signals

AGE_SD = 12.0
TUMOR_SIZE_LOG_SD = 0.5
LYMPH_GAMMA_SHAPE, LYMPH_GAMMA_SCALE = 2.0, 0.5
DEFAULT_PATIENTS = 200_000


@dataclass(frozen=True)
class CohortModel:
    """The generator parameters the ceiling depends on (cohort.json holds them for a generated cohort)."""

    signals: Signals
    missing_mri: float = 0.04
    missing_wsi: float = 0.04
    slide_jitter: float = 0.25

    @classmethod
    def from_cohort(cls, data_dir: str | Path) -> "CohortModel":
        from .cohort import COHORT_MANIFEST, SLIDE_LATENT_JITTER

        path = Path(data_dir) / COHORT_MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: the ceiling is defined for synthetic cohorts only "
                                    "(generate one with python -m zoo.data.synthetic, or pass --signal-* values)")
        params = json.loads(path.read_text())["params"]
        return cls(Signals(**params["signals"]), float(params["missing_mri"]), float(params["missing_wsi"]),
                   SLIDE_LATENT_JITTER)


def _gaussian_loglik(x: np.ndarray, means: np.ndarray, var: np.ndarray) -> np.ndarray:
    """[P, d] observations, [K, d] means, [P] per-patient isotropic variance -> [P, K] log-likelihoods."""
    d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    return -0.5 * d2 / var[:, None] - 0.5 * means.shape[1] * np.log(var)[:, None]


def _simulate(model: CohortModel, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Labels and per-modality log-likelihoods [n, K] (0 where the evidence is missing)."""
    k = spec.NUM_CLASSES
    y = rng.choice(k, size=n, p=PREVALENCE)
    sig = model.signals
    out: dict[str, np.ndarray] = {"label": y}

    # Pathology: mean of the slide latents.
    slides = rng.choice(len(SLIDE_COUNT_PROBS), size=n, p=SLIDE_COUNT_PROBS) + 1
    var = 1.0 + model.slide_jitter ** 2 / slides
    mu = sig.pathology * CLASS_MEANS["pathology"]
    x = mu[y] + rng.standard_normal((n, mu.shape[1])) * np.sqrt(var)[:, None]
    ll = _gaussian_loglik(x, mu, var)
    ll[rng.random(n) < model.missing_wsi] = 0.0
    out["pathology"] = ll

    mu = sig.mri * CLASS_MEANS["mri"]
    x = mu[y] + rng.standard_normal((n, mu.shape[1]))
    ll = _gaussian_loglik(x, mu, np.ones(n))
    ll[rng.random(n) < model.missing_mri] = 0.0
    out["mri"] = ll

    # Receptor status: a probit observation of each expression axis, each missing at its rate.
    mu = sig.clinical * CLASS_MEANS["clinical"]                       # [K, 3]
    status = (mu[y] + rng.standard_normal((n, 3))) > 0              # [n, 3]
    p1 = stats.norm.cdf(mu)                                          # [K, 3]
    ll = np.where(status[:, None, :], np.log(p1)[None], np.log1p(-p1)[None])  # [n, K, 3]
    ll = np.where((rng.random((n, 3)) < MISSING_RATE["receptor"])[:, None, :], 0.0, ll)
    out["receptors"] = ll.sum(-1)

    age_mean = np.asarray(AGE_MEAN)
    age = age_mean[y] + AGE_SD * rng.standard_normal(n)
    ll = stats.norm.logpdf(age[:, None], age_mean[None], AGE_SD)
    other = np.where((rng.random(n) < MISSING_RATE["age"])[:, None], 0.0, ll)

    log_size = np.log(np.asarray(TUMOR_SIZE_MEAN_MM))
    size = log_size[y] + TUMOR_SIZE_LOG_SD * rng.standard_normal(n)
    ll = stats.norm.logpdf(size[:, None], log_size[None], TUMOR_SIZE_LOG_SD)  # the 1/x Jacobian cancels
    other = other + np.where((rng.random(n) < MISSING_RATE["tumor_size"])[:, None], 0.0, ll)

    # Poisson(rate * Gamma(shape, scale)) = negative binomial(r = shape, p = 1 / (1 + rate * scale)).
    rates = np.asarray(LYMPH_NODES_RATE)
    nodes = rng.poisson(rates[y] * rng.gamma(LYMPH_GAMMA_SHAPE, LYMPH_GAMMA_SCALE, n))
    ll = stats.nbinom.logpmf(nodes[:, None], LYMPH_GAMMA_SHAPE, 1.0 / (1.0 + rates[None] * LYMPH_GAMMA_SCALE))
    other = other + np.where((rng.random(n) < MISSING_RATE["lymph_nodes"])[:, None], 0.0, ll)
    out["clinical_other"] = other
    return out


def _macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, list[float]]:
    f1s, recalls = [], []
    for c in range(k):
        tp = float(np.sum((pred == c) & (y == c)))
        fp, fn = float(np.sum((pred == c) & (y != c))), float(np.sum((pred != c) & (y == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
    return float(np.mean(f1s)), recalls


# A subset is named by modalities; "clinical" with or without the receptor columns.
SUBSET_EVIDENCE = {"pathology": ("pathology",), "mri": ("mri",), "clinical": ("receptors", "clinical_other"),
                   "clinical_norec": ("clinical_other",)}


def ceilings(model: CohortModel, subsets: Iterable[Sequence[str]] | None = None, patients: int = DEFAULT_PATIENTS,
             seed: int = 0) -> dict[tuple[str, ...], dict]:
    """{subset: {"map": F1, "balanced": F1, "ceiling": max, "recall_map": [per class]}} for each subset."""
    if subsets is None:
        subsets = [c for r in (1, 2, 3) for c in itertools.combinations(spec.MODALITIES, r)] + [("clinical_norec",)]
    sim = _simulate(model, int(patients), np.random.default_rng(seed))
    y, k = sim["label"], spec.NUM_CLASSES
    log_prior = np.log(np.asarray(PREVALENCE))
    results = {}
    for subset in subsets:
        subset = tuple(subset)
        unknown = [m for m in subset if m not in SUBSET_EVIDENCE]
        if unknown:
            raise ValueError(f"unknown modality {unknown} for the ceiling; valid: {', '.join(SUBSET_EVIDENCE)}")
        ll = sum(sim[e] for m in subset for e in SUBSET_EVIDENCE[m])
        f1_map, recall = _macro_f1(y, np.argmax(ll + log_prior, axis=1), k)
        f1_bal, _ = _macro_f1(y, np.argmax(ll, axis=1), k)
        results[subset] = {"map": f1_map, "balanced": f1_bal, "ceiling": max(f1_map, f1_bal), "recall_map": recall}
    return results


def subset_key(modalities: Sequence[str], clinical_features: Sequence[str]) -> tuple[str, ...]:
    """The ceiling's subset for an entry: its modalities, clinical without receptors when it drops them."""
    receptors = any(f in clinical_features for f in spec.RECEPTOR_FEATURES)
    return tuple("clinical" if m == "clinical" and receptors else "clinical_norec" if m == "clinical" else m
                 for m in spec.MODALITIES if m in modalities)


def _label(subset: tuple[str, ...]) -> str:
    return " + ".join(subset)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.data.synthetic.ceiling", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="a generated cohort (reads its cohort.json); without it, the --signal-* values are used")
    defaults = Signals(1.4, 1.3, 0.8)
    for name in spec.MODALITIES:
        p.add_argument(f"--signal-{name}", type=float, default=getattr(defaults, name),
                       help=f"class separation of the {name} latent (ignored with --data-dir)")
    p.add_argument("--missing-mri", type=float, default=0.04, help="ignored with --data-dir")
    p.add_argument("--missing-wsi", type=float, default=0.04, help="ignored with --data-dir")
    p.add_argument("--patients", type=int, default=DEFAULT_PATIENTS, help="Monte Carlo patients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if a.data_dir is not None:
        model = CohortModel.from_cohort(a.data_dir)
    else:
        model = CohortModel(Signals(a.signal_pathology, a.signal_mri, a.signal_clinical), a.missing_mri,
                            a.missing_wsi)
    res = ceilings(model, patients=a.patients, seed=a.seed)
    if a.json:
        print(json.dumps({_label(s): r for s, r in res.items()}, indent=2))
        return 0
    se = math.sqrt(0.25 / a.patients) * 2
    print(f"Bayes ceiling, {a.patients:,} simulated patients, signals {model.signals.as_dict()}, "
          f"missing MRI {model.missing_mri:g} / WSI {model.missing_wsi:g} (Monte Carlo s.e. ~{se:.3f})")
    print(f"{'subset':34s} {'MAP F1':>7s} {'balanced':>9s}  MAP recall per class ({', '.join(spec.CLASS_NAMES)})")
    for subset, r in res.items():
        recall = " ".join(f"{v:.2f}" for v in r["recall_map"])
        print(f"{_label(subset):34s} {r['map']:7.3f} {r['balanced']:9.3f}  {recall}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
