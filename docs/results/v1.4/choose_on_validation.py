"""Would choosing between learned and late fusion on validation have paid off? Out-of-fold test F1 of rules that
look only at each fold's validation predictions (val_predictions.csv of the learned entry and of its single-modality
members), against the learned entry and the late-fusion baseline, paired bootstrap over patients.

Rules, per fold and seed: `pick` takes whichever of learned / late scores the higher validation macro F1 (ties go
to learned); `blend w` averages w x learned + (1 - w) x late probabilities with w in {0, 0.25, 0.5, 0.75, 1}
chosen by validation macro F1 (ties: lower validation log-loss). Validation is optimistic for both sides alike:
every member chose its checkpoint on it.

uv run python docs/results/v1.4/choose_on_validation.py outputs/sweeps/cv4_v14_500 [--entry attention] [--folds 4]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from zoo.analysis.crossval import macro_f1, paired_bootstrap  # noqa: E402
from zoo.analysis.late_fusion import fuse_predictions  # noqa: E402
from zoo.spec import CLASS_NAMES, PREDICTIONS_FILE, VAL_PREDICTIONS_FILE  # noqa: E402

SINGLES = {"path": "pathology_only", "mri": "mri_only", "clin": "clinical_only"}
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
COLUMNS = [f"p_{c}" for c in CLASS_NAMES]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient_id": str}).sort_values("patient_id").reset_index(drop=True)


def blend(a: pd.DataFrame, b: pd.DataFrame, w: float) -> pd.DataFrame:
    out = a[["patient_id", "label"]].copy()
    out[COLUMNS] = w * a[COLUMNS].to_numpy() + (1 - w) * b[COLUMNS].to_numpy()
    return out


def f1(table: pd.DataFrame) -> float:
    return macro_f1(table["label"].to_numpy(), table[COLUMNS].to_numpy().argmax(1), len(CLASS_NAMES))


def log_loss(table: pd.DataFrame) -> float:
    p = table[COLUMNS].to_numpy()[np.arange(len(table)), table["label"].to_numpy()]
    return float(-np.mean(np.log(np.clip(p, 1e-12, None))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--entry", default="attention")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    runs = args.sweep / "runs"
    members = [SINGLES[m] for m in (args.entry.split("-", 1)[1].split("_") if "-" in args.entry else SINGLES)]
    seeds = sorted(p.name for p in (runs / args.entry).glob("seed*"))
    rules: dict[str, list[pd.DataFrame]] = {"learned": [], "late": [], "pick": [], "blend": []}
    for seed in seeds:
        tables = {name: [] for name in rules}
        for k in range(args.folds):
            fold = f"{seed}/fold{k}"
            val_l, test_l = (read(runs / args.entry / fold / f) for f in (VAL_PREDICTIONS_FILE, PREDICTIONS_FILE))
            val_m, test_m = (fuse_predictions([read(runs / m / fold / f) for m in members])
                             for f in (VAL_PREDICTIONS_FILE, PREDICTIONS_FILE))
            learned_ahead = f1(val_l) >= f1(val_m)
            w = max(WEIGHTS, key=lambda w: (f1(blend(val_l, val_m, w)), -log_loss(blend(val_l, val_m, w))))
            print(f"{fold}: val F1 learned {f1(val_l):.3f}, late {f1(val_m):.3f} -> pick "
                  f"{'learned' if learned_ahead else 'late'}; blend w {w:.2f} "
                  f"(val F1 {f1(blend(val_l, val_m, w)):.3f}); test F1 learned {f1(test_l):.3f}, late {f1(test_m):.3f}")
            tables["learned"].append(test_l)
            tables["late"].append(test_m)
            tables["pick"].append(test_l if learned_ahead else test_m)
            tables["blend"].append(blend(test_l, test_m, w))
        for name, parts in tables.items():
            rules[name].append(pd.concat(parts).sort_values("patient_id").reset_index(drop=True))
    print(f"\n{args.entry}, seeds {', '.join(seeds)}: out-of-fold test macro F1 (mean over seeds)")
    for name, oof in rules.items():
        print(f"  {name:8s} {np.mean([f1(t) for t in oof]):.3f}")
    for name in ("pick", "blend"):
        for against in ("learned", "late"):
            r = paired_bootstrap(rules[name], rules[against])
            print(f"  {name} - {against}: {r['delta_f1']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
                  f"P(ahead) {r['p_ahead']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
