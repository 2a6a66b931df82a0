"""The Bayes ceiling: checked against the generator's own draws and against what a fitted model reaches."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from zoo import spec
from zoo.data.synthetic.ceiling import CohortModel, ceilings, main, subset_key
from zoo.data.synthetic.phenotype import Signals, sample_phenotype

DEFAULT = CohortModel(Signals(1.4, 1.3, 0.8))


def test_more_evidence_never_lowers_the_ceiling():
    res = ceilings(DEFAULT, patients=40_000)
    single = {m: res[(m,)]["map"] for m in spec.MODALITIES}
    everything = res[spec.MODALITIES]["map"]
    for pair in (("pathology", "mri"), ("pathology", "clinical"), ("mri", "clinical")):
        assert res[pair]["map"] > max(single[m] for m in pair)
        assert everything > res[pair]["map"]
    assert res[("clinical_norec",)]["map"] < single["clinical"]  # receptors carry most of the clinical signal


def test_no_signal_leaves_the_prior_and_a_strong_one_separates():
    flat = ceilings(CohortModel(Signals(0.0, 0.0, 0.0), 0.0, 0.0), [("pathology",), ("mri",)], patients=20_000)
    # MAP with no evidence always answers the most frequent class (Luminal A, prevalence 0.5): F1 = (2/3) / 4.
    assert flat[("mri",)]["map"] == pytest.approx(1 / 6, abs=0.01)
    sharp = ceilings(CohortModel(Signals(8.0, 8.0, 8.0), 0.0, 0.0), [("pathology",), ("mri",)], patients=20_000)
    assert sharp[("mri",)]["map"] > 0.99 and sharp[("pathology",)]["map"] > 0.99


def test_a_model_fitted_on_the_generators_latents_approaches_but_does_not_pass_the_ceiling():
    """The ceiling simulates the generator's distributions itself; a logistic regression trained on the latents
    the real generator draws (the family of the Bayes rule for shared-covariance Gaussians) must land just under
    it: this fails if the simulation and zoo.data.synthetic.phenotype disagree."""
    signals = Signals(1.4, 1.3, 0.8)
    draws = [sample_phenotype(7, i, signals, missing_mri=0.0, missing_wsi=0.0) for i in range(16_000)]
    x = np.array([d.mri for d in draws])
    y = np.array([d.label for d in draws])
    fit = LogisticRegression(max_iter=2000).fit(x[:8000], y[:8000])
    reached = f1_score(y[8000:], fit.predict(x[8000:]), average="macro")
    ceiling = ceilings(CohortModel(signals, 0.0, 0.0), [("mri",)], patients=200_000)[("mri",)]["ceiling"]
    assert ceiling - 0.04 < reached < ceiling + 0.015  # 8,000 test patients: F1 s.e. ~0.006


def test_subset_key_follows_the_entrys_clinical_features():
    assert subset_key(("mri", "pathology"), spec.CLINICAL_FEATURES) == ("pathology", "mri")
    assert subset_key(("clinical",), spec.CLINICAL_FEATURES_NO_RECEPTORS) == ("clinical_norec",)


def test_cli_reads_a_cohort_and_refuses_a_folder_without_one(tmp_path, capsys):
    assert main(["--patients", "5000"]) == 0
    out = capsys.readouterr().out
    assert "pathology + mri + clinical" in out and "MAP F1" in out
    with pytest.raises(FileNotFoundError, match="cohort.json"):
        main(["--data-dir", str(tmp_path)])
