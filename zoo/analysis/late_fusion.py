"""The late-fusion baselines of a sweep: the single-modality entries' class probabilities combined per patient.

A learned fusion strategy that does not beat combining the unimodal models' outputs is not earning its
parameters, so every sweep that trained two or more single-modality entries gets, per subset of them, a
`late_fusion-<subset>` row (the mean of their probabilities) and a `late_product-<subset>` row (their product,
renormalised: a product of experts), scored on the same patients (the test split, or out-of-fold in a k-fold
sweep). The product is the Bayes posterior when the modalities are independent given the class and every member
was trained for a uniform class prior (the class-weighted loss of the zoo's recipes); the mean is the more robust
to one overconfident member. Nothing is fitted; a row's validation score is that of its members' validation
predictions combined the same way (the mean over folds, like a learned entry's), so late and learned fusion can be
compared on validation, where choices are made. Runs from before `val_predictions.csv` existed leave it empty. Its
parameter count and training time are its members'.
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
LATE_PRODUCT = "late (product)"
LATE_FUSION_DIR = "late_fusion"
# row-name prefix -> (fusion label in the leaderboard, combination rule)
LATE_ROWS: dict[str, tuple[str, str]] = {"late_fusion": (LATE_FUSION, "mean"),
                                         "late_product": (LATE_PRODUCT, "product")}
_FLOOR = 1e-12  # a member's probability of exactly 0 would veto a class in the product


def combine(stack: np.ndarray, rule: str) -> np.ndarray:
    """[members, patients, classes] probabilities -> [patients, classes]: their mean, or their renormalised product."""
    if rule == "mean":
        return stack.mean(axis=0)
    if rule == "product":
        log = np.log(np.clip(stack, _FLOOR, 1.0)).sum(axis=0)
        prob = np.exp(log - log.max(axis=1, keepdims=True))
        return prob / prob.sum(axis=1, keepdims=True)
    raise ValueError(f"late-fusion rule {rule!r}; use 'mean' or 'product'")


def fuse_predictions(tables: Sequence[pd.DataFrame], rule: str = "mean") -> pd.DataFrame:
    """Per patient, the tables' probability columns combined by `rule` (see `combine`); the tables must hold the
    same patients with the same labels."""
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
    out[columns] = combine(np.stack(stack), rule)
    return out


def validation_tables(members_per_fold: Sequence[Sequence[Path]]) -> list[list[pd.DataFrame]] | None:
    """Every fold's members' validation predictions (members given as run folders); None when a member run has
    none."""
    paths = [[Path(run) / VAL_PREDICTIONS_FILE for run in members] for members in members_per_fold]
    if not all(path.is_file() for members in paths for path in members):
        return None
    return [[pd.read_csv(p, dtype={"patient_id": str}) for p in members] for members in paths]


def validation_metrics(tables_per_fold: Sequence[Sequence[pd.DataFrame]] | None,
                       rule: str = "mean") -> dict[str, float] | None:
    """Mean over folds of the macro F1 / AUC of each fold's member validation predictions combined by `rule`
    (None without them)."""
    from zoo.analysis.crossval import pooled_metrics

    if tables_per_fold is None:
        return None
    scores = [pooled_metrics(fuse_predictions(tables, rule)) for tables in tables_per_fold]
    return {"f1_macro": float(np.mean([m["f1_macro"] for m in scores])),
            "auc_macro_ovr": float(np.mean([m["auc_macro_ovr"] for m in scores]))}


def late_fusion_rows(out_dir: Path, runs: pd.DataFrame, folds: int | None, single_labels: Sequence[str],
                     run_dir: Callable[[str, int, int | None], Path],
                     make_row: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (in the sweep's run format, via `make_row(name, label, fusion, seed, metrics, val, params, train_time_s)`),
    one per rule of LATE_ROWS, for every subset of two or more single-modality entries (`runs` rows whose modalities
    label is one of `single_labels`) that finished for a seed; the combined predictions land in
    out_dir/late_fusion/<name>/seed<s>/."""
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
                member_rows = ok[ok["entry"].isin(members.values()) & (ok["seed"] == seed)]
                params = float(member_rows.groupby("entry")["params"].first().sum())
                train_time_s = float(member_rows["train_time_s"].sum())
                val_tables = validation_tables([[run_dir(members[m], int(seed), f if folds else None) for m in combo]
                                                for f in range(folds_needed)])
                for prefix, (fusion, rule) in LATE_ROWS.items():
                    fused = fuse_predictions(tables, rule)
                    name = f"{prefix}-{'_'.join(combo)}"
                    target = out_dir / LATE_FUSION_DIR / name / f"seed{int(seed)}" / PREDICTIONS_FILE
                    atomic_write_text(target, fused.to_csv(index=False))
                    found.append(make_row(name, label, fusion, int(seed), pooled_metrics(fused),
                                          val=validation_metrics(val_tables, rule), params=params,
                                          train_time_s=train_time_s))
    return found
