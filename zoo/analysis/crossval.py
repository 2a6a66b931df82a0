"""Out-of-fold evaluation of a cross-validated sweep and the modality-ablation shape check.

Each fold run writes `test_predictions.csv` (its held-out fold); pooled over the folds every patient of the cohort
has exactly one prediction, so metrics are computed on the whole cohort instead of one small test split. Entries
are then compared on the same patients with a paired bootstrap (patients resampled, both entries scored on the
same resample), which says whether a difference is larger than the resampling noise.
"""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from zoo.spec import CLASS_NAMES, METRICS_FILE, PREDICTIONS_FILE
from zoo.training.metrics import classification_metrics, macro_f1
from zoo.training.trainer import PROBABILITY_PREFIX


def out_of_fold_predictions(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """The fold runs' test predictions, concatenated and sorted by patient; each patient must appear once."""
    parts = []
    for run_dir in run_dirs:
        path = Path(run_dir) / PREDICTIONS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the fold run did not finish (rerun the sweep with --resume)")
        parts.append(pd.read_csv(path, dtype={"patient_id": str}))
    table = pd.concat(parts, ignore_index=True)
    repeated = table["patient_id"][table["patient_id"].duplicated()].tolist()
    if repeated:
        raise ValueError(f"patients {repeated[:5]} are in the test fold of more than one run; the folds overlap")
    return table.sort_values("patient_id", kind="stable").reset_index(drop=True)


def probabilities(table: pd.DataFrame) -> np.ndarray:
    return table[[c for c in table.columns if c.startswith(PROBABILITY_PREFIX)]].to_numpy(np.float64)


def pooled_metrics(table: pd.DataFrame, class_names: Sequence[str] = CLASS_NAMES) -> dict:
    return classification_metrics(table["label"].to_numpy(), probabilities(table), class_names)


def _seed_stack(tables: Sequence[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """labels [N], predicted class [S, N] of S seeds' out-of-fold tables over the same N patients."""
    ids = tables[0]["patient_id"].tolist()
    for t in tables[1:]:
        if t["patient_id"].tolist() != ids:
            raise ValueError("out-of-fold tables cover different patients; compare runs of the same folds")
    return tables[0]["label"].to_numpy(np.int64), np.stack([probabilities(t).argmax(1) for t in tables]), ids


def paired_bootstrap(a: Sequence[pd.DataFrame], b: Sequence[pd.DataFrame], num_classes: int = len(CLASS_NAMES),
                     resamples: int = 2000, seed: int = 0) -> dict:
    """Macro F1 of entry `a` minus entry `b` (each the mean over its seeds), on the same bootstrap resamples of
    patients: the observed difference, its 95 % interval and the share of resamples where `a` is ahead."""
    labels, pred_a, ids = _seed_stack(a)
    labels_b, pred_b, ids_b = _seed_stack(b)
    if ids != ids_b or not np.array_equal(labels, labels_b):
        raise ValueError("the two entries were evaluated on different patients; run them in the same k-fold sweep")

    def delta(idx: np.ndarray) -> float:
        fa = np.mean([macro_f1(labels[idx], p[idx], num_classes) for p in pred_a])
        fb = np.mean([macro_f1(labels[idx], p[idx], num_classes) for p in pred_b])
        return fa - fb

    rng = np.random.default_rng(seed)
    n = len(labels)
    draws = np.array([delta(rng.integers(0, n, n)) for _ in range(resamples)])
    return {"delta_f1": delta(np.arange(n)), "ci_low": float(np.quantile(draws, 0.025)),
            "ci_high": float(np.quantile(draws, 0.975)), "p_ahead": float((draws > 0).mean())}


def ablation_expectations(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(better, worse) pairs of the seed table's shape among the modality subsets present: the full set beats every
    other subset, and each pair beats each of its own members. Labels are 'path+mri+clin' style."""
    parts = {label: frozenset(label.split("+")) for label in labels}
    full = max(parts, key=lambda label: len(parts[label]), default=None)
    pairs = []
    for better, worse in combinations(sorted(parts, key=lambda label: -len(parts[label])), 2):
        subset = parts[worse] < parts[better]
        if subset and (better == full or len(parts[better]) == 2):
            pairs.append((better, worse))
    return pairs


def ablation_shape(oof: Mapping[str, Sequence[pd.DataFrame]], resamples: int = 2000) -> pd.DataFrame:
    """One row per expected comparison: observed F1 difference, bootstrap interval, P(ahead), and the verdict
    'holds' (interval above 0), 'reversed' (below 0) or 'unresolved'."""
    rows = []
    for better, worse in ablation_expectations(list(oof)):
        result = paired_bootstrap(oof[better], oof[worse], resamples=resamples)
        verdict = "holds" if result["ci_low"] > 0 else "reversed" if result["ci_high"] < 0 else "unresolved"
        rows.append({"expected_better": better, "expected_worse": worse, **result, "verdict": verdict})
    return pd.DataFrame(rows, columns=["expected_better", "expected_worse", "delta_f1", "ci_low", "ci_high",
                                       "p_ahead", "verdict"])


def shape_markdown(table: pd.DataFrame, folds: int, patients: int, seeds: int) -> str:
    lines = [f"Modality ablation shape, {folds}-fold cross-validation: out-of-fold macro F1 on all {patients} patients"
             f" (mean over {seeds} seed{'s' if seeds > 1 else ''}); paired bootstrap over patients, 95 % interval.", "",
             "| expected | Δ macro F1 | 95 % interval | P(ahead) | verdict |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['expected_better']} > {r['expected_worse']} | {r['delta_f1']:+.3f} | "
                     f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p_ahead']:.2f} | {r['verdict']} |")
    counts = table["verdict"].value_counts()
    lines += ["", f"{counts.get('holds', 0)} of {len(table)} expected orderings hold, {counts.get('reversed', 0)} "
              f"reversed, {counts.get('unresolved', 0)} unresolved at this cohort size."]
    return "\n".join(lines) + "\n"


def finished_seed_runs(entry_dir: Path) -> dict[int, list[Path]]:
    """seed -> its fold run folders, for every seed of a k-fold sweep's entry folder (runs/<entry>) whose folds all
    wrote their predictions."""
    entry_dir = Path(entry_dir)
    started = {int(d.name[4:]): sorted(d.glob("fold*"), key=lambda p: int(p.name[4:]))
               for d in entry_dir.glob("seed*")}
    k = max((len(folds) for folds in started.values()), default=0)  # a seed still running may lack fold folders
    seeds = {s: folds for s, folds in sorted(started.items())
             if len(folds) == k and all((f / PREDICTIONS_FILE).is_file() for f in folds)}
    if not seeds:
        raise FileNotFoundError(f"{entry_dir} holds no finished k-fold seed (seed<s>/fold<k>/{PREDICTIONS_FILE}); "
                                "give runs/<entry> of a sweep run with --folds")
    return seeds


def compare_runs(a: Path, b: Path, resamples: int = 2000) -> dict:
    """Two k-fold runs of the same cohort (e.g. one entry under two settings, from two sweeps) on the same
    patients: mean fold validation F1 (what to choose by), out-of-fold F1 and the paired bootstrap of a - b."""
    summary = {}
    tables = {}
    for key, entry_dir in (("a", a), ("b", b)):
        seeds = finished_seed_runs(entry_dir)
        tables[key] = [out_of_fold_predictions(folds) for folds in seeds.values()]
        val = [json.loads((f / METRICS_FILE).read_text())["best_val_f1"] for folds in seeds.values() for f in folds]
        pooled = [pooled_metrics(t) for t in tables[key]]
        summary[key] = {"run": str(entry_dir), "seeds": sorted(seeds), "folds": len(next(iter(seeds.values()))),
                        "mean_val_f1": float(np.mean(val)),
                        "out_of_fold_f1": float(np.mean([m["f1_macro"] for m in pooled])),
                        "per_seed": [{"f1": m["f1_macro"], "auc": m["auc_macro_ovr"],
                                      "recall": [m["per_class"][c]["recall"] for c in CLASS_NAMES]} for m in pooled]}
    return {**summary, **paired_bootstrap(tables["a"], tables["b"], resamples=resamples)}


def comparison_markdown(result: dict) -> str:
    lines = ["| run | seeds | folds | mean fold val F1 | out-of-fold F1 |", "|---|---|---|---|---|"]
    for key in ("a", "b"):
        r = result[key]
        lines.append(f"| {r['run']} | {', '.join(map(str, r['seeds']))} | {r['folds']} | {r['mean_val_f1']:.3f} | "
                     f"{r['out_of_fold_f1']:.3f} |")
    lines += ["", f"Out-of-fold, per seed: macro F1, macro AUC, recall {' / '.join(CLASS_NAMES)}", ""]
    for key in ("a", "b"):
        r = result[key]
        lines.append(f"- {key}: " + "; ".join(
            f"seed {seed}: {m['f1']:.3f}, {m['auc']:.3f}, " + " / ".join(f"{x:.2f}" for x in m["recall"])
            for seed, m in zip(r["seeds"], r["per_seed"])))
    verdict = ("a ahead" if result["ci_low"] > 0 else "b ahead" if result["ci_high"] < 0 else
               "no difference beyond the bootstrap noise")
    lines += ["", f"a - b: Δ out-of-fold macro F1 {result['delta_f1']:+.3f}, 95 % interval "
              f"[{result['ci_low']:+.3f}, {result['ci_high']:+.3f}], P(a ahead) {result['p_ahead']:.2f}: {verdict}.",
              "Choose between settings by the validation F1 column; the out-of-fold figures are test figures."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    from zoo.cli_help import HelpFormatter

    parser = argparse.ArgumentParser(prog="python -m zoo.crossval", formatter_class=HelpFormatter, description=(
        "Compare two k-fold runs on the same patients, e.g. one entry trained with two settings in two sweeps: "
        "python -m zoo.crossval outputs/sweeps/A/runs/attention outputs/sweeps/B/runs/attention"))
    parser.add_argument("a", type=Path, help="runs/<entry> folder of a k-fold sweep")
    parser.add_argument("b", type=Path, help="the other runs/<entry> folder (same cohort and folds)")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        print(comparison_markdown(compare_runs(args.a, args.b, args.resamples)), end="")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
