"""Where two entries' out-of-fold predictions differ: by modality completeness, by class, and in calibration.

Reads archived runs only (nothing retrained): each ENTRY is `name=RUN_DIR[,RUN_DIR...]`, one run directory per seed
holding fold0..fold{k-1}/test_predictions.csv. The cohort directory says which patients have slides and MRI.

uv run python docs/results/v1.4/entries_by_subgroup.py data/cohort500 \
    attention=docs/results/v1.4/cv4_500/runs/attention/seed0,docs/results/v1.4/cv4_500/runs/attention/seed1 \
    concatenate=docs/results/v1.4/cv4_concat_500/runs/concatenate/seed0,docs/results/v1.4/cv4_concat_500_seed1/runs/concatenate/seed1
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from zoo.analysis.crossval import out_of_fold_predictions, paired_bootstrap, pooled_metrics  # noqa: E402
from zoo.spec import CLASS_NAMES  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("data_dir", type=Path, help="the cohort the runs were trained on (which modalities each patient has)")
p.add_argument("entries", nargs="+", help="name=RUN_DIR[,RUN_DIR...] (one run directory per seed)")
p.add_argument("--folds", type=int, default=4)
args = p.parse_args()


def presence(data_dir: Path, ids: list[str]) -> pd.DataFrame:
    slides = {path.name.rsplit("-", 1)[0] for path in data_dir.glob("wsi_patches/*/*.h5")}
    mri = {path.name.rsplit("_", 1)[0] for path in data_dir.glob("mri_processed/*_T1.nii.gz")}
    if not slides or not mri:
        raise SystemExit(f"{data_dir} has no wsi_patches/*/*.h5 or mri_processed/*_T1.nii.gz: "
                         "pass the cohort directory the runs were trained on")
    return pd.DataFrame({"patient_id": ids, "slides": [i in slides for i in ids], "mri": [i in mri for i in ids]})


entries = {}
for spec in args.entries:
    name, _, dirs = spec.partition("=")
    entries[name] = [out_of_fold_predictions([Path(d) / f"fold{k}" for k in range(args.folds)])
                     for d in dirs.split(",")]
first = next(iter(entries.values()))[0]
groups = presence(args.data_dir, first["patient_id"].tolist())
subsets = {"all patients": np.ones(len(groups), bool), "all three present": (groups.slides & groups.mri).to_numpy(),
           "no slides": (~groups.slides).to_numpy(), "no MRI": (~groups.mri).to_numpy()}
labels = first["label"].to_numpy()
probs_cols = [f"p_{c}" for c in CLASS_NAMES]

print("macro F1 by subgroup (mean over seeds; patients in brackets)")
print("| entry | " + " | ".join(f"{k} ({m.sum()})" for k, m in subsets.items()) + " |")
for name, tables in entries.items():
    cells = [np.mean([pooled_metrics(t[m])["f1_macro"] for t in tables]) for m in subsets.values()]
    print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")

print("\npredicted class counts (mean over seeds) against the true counts, and calibration")
print("| entry | " + " | ".join(CLASS_NAMES) + " | log loss | mean top probability | accuracy |")
print("| true | " + " | ".join(str(int((labels == i).sum())) for i in range(len(CLASS_NAMES))) + " | | | |")
for name, tables in entries.items():
    counts = np.mean([np.bincount(t[probs_cols].to_numpy().argmax(1), minlength=len(CLASS_NAMES)) for t in tables], 0)
    probs = [np.clip(t[probs_cols].to_numpy(), 1e-7, 1) for t in tables]
    log_loss = np.mean([-np.log(pr[np.arange(len(labels)), labels]).mean() for pr in probs])
    top = np.mean([pr.max(1).mean() for pr in probs])
    accuracy = np.mean([(pr.argmax(1) == labels).mean() for pr in probs])
    print(f"| {name} | " + " | ".join(f"{c:.0f}" for c in counts) + f" | {log_loss:.3f} | {top:.3f} | {accuracy:.3f} |")

names = list(entries)
for other in names[1:]:
    for label, mask in subsets.items():
        if mask.sum() == len(mask) or mask.sum() >= 100:
            result = paired_bootstrap([t[mask] for t in entries[other]], [t[mask] for t in entries[names[0]]])
            print(f"{other} - {names[0]}, {label}: {result['delta_f1']:+.3f} "
                  f"[{result['ci_low']:+.3f}, {result['ci_high']:+.3f}], P(ahead) {result['p_ahead']:.2f}")
