"""Paired bootstrap over patients: the late-fusion baselines (mean, and product where the sweep has it) against each
learned fusion entry of a k-fold sweep (each side the mean over the seeds both have).

uv run python docs/results/v1.3/late_vs_learned.py docs/results/v1.3/cv4 [--folds 4]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from zoo.analysis.crossval import out_of_fold_predictions, paired_bootstrap, pooled_metrics  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("sweep", type=Path)
p.add_argument("--folds", type=int, default=4)
args = p.parse_args()
seeds = lambda d: sorted(p.name for p in d.glob("seed*"))  # noqa: E731
late = {d.name: {s: pd.read_csv(d / s / "test_predictions.csv") for s in seeds(d)}
        for d in sorted((args.sweep / "late_fusion").iterdir())}
for prefix in ("late_fusion", "late_product"):
    for d in sorted((args.sweep / "runs").iterdir()):
        name = d.name.split("-", 1)[1] if "-" in d.name else "path_mri_clin"
        if d.name.endswith("_only") or f"{prefix}-{name}" not in late:
            continue
        baseline = late[f"{prefix}-{name}"]
        both = [s for s in seeds(d) if s in baseline
                and all((d / s / f"fold{f}" / "metrics.json").is_file() for f in range(args.folds))]
        if not both:
            continue
        learned = [out_of_fold_predictions([d / s / f"fold{f}" for f in range(args.folds)]) for s in both]
        r = paired_bootstrap([baseline[s] for s in both], learned)
        recall = np.mean([pooled_metrics(baseline[s])["per_class"]["Luminal B"]["recall"] for s in both])
        print(f"{prefix}-{name} (Luminal B recall {recall:.2f}) - {d.name} [{', '.join(both)}]: {r}")
