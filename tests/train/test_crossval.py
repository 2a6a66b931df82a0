"""Out-of-fold pooling, the paired bootstrap and the ablation-shape expectations; a 3-fold sweep end to end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from zoo.analysis.crossval import (
    ablation_expectations,
    ablation_shape,
    macro_f1,
    out_of_fold_predictions,
    paired_bootstrap,
)
from zoo.analysis.sweep import run_sweep
from zoo.spec import CLASS_NAMES, METRICS_FILE, VAL_PREDICTIONS_FILE
from zoo.training.metrics import classification_metrics
from zoo.training.pipeline import run_training
from zoo.training.trainer import PREDICTIONS_FILE


def _table(labels: np.ndarray, predicted: np.ndarray, ids=None) -> pd.DataFrame:
    probs = np.full((len(labels), 4), 0.1)
    probs[np.arange(len(labels)), predicted] = 0.7
    table = pd.DataFrame({"patient_id": ids if ids is not None else [f"P{i:03d}" for i in range(len(labels))],
                          "label": labels})
    for k in range(4):
        table[f"p_{k}"] = probs[:, k]
    return table


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, p = rng.integers(0, 4, 50), rng.integers(0, 3, 50)  # class 3 sometimes never predicted
        expected = f1_score(y, p, labels=range(4), average="macro", zero_division=0)
        assert macro_f1(y, p, 4) == pytest.approx(expected)
        assert macro_f1(y, p, 4) == pytest.approx(classification_metrics(y, np.eye(4)[p])["f1_macro"])


def test_paired_bootstrap_separates_a_real_difference_from_none():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    good = np.where(rng.random(200) < 0.8, labels, rng.integers(0, 4, 200))
    bad = rng.integers(0, 4, 200)
    ahead = paired_bootstrap([_table(labels, good)], [_table(labels, bad)], resamples=300)
    assert ahead["ci_low"] > 0 and ahead["p_ahead"] == 1.0
    tie = paired_bootstrap([_table(labels, good)], [_table(labels, good)], resamples=50)
    assert tie["delta_f1"] == 0 and tie["ci_low"] == 0 == tie["ci_high"]
    with pytest.raises(ValueError, match="different patients"):
        paired_bootstrap([_table(labels, good)], [_table(labels[:100], good[:100])], resamples=10)


def test_ablation_expectations_follow_the_seed_table():
    labels = ["path+mri+clin", "path+mri", "path+clin", "mri+clin", "path", "mri", "clin", "clin-norec"]
    pairs = set(ablation_expectations(labels))
    assert len(pairs) == 12  # the full set over 6 subsets, each pair over its 2 members
    assert ("path+mri+clin", "clin") in pairs and ("path+clin", "path") in pairs
    assert ("path+mri", "clin") not in pairs and not any("clin-norec" in p for p in pairs)
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 120)
    oof = {"path+clin": [_table(y, y)], "path": [_table(y, rng.integers(0, 4, 120))], "clin": [_table(y, y)]}
    shape = ablation_shape(oof, resamples=100).set_index("expected_worse")
    assert shape.loc["path", "verdict"] == "holds" and shape.loc["clin", "verdict"] == "unresolved"


def test_product_late_fusion_is_the_joint_posterior_of_independent_modalities():
    from zoo.analysis.late_fusion import combine

    # Two modalities independent given the class, each a 1-D Gaussian around a class mean; a member that outputs its
    # modality's exact posterior under a uniform prior. The renormalised product is the joint posterior; the mean
    # is not.
    rng = np.random.default_rng(0)
    means = np.array([[-2.0, -0.5, 0.5, 2.0], [1.5, -1.5, 0.0, 0.7]])
    x = rng.normal(size=(500, 2)) * 1.2

    def posterior(log_lik):
        p = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    log_lik = [-0.5 * (x[:, [m]] - means[m]) ** 2 for m in range(2)]
    members = np.stack([posterior(ll) for ll in log_lik])
    joint = posterior(log_lik[0] + log_lik[1])
    np.testing.assert_allclose(combine(members, "product"), joint, atol=1e-9)
    assert np.abs(combine(members, "mean") - joint).max() > 0.05
    # a member that knows nothing (uniform) leaves the product unchanged; a probability of 0 does not produce NaN
    uniform = np.full_like(members[0], 0.25)
    np.testing.assert_allclose(combine(np.stack([members[0], uniform]), "product"), members[0], atol=1e-12)
    zero = members.copy()
    zero[0, :, 0] = 0.0
    assert np.isfinite(combine(zero, "product")).all()
    with pytest.raises(ValueError, match="late-fusion rule"):
        combine(members, "median")


def test_out_of_fold_refuses_overlapping_folds(tmp_path):
    y = np.arange(8) % 4
    for i in range(2):
        (tmp_path / f"f{i}").mkdir()
        _table(y, y).to_csv(tmp_path / f"f{i}" / PREDICTIONS_FILE, index=False)
    with pytest.raises(ValueError, match="more than one run"):
        out_of_fold_predictions([tmp_path / "f0", tmp_path / "f1"])
    with pytest.raises(FileNotFoundError, match="did not finish"):
        out_of_fold_predictions([tmp_path / "missing"])


def test_three_fold_sweep_predicts_every_patient_once_and_checks_the_shape(easy_cohort, tmp_path, capsys):
    entries = ["pathology_only", "clinical_only", "concatenate-path_clin"]
    table = run_sweep(entries, seeds=[0], recipe="tiny", data_dir=easy_cohort, output_root=tmp_path, name="cv",
                      overrides=["training.epochs=1"], folds=3, log=lambda _m: None,
                      train_fn=lambda name, **kw: run_training(name, **kw, progress=False, log=lambda _m: None))
    out = tmp_path / "sweeps" / "cv"
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 9 and sorted(runs["fold"].unique()) == [0, 1, 2] and (runs["status"] == "ok").all()
    for fold in range(3):  # the caches training writes are shared, even those that did not exist before the sweep
        for cache in ("features", "pretrained"):
            link = out / "folds" / f"fold{fold}" / cache
            assert link.is_symlink() and link.resolve() == (easy_cohort / cache).resolve(), link
    cohort = pd.concat([pd.read_csv(easy_cohort / f"{s}_clinical.csv", dtype={"patient_id": str})
                        for s in ("train", "val", "test")])
    for entry in entries:
        oof = out_of_fold_predictions([out / "runs" / entry / "seed0" / f"fold{f}" for f in range(3)])
        assert sorted(oof["patient_id"]) == sorted(cohort["patient_id"])
        np.testing.assert_array_equal(oof["label"], cohort.set_index("patient_id").loc[oof["patient_id"],
                                                                                       "molecular_subtype"])
    # the late-fusion baselines of the two single-modality entries: the mean, and the renormalised product, of
    # their out-of-fold probabilities
    assert sorted(table["entry"]) == sorted([*entries, "late_fusion-path_clin", "late_product-path_clin"])
    assert (table["seeds"] == 1).all()
    members = [out_of_fold_predictions([out / "runs" / e / "seed0" / f"fold{f}" for f in range(3)])
               for e in ("pathology_only", "clinical_only")]
    columns = [c for c in members[0].columns if c.startswith("p_")]
    mean = (members[0][columns].to_numpy() + members[1][columns].to_numpy()) / 2
    late = table.set_index("entry").loc["late_fusion-path_clin"]
    expected = macro_f1(members[0]["label"].to_numpy(), mean.argmax(1), len(CLASS_NAMES))
    assert late["test_f1_mean"] == pytest.approx(expected) and late["fusion"] == "late (mean)"
    product = members[0][columns].to_numpy() * members[1][columns].to_numpy()
    product /= product.sum(axis=1, keepdims=True)
    stored = pd.read_csv(out / "late_fusion" / "late_product-path_clin" / "seed0" / PREDICTIONS_FILE)
    np.testing.assert_allclose(stored.sort_values("patient_id")[columns].to_numpy(), product, rtol=1e-6)
    late_product = table.set_index("entry").loc["late_product-path_clin"]
    assert late_product["fusion"] == "late (product)" and late_product["test_f1_mean"] == pytest.approx(
        macro_f1(members[0]["label"].to_numpy(), product.argmax(1), len(CLASS_NAMES)))
    # its validation score: per fold, the members' validation predictions averaged, then the mean over folds
    fold_f1 = []
    for f in range(3):
        val = [pd.read_csv(out / "runs" / e / "seed0" / f"fold{f}" / VAL_PREDICTIONS_FILE).sort_values("patient_id")
               for e in ("pathology_only", "clinical_only")]
        assert val[0]["patient_id"].tolist() == val[1]["patient_id"].tolist()
        fold_mean = (val[0][columns].to_numpy() + val[1][columns].to_numpy()) / 2
        fold_f1.append(macro_f1(val[0]["label"].to_numpy(), fold_mean.argmax(1), len(CLASS_NAMES)))
    assert late["val_f1_mean"] == pytest.approx(np.mean(fold_f1)) and late["val_f1_std"] == 0
    assert (out / "late_fusion" / "late_fusion-path_clin" / "seed0" / PREDICTIONS_FILE).is_file()
    assert "out-of-fold" in (out / "leaderboard.md").read_text()
    pooled = json.loads((out / "runs" / "clinical_only" / "seed0" / "out_of_fold_metrics.json").read_text())
    assert pooled["num_samples"] == len(cohort) and set(pooled["per_class"]) == set(CLASS_NAMES)
    assert table.set_index("entry").loc["clinical_only", "test_f1_mean"] == pytest.approx(pooled["f1_macro"])
    shape = pd.read_csv(out / "ablation_shape.csv")
    assert set(zip(shape["expected_better"], shape["expected_worse"])) == {("path+clin", "path"), ("path+clin", "clin")}
    assert "expected orderings hold" in (out / "ablation_shape.md").read_text()
    board = pd.read_csv(out / "leaderboard.csv")
    (out / "ablation_shape.csv").unlink()
    from zoo.analysis.sweep import main as sweep_main

    assert sweep_main(["--report", str(out)]) == 0  # the k-fold leaderboard and shape are redrawn from disk
    pd.testing.assert_frame_equal(pd.read_csv(out / "leaderboard.csv"), board)
    assert (out / "ablation_shape.csv").is_file()
    # --archive: the results without checkpoints; copied back, --resume reads every run and trains none
    assert sweep_main(["--archive", str(out), str(tmp_path / "archive")]) == 0
    kept = [p.relative_to(tmp_path / "archive") for p in (tmp_path / "archive").rglob("*") if p.is_file()]
    assert not [p for p in kept if p.suffix in (".pt", ".h5") or "tensorboard" in p.parts or "folds" in p.parts]
    assert Path("runs/clinical_only/seed0/fold2", PREDICTIONS_FILE) in kept and Path("leaderboard.md") in kept
    shutil.copytree(tmp_path / "archive", tmp_path / "elsewhere" / "sweeps" / "cv")
    trained = []
    again = run_sweep(entries, seeds=[0], recipe="tiny", data_dir=easy_cohort, output_root=tmp_path / "elsewhere",
                      name="cv", overrides=["training.epochs=1"], folds=3, log=lambda _m: None, resume=True,
                      train_fn=lambda name, **kw: trained.append(name))
    assert trained == []
    pd.testing.assert_frame_equal(again.reset_index(drop=True), table.reset_index(drop=True))
    # --merge: an entry run later on the same folds joins the sweep's leaderboard, late rows and shape
    train = lambda name, **kw: run_training(name, **kw, progress=False, log=lambda _m: None)  # noqa: E731
    run_sweep(["clinical_norec_only"], seeds=[0], recipe="tiny", data_dir=easy_cohort, output_root=tmp_path,
              name="later", overrides=["training.epochs=1"], folds=3, log=lambda _m: None, train_fn=train)
    later, merged = tmp_path / "sweeps" / "later", tmp_path / "merged"
    assert sweep_main(["--merge", str(merged), str(tmp_path / "archive"), str(later)]) == 0
    both = pd.read_csv(merged / "leaderboard.csv").set_index("entry")
    assert sorted(both.index) == sorted([*table["entry"], "clinical_norec_only"])
    pd.testing.assert_series_equal(both.loc["clinical_only"], board.set_index("entry").loc["clinical_only"])
    assert both.loc["clinical_norec_only", "test_f1_mean"] == pytest.approx(
        pd.read_csv(later / "leaderboard.csv").set_index("entry").loc["clinical_norec_only", "test_f1_mean"])
    assert len(pd.read_csv(merged / "runs.csv")) == 12 and (merged / "ablation_shape.md").is_file()
    assert not list(merged.rglob("*.pt"))
    assert sweep_main(["--merge", str(tmp_path / "m2"), str(out), str(tmp_path / "archive")]) == 2  # runs twice
    assert sweep_main(["--merge", str(merged), str(out), str(later)]) == 2  # dest already a sweep
    older = tmp_path / "older"  # `later`'s runs as seed 1 of an older entry version: one entry, two versions
    shutil.copytree(later, older)
    (older / "runs" / "clinical_norec_only" / "seed0").rename(older / "runs" / "clinical_norec_only" / "seed1")
    pd.read_csv(older / "runs.csv").assign(seed=1).to_csv(older / "runs.csv", index=False)
    for metrics_file in (older / "runs").rglob(METRICS_FILE):
        metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "version": "0.9"}))
    assert sweep_main(["--merge", str(tmp_path / "m4"), str(later), str(older)]) == 2
    assert "clinical_norec_only ran at entry version" in capsys.readouterr().err
    run_sweep(["clinical_only"], seeds=[1], recipe="tiny", data_dir=easy_cohort, output_root=tmp_path,
              name="other_folds", overrides=["training.epochs=1"], folds=2, log=lambda _m: None, train_fn=train)
    assert sweep_main(["--merge", str(tmp_path / "m3"), str(out), str(tmp_path / "sweeps" / "other_folds")]) == 2


def test_folds_below_two_are_refused_on_the_command_line(capsys):
    from zoo.analysis.sweep import main as sweep_main

    with pytest.raises(SystemExit):
        sweep_main(["clinical_only", "--folds", "1"])
    assert "--folds must be >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # patterns and overrides may come after the options
        sweep_main(["clinical_only", "--seeds", "0", "--folds", "1", "training.epochs=1"])
    assert "--folds must be >= 2" in capsys.readouterr().err


def test_compare_runs_pairs_two_settings_on_the_same_patients(tmp_path, capsys):
    from zoo.analysis.crossval import main as crossval_main

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 90)
    ids = [f"P{i:03d}" for i in range(90)]
    good, noisy = y.copy(), np.where(rng.random(90) < 0.4, y, rng.integers(0, 4, 90))
    for run, predicted, val_f1 in (("a", good, 0.9), ("b", noisy, 0.5)):
        for seed in (0, 1):
            for fold in range(3):
                fold_dir = tmp_path / run / f"seed{seed}" / f"fold{fold}"
                fold_dir.mkdir(parents=True)
                part = slice(30 * fold, 30 * fold + 30)
                _table(y[part], predicted[part], ids[part]).to_csv(fold_dir / PREDICTIONS_FILE, index=False)
                (fold_dir / "metrics.json").write_text(json.dumps({"best_val_f1": val_f1}))
    (tmp_path / "b" / "seed2" / "fold0").mkdir(parents=True)  # a seed still running is left out
    assert crossval_main([str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "| 0, 1 | 3 | 0.900 | 1.000 |" in out and "| 0, 1 | 3 | 0.500 |" in out and ": a ahead." in out
    # per seed: F1, AUC and every class's recall (a predicts every patient right)
    perfect = "1.000, 1.000, 1.00 / 1.00 / 1.00 / 1.00"
    assert f"- a: seed 0: {perfect}; seed 1: {perfect}" in out
    noisy_recall = [np.mean(noisy[y == k] == k) for k in range(4)]
    assert "- b: seed 0: " in out and " / ".join(f"{r:.2f}" for r in noisy_recall) in out
    assert crossval_main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "no finished k-fold seed" in capsys.readouterr().err
