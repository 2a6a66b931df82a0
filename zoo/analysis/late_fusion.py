"""The late-fusion baseline of a sweep: the mean of the single-modality entries' class probabilities.

A learned fusion strategy that does not beat averaging the unimodal models' outputs is not earning its
parameters, so every sweep that trained two or more single-modality entries gets one `late_fusion-<subset>`
row per subset of them, scored on the same patients (the test split, or out-of-fold in a k-fold sweep). Nothing
is fitted; its validation score is that of its members' averaged validation predictions (the mean over folds, like a
learned entry's), so late and learned fusion can be compared on validation, where choices are made. Runs from before
`val_predictions.csv` existed leave it empty. Its parameter count and training time are its members'.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from zoo.atomic import atomic_write_text
from zoo.spec import PREDICTIONS_FILE, VAL_PREDICTIONS_FILE
from zoo.training.trainer import PROBABILITY_PREFIX

LATE_FUSION = "late (mean)"
LATE_FUSION_DIR = "late_fusion"


def average_predictions(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per patient, the mean of the tables' probability columns; the tables must hold the same patients/labels."""
    first = tables[0].sort_values("patient_id", kind="stable").reset_index(drop=True)
    columns = [c for c in first.columns if c.startswith(PROBABILITY_PREFIX)]
    stack = [first[columns].to_numpy(np.float64)]
    for table in tables[1:]:
        table = table.sort_values("patient_id", kind="stable").reset_index(drop=True)
        if table["patient_id"].tolist() != first["patient_id"].tolist() or \
                not np.array_equal(table["label"].to_numpy(), first["label"].to_numpy()):
            raise ValueError("late fusion needs every member evaluated on the same patients with the same labels")
        stack.append(table[columns].to_numpy(np.float64))
    out = first[["patient_id", "label"]].copy()
    out[columns] = np.mean(stack, axis=0)
    return out


def validation_metrics(members_per_fold: Sequence[Sequence[Path]]) -> dict[str, float] | None:
    """Mean over folds of the macro F1 / AUC of the members' averaged validation predictions (every fold's members
    given as run folders); None when a member run has no validation predictions."""
    from zoo.analysis.crossval import pooled_metrics

    paths = [[Path(run) / VAL_PREDICTIONS_FILE for run in members] for members in members_per_fold]
    if not all(path.is_file() for members in paths for path in members):
        return None
    scores = [pooled_metrics(average_predictions([pd.read_csv(p, dtype={"patient_id": str}) for p in members]))
              for members in paths]
    return {"f1_macro": float(np.mean([m["f1_macro"] for m in scores])),
            "auc_macro_ovr": float(np.mean([m["auc_macro_ovr"] for m in scores]))}


def late_fusion_rows(out_dir: Path, runs: pd.DataFrame, folds: int | None, single_labels: Sequence[str],
                     run_dir: Callable[[str, int, int | None], Path],
                     make_row: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (in the sweep's run format, via `make_row(name, label, seed, metrics, val, params, train_time_s)`) for every
    subset of two or more single-modality entries (`runs` rows whose modalities label is one of `single_labels`)
    that finished for a seed; the averaged predictions land in out_dir/late_fusion/<name>/seed<s>/."""
    from zoo.analysis.crossval import out_of_fold_predictions, pooled_metrics

    ok = runs[runs["status"] == "ok"]
    singles = {label: ok[ok["modalities"] == label] for label in single_labels}
    singles = {label: rows for label, rows in singles.items() if not rows.empty}
    folds_needed = folds or 1
    found = []
    for size in range(2, len(singles) + 1):
        for combo in combinations(singles, size):
            label = "+".join(combo)
            members = {m: singles[m]["entry"].iloc[0] for m in combo}
            seeds = sorted(set.intersection(*(set(singles[m].groupby("seed").size()
                                                  .loc[lambda s: s >= folds_needed].index) for m in combo)))
            for seed in seeds:
                try:
                    tables = [out_of_fold_predictions([run_dir(members[m], int(seed), f if folds else None)
                                                       for f in range(folds_needed)]) for m in combo]
                except FileNotFoundError:
                    continue  # a member run without predictions (an older sweep): no row rather than a wrong one
                fused = average_predictions(tables)
                val = validation_metrics([[run_dir(members[m], int(seed), f if folds else None) for m in combo]
                                          for f in range(folds_needed)])
                name = f"late_fusion-{'_'.join(combo)}"
                target = out_dir / LATE_FUSION_DIR / name / f"seed{int(seed)}" / PREDICTIONS_FILE
                atomic_write_text(target, fused.to_csv(index=False))
                member_rows = ok[ok["entry"].isin(members.values()) & (ok["seed"] == seed)]
                found.append(make_row(name, label, int(seed), pooled_metrics(fused), val=val,
                                      params=float(member_rows.groupby("entry")["params"].first().sum()),
                                      train_time_s=float(member_rows["train_time_s"].sum())))
    return found
