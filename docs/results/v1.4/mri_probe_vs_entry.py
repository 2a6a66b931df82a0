"""The hand-crafted MRI probe on the sweep's own folds, against the mri_only entry: paired bootstrap over patients.

The probe is zoo.data.synthetic.difficulty's MRI features (intensity statistics of the processed T1 and T2) with a
class-balanced logistic regression, fitted on each fold's train + val patients and applied to its test patients, so
both sides are out-of-fold predictions of the same 240 patients.

uv run python docs/results/v1.4/mri_probe_vs_entry.py outputs/sweeps/cv4_v14 [--archive docs/results/v1.4/cv4]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from zoo.analysis.crossval import out_of_fold_predictions, paired_bootstrap, pooled_metrics  # noqa: E402
from zoo.data.synthetic.difficulty import _fill, mri_features  # noqa: E402
from zoo.spec import CLASS_NAMES  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("sweep", type=Path, help="a k-fold sweep folder with folds/ (outputs/sweeps/<name>)")
p.add_argument("--archive", type=Path, help="read the mri_only runs from this archive instead")
p.add_argument("--folds", type=int, default=4)
args = p.parse_args()

tables = []
for k in range(args.folds):
    view = args.sweep / "folds" / f"fold{k}"
    split = {s: pd.read_csv(view / f"{s}_clinical.csv", dtype={"patient_id": str}) for s in ("train", "val", "test")}
    fit = pd.concat([split["train"], split["val"]])
    x_fit = _fill([mri_features(view, pid) for pid in fit.patient_id])
    x_test = _fill([mri_features(view, pid) for pid in split["test"].patient_id])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5, class_weight="balanced"))
    probs = model.fit(x_fit, fit.molecular_subtype.to_numpy()).predict_proba(x_test)
    table = pd.DataFrame({"patient_id": split["test"].patient_id, "label": split["test"].molecular_subtype})
    for i, name in enumerate(CLASS_NAMES):
        table[f"p_{name}"] = probs[:, i]
    tables.append(table)
probe = pd.concat(tables).sort_values("patient_id").reset_index(drop=True)

seeds = sorted(((args.archive or args.sweep) / "runs" / "mri_only").glob("seed*"))
entries = [out_of_fold_predictions([runs / f"fold{k}" for k in range(args.folds)]) for runs in seeds]
probe = probe.set_index("patient_id").loc[entries[0]["patient_id"]].reset_index()
print(f"probe out-of-fold macro F1 {pooled_metrics(probe)['f1_macro']:.3f}, mri_only "
      + ", ".join(f"{s.name} {pooled_metrics(e)['f1_macro']:.3f}" for s, e in zip(seeds, entries)))
result = paired_bootstrap(entries, [probe])  # mri_only: the mean over its seeds
print("mri_only - probe:", {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
print("probe's own 95 % interval (bootstrap over patients):",
      np.round(np.percentile([pooled_metrics(probe.sample(len(probe), replace=True, random_state=s))["f1_macro"]
                              for s in range(500)], [2.5, 97.5]), 3))
