"""How far two k-fold sweeps' predictions of the same patients are apart, entry by entry (archived runs only).

For each entry and seed found under both NEW/<entry>/seedN/fold*/ and OLD/<entry>/seedN/fold*/: the largest absolute
difference of a class probability, and the share of patients given the same predicted class.

uv run python docs/results/v1.4/compare_predictions.py docs/results/v1.4/cv4_final/runs docs/results/v1.4/cv4/runs \
    mri_only clinical_only clinical_norec_only
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

p = argparse.ArgumentParser()
p.add_argument("new", type=Path, help="runs/ folder of one sweep")
p.add_argument("old", type=Path, help="runs/ folder of the other (same cohort and folds)")
p.add_argument("entries", nargs="+")
p.add_argument("--folds", type=int, default=4)
args = p.parse_args()

for entry in args.entries:
    seeds = [{d.name for d in (root / entry).glob("seed*")} for root in (args.new, args.old)]
    for seed in sorted(seeds[0] & seeds[1]):
        diffs, agree = [], []
        for k in range(args.folds):
            a, b = (pd.read_csv(root / entry / seed / f"fold{k}" / "test_predictions.csv")
                    for root in (args.new, args.old))
            if list(a.patient_id) != list(b.patient_id):
                raise SystemExit(f"{entry} {seed} fold{k}: the two runs hold different patients; not the same folds")
            cols = [c for c in a.columns if c.startswith("p_")]
            pa, pb = a[cols].to_numpy(), b[cols].to_numpy()
            diffs.append(np.abs(pa - pb).max())
            agree.append(pa.argmax(1) == pb.argmax(1))
        print(f"{entry} {seed}: max |probability difference| {max(diffs):.2e}, "
              f"same predicted class for {np.concatenate(agree).mean():.1%} of patients")
