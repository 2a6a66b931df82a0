"""End-to-end training on a real (tiny) synthetic cohort: learning, resume, reproducibility, outputs, bad input."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from zoo.spec import CLASS_NAMES, METRICS_FILE, PREDICTIONS_FILE, VAL_PREDICTIONS_FILE
from zoo.training.pipeline import TrainingSetupError, run_training

QUIET = dict(progress=False, log=lambda _m: None)
# Enough optimisation for a tiny model to fit the easy cohort's strong signal in seconds on 2 cores.
LEARN = ["training.epochs=10", "training.optimizer.lr=0.01", "training.scheduler.T_max=10",
         "training.early_stopping.patience=10"]


def test_training_beats_chance(easy_cohort, tmp_path):
    result = run_training("clinical_only", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "c",
                          overrides=LEARN, **QUIET)
    # 4 classes: chance accuracy is about 0.25 and chance macro F1 lower still.
    assert result["best_val_f1"] > 0.5, result["history"]
    assert result["test"]["accuracy"] > 0.4, result["test"]
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]


def test_training_writes_loadable_outputs(attention_run):
    out, result = attention_run
    assert result["epochs_run"] == 2 and 0 <= result["best_epoch"] < 2
    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert best["entry"] == "attention" and best["class_names"][0] == "Luminal A"
    assert best["preprocessing"]["clinical"] is not None and best["preprocessing"]["mri"]["sequences"] == ["T1"]
    pathology_config = best["config"]["data"]["modalities"]["pathology"]
    assert best["preprocessing"]["pathology"]["patch_size"] == pathology_config["patch_size"]
    assert {"optimizer", "scheduler", "rng", "trainer"} <= set(last) and "optimizer" not in best
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["confusion_matrix"] == result["test"]["confusion_matrix"]
    assert (out / "config.yaml").is_file()


def test_predictions_of_the_best_weights_reproduce_its_validation_and_test_scores(attention_run):
    out, result = attention_run
    for name, expected in ((VAL_PREDICTIONS_FILE, result["best_val"]), (PREDICTIONS_FILE, result["test"])):
        table = pd.read_csv(out / name)
        probabilities = table[[f"p_{c}" for c in CLASS_NAMES]].to_numpy()
        assert len(table) == expected["num_samples"] and table["patient_id"].is_unique
        f1 = f1_score(table["label"], probabilities.argmax(axis=1), average="macro",
                      labels=range(len(CLASS_NAMES)), zero_division=0)
        assert f1 == pytest.approx(expected["f1_macro"], abs=1e-6), name


def test_resume_after_interruption_matches_an_uninterrupted_run(easy_cohort, tmp_path):
    overrides = ["training.epochs=2", "training.scheduler.T_max=2", "data.modalities.pathology.max_patches=4"]
    full = run_training("attention-path_clin", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "full",
                        overrides=overrides, **QUIET)

    def interrupt(epoch, _row):
        if epoch == 0:
            raise KeyboardInterrupt  # as if killed after the first epoch's checkpoint

    # an earlier, finished run's results in the same folder: a run from epoch 0 removes them before its first epoch
    stale = (METRICS_FILE, PREDICTIONS_FILE, VAL_PREDICTIONS_FILE)
    (tmp_path / "cut").mkdir()
    for name in stale:
        shutil.copy(tmp_path / "full" / name, tmp_path / "cut" / name)
    with pytest.raises(KeyboardInterrupt):
        run_training("attention-path_clin", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "cut",
                     overrides=overrides, on_epoch_end=interrupt, **QUIET)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 0
    assert not any((tmp_path / "cut" / name).exists() for name in stale)
    seen = []
    resumed = run_training("attention-path_clin", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "cut",
                           overrides=overrides, resume=True, on_epoch_end=lambda e, _r: seen.append(e), **QUIET)
    assert seen == [1]  # only the remaining epoch ran
    def same(a, b):  # NaN-safe equality
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    assert same(resumed["history"], full["history"])  # same seed -> same numbers, interrupted or not
    assert same(resumed["test"], full["test"])
    # the best weights' validation predictions: the best epoch's pass (full run), a new pass of the best weights
    # where the best epoch ran before the cut (here epoch 0)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cut" / VAL_PREDICTIONS_FILE),
                                  pd.read_csv(tmp_path / "full" / VAL_PREDICTIONS_FILE), atol=1e-6)

    # a last.pt of another entry version (other parameters) is refused with the reason, not a state_dict error
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    torch.save({**state, "version": "0.9"}, tmp_path / "cut" / "last.pt")
    with pytest.raises(ValueError, match=r"version '0\.9'.*drop --resume"):
        run_training("attention-path_clin", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "cut",
                     overrides=overrides, resume=True, **QUIET)


def test_unknown_entry_is_a_clear_error(easy_cohort):
    with pytest.raises(TrainingSetupError, match="unknown zoo entry 'atention'"):
        run_training("atention", recipe="tiny", data_dir=easy_cohort, **QUIET)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingSetupError, match="holds no cohort"):
        run_training("clinical_only", recipe="tiny", data_dir=tmp_path / "nowhere", **QUIET)


def test_empty_split_is_a_clear_error(easy_cohort, tmp_path):
    data = tmp_path / "cohort"
    data.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(easy_cohort / f"{split}_clinical.csv", data)
    header = (data / "val_clinical.csv").read_text().splitlines()[0]
    (data / "val_clinical.csv").write_text(header + "\n")
    with pytest.raises(ValueError, match="val"):
        run_training("clinical_only", recipe="tiny", data_dir=data, output_dir=tmp_path / "out", **QUIET)


def test_entry_needing_a_modality_no_patient_has_is_a_clear_error(easy_cohort, tmp_path):
    data = tmp_path / "no_mri"
    data.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(easy_cohort / f"{split}_clinical.csv", data)
    with pytest.raises(TrainingSetupError, match="needs mri"):
        run_training("mri_only", recipe="tiny", data_dir=data, output_dir=tmp_path / "out", **QUIET)


def test_a_training_split_ending_on_one_patient_still_trains(easy_cohort, tmp_path):
    """Train size = k * batch + 1: the last batch would hold one patient, which BatchNorm cannot train on (the MRI
    statistics' BatchNorm1d raised "Expected more than 1 value per channel"); the loader drops it in training only."""
    import pandas as pd

    from zoo.training.pipeline import lone_last_batch

    data = tmp_path / "cohort"
    data.mkdir()
    for item in easy_cohort.iterdir():
        if item.name != "train_clinical.csv":
            (data / item.name).symlink_to(item, target_is_directory=item.is_dir())
    train = pd.read_csv(easy_cohort / "train_clinical.csv", dtype={"patient_id": str})
    assert len(train) >= 9
    train.head(9).to_csv(data / "train_clinical.csv", index=False)
    result = run_training("mri_only", recipe="tiny", data_dir=data, output_dir=tmp_path / "out",
                          overrides=["training.epochs=1", "data.batch_size=4", "model.modalities.mri.statistics=true"],
                          **QUIET)
    assert result["epochs_run"] == 1 and torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))
    assert lone_last_batch(9, 4) and not lone_last_batch(8, 4) and not lone_last_batch(1, 4)
    assert not lone_last_batch(10, 4) and lone_last_batch(33, 16)
