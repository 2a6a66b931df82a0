"""Stratified k-fold views of a cohort, for cross-validated sweeps.

A cohort's fixed test split is small (36 patients in the quickstart cohort): differences between entries of a few
F1 points are noise there. A k-fold view pools every patient of the cohort (train + val + test CSVs) and, for fold
k, holds out fold k as the test split and a stratified `val_fraction` of the rest as the early-stopping split;
over the k folds every patient is tested exactly once (out-of-fold predictions).

A view is a folder holding the three split CSVs of that fold and symlinks to everything else of the cohort
(slides, tilings, feature cache, MRI), so nothing is copied and caches stay shared.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.atomic import atomic_write_text
from zoo.data.prepare import SPLIT_FILES
from zoo.spec import SPLITS

LABEL_COLUMN = "molecular_subtype"


def cohort_table(data_dir: str | os.PathLike) -> pd.DataFrame:
    """Every patient of the cohort: the three split CSVs concatenated, in file order."""
    data_dir = Path(data_dir)
    missing = [name for name in SPLIT_FILES if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir} lacks {missing}; give a cohort folder (python -m zoo.data.synthetic "
                                "--output-dir DIR makes one)")
    table = pd.concat([pd.read_csv(data_dir / name, dtype={"patient_id": str}) for name in SPLIT_FILES],
                      ignore_index=True)
    if LABEL_COLUMN not in table.columns:
        raise ValueError(f"{data_dir}: the split CSVs have no {LABEL_COLUMN!r} column, needed to stratify the folds")
    duplicated = table["patient_id"][table["patient_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{data_dir}: patients {duplicated[:5]} appear in more than one split CSV; fix the splits "
                         "before cross-validating")
    return table


def stratified_assignment(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per sample: within each class, a seeded shuffle dealt round-robin (class sizes differ by <= 1
    between folds); the dealing starts where the previous class stopped, so fold sizes also differ by <= 1."""
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"folds must be >= 2 (got {k})")
    if len(labels) < k:
        raise ValueError(f"{len(labels)} patients cannot be split into {k} folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), np.int64)
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        folds[members] = (offset + np.arange(len(members))) % k
        offset = (offset + len(members)) % k
    return folds


def fold_splits(table: pd.DataFrame, k: int, seed: int = 0,
                val_fraction: float = 0.15) -> list[dict[str, pd.DataFrame]]:
    """[{"train", "val", "test"} tables] for each of the `k` folds; the test folds partition the cohort."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1) (got {val_fraction})")
    labels = table[LABEL_COLUMN].to_numpy()
    assignment = stratified_assignment(labels, k, seed)
    splits = []
    for fold in range(k):
        rest = np.flatnonzero(assignment != fold)
        # The validation patients: the first `val_fraction` of a second stratified dealing of the rest.
        inner = stratified_assignment(labels[rest], max(2, round(1 / val_fraction)), seed + 1 + fold)
        val = rest[inner == 0]
        train = rest[inner != 0]
        splits.append({"train": table.iloc[train], "val": table.iloc[val],
                       "test": table.iloc[np.flatnonzero(assignment == fold)]})
    return splits


def write_fold_views(data_dir: str | os.PathLike, out_dir: str | os.PathLike, k: int, seed: int = 0,
                     val_fraction: float = 0.15) -> list[Path]:
    """Write `out_dir/fold<i>/` for each fold: that fold's split CSVs + symlinks to the rest of `data_dir`."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    table = cohort_table(data_dir)
    views = []
    for fold, splits in enumerate(fold_splits(table, k, seed, val_fraction)):
        view = out_dir / f"fold{fold}"
        view.mkdir(parents=True, exist_ok=True)
        for item in data_dir.iterdir():
            if item.name in SPLIT_FILES or item.name.startswith("."):
                continue
            link = view / item.name
            if link.is_symlink() and Path(os.readlink(link)) == item:
                continue
            if link.is_symlink() or link.exists():
                raise FileExistsError(f"{link} exists and is not a link to {item}; remove {view} and rerun")
            link.symlink_to(item, target_is_directory=item.is_dir())
        for split, name in zip(SPLITS, SPLIT_FILES):
            atomic_write_text(view / name, splits[split].to_csv(index=False))
        views.append(view)
    return views
