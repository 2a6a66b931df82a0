"""k-fold views of a cohort: stratified, a partition of the patients, and readable by the dataset."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from zoo.data.folds import cohort_table, fold_splits, stratified_assignment, write_fold_views


def test_assignment_is_stratified_and_balanced():
    labels = np.repeat([0, 1, 2, 3], [50, 31, 12, 7])
    folds = stratified_assignment(labels, 5, seed=0)
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    for cls in range(4):
        per_fold = np.bincount(folds[labels == cls], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (cls, per_fold)
    assert not np.array_equal(folds, stratified_assignment(labels, 5, seed=1))  # the seed reshuffles
    np.testing.assert_array_equal(folds, stratified_assignment(labels, 5, seed=0))


def test_bad_fold_counts_are_clear_errors():
    with pytest.raises(ValueError, match="folds must be >= 2"):
        stratified_assignment(np.zeros(10), 1, 0)
    with pytest.raises(ValueError, match="3 patients cannot be split into 5 folds"):
        stratified_assignment(np.zeros(3), 5, 0)


def test_folds_partition_the_cohort(tiny_cohort):
    table = cohort_table(tiny_cohort)
    splits = fold_splits(table, 3, seed=0)
    tested = pd.concat([s["test"] for s in splits])["patient_id"]
    assert sorted(tested) == sorted(table["patient_id"])  # every patient tested exactly once
    for s in splits:
        ids = {k: set(v["patient_id"]) for k, v in s.items()}
        assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
        assert ids["train"] | ids["val"] | ids["test"] == set(table["patient_id"])
        assert len(ids["val"]) >= 1 and len(ids["train"]) > len(ids["val"])


def test_views_share_the_cohort_and_load_as_datasets(tiny_cohort, tiny_cohort_config, tmp_path):
    from zoo.data import BreastCancerMultiModalDataset

    views = write_fold_views(tiny_cohort, tmp_path / "folds", 3)
    assert [v.name for v in views] == ["fold0", "fold1", "fold2"]
    for item in ("wsi_raw", "mri_processed"):
        assert (views[0] / item).is_symlink() and (views[0] / item).resolve() == (tiny_cohort / item).resolve()
    assert write_fold_views(tiny_cohort, tmp_path / "folds", 3) == views  # idempotent
    cfg = {**tiny_cohort_config, "data": {**tiny_cohort_config["data"], "data_dir": str(views[1])}}
    test = BreastCancerMultiModalDataset.from_config(cfg, "test")
    expected = pd.read_csv(views[1] / "test_clinical.csv", dtype={"patient_id": str})
    assert len(test) == len(expected) and test[0]["patient_id"] in set(expected["patient_id"])


def test_cohort_errors_name_the_problem(tiny_cohort, tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks"):
        cohort_table(tmp_path)
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}_clinical.csv").write_text((tiny_cohort / "train_clinical.csv").read_text())
    with pytest.raises(ValueError, match="more than one split CSV"):
        cohort_table(tmp_path)


def test_a_real_folder_in_a_view_is_refused_not_overwritten(tiny_cohort, tmp_path):
    (tmp_path / "folds" / "fold0" / "wsi_raw").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="is not a link to"):
        write_fold_views(tiny_cohort, tmp_path / "folds", 2)
    view = tmp_path / "folds" / "fold0" / "wsi_raw"
    assert view.is_dir() and not view.is_symlink()
