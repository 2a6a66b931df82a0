"""Paired bootstrap over patients: the late-fusion baseline against each learned fusion entry of a k-fold sweep.

uv run python docs/results/v1.3/late_vs_learned.py docs/results/v1.3/cv4 [--folds 4]
"""
import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from zoo.analysis.crossval import out_of_fold_predictions, paired_bootstrap, pooled_metrics  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("sweep", type=Path)
p.add_argument("--folds", type=int, default=4)
args = p.parse_args()
late = {d.name: pd.read_csv(d / "seed0" / "test_predictions.csv")
        for d in sorted((args.sweep / "late_fusion").iterdir())}
for d in sorted((args.sweep / "runs").iterdir()):
    runs = [d / "seed0" / f"fold{f}" for f in range(args.folds)]
    if not all((r / "metrics.json").is_file() for r in runs):
        continue
    learned = out_of_fold_predictions(runs)
    name = d.name.split("-", 1)[1] if "-" in d.name else "path_mri_clin"
    if d.name.endswith("_only") or f"late_fusion-{name}" not in late:
        continue
    r = paired_bootstrap([late[f"late_fusion-{name}"]], [learned])
    recall = pooled_metrics(late[f"late_fusion-{name}"])["per_class"]["Luminal B"]["recall"]
    print(f"late_fusion-{name} (Luminal B recall {recall:.2f}) - {d.name}: {r}")
