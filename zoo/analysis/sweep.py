"""Train every zoo entry matching the patterns (x seeds) and compare them.

    python -m zoo.sweep PATTERN [PATTERN ...] [--recipe cpu] [--seeds 0 1 2] [--data-dir DIR] [--name NAME]
    python -m zoo.sweep PATTERN ... --resume              # after an interruption: finished runs are kept
    python -m zoo.sweep --report outputs/sweeps/<name>     # redraw leaderboard + charts from runs.csv
    python -m zoo.sweep --merge outputs/sweeps/all outputs/sweeps/A outputs/sweeps/B   # k-fold sweeps, same folds
    python -m zoo.sweep PATTERN ... --folds 5              # k-fold cross-validation over the whole cohort

Writes outputs/sweeps/<name>/: runs.csv (one row per entry x seed, failures included), leaderboard.csv/.md
(mean +- std over seeds), fusion_comparison.png (entries using all modalities, by fusion: seed section 8) and
modality_ablation.png (by modality subset: seed section 11). A failing run is recorded and the sweep goes on.
The feature cache is shared: entries with the same frozen patch encoder reuse the same cached features.

With --folds K every run is repeated on K stratified folds of the whole cohort (zoo.data.folds): runs.csv has one
row per entry x seed x fold, and the leaderboard's test columns are out-of-fold metrics pooled over all patients
(zoo.analysis.crossval). ablation_shape.md then checks the seed table's ordering with a paired bootstrap over patients.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
import traceback
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from zoo.analysis.plots import grouped_bar_chart
from zoo.atomic import atomic_write, atomic_write_json, atomic_write_text
from zoo.cli_help import HelpFormatter
from zoo.spec import (
    CLINICAL_FEATURES,
    CONFIG_FILE,
    METRICS_FILE,
    MODALITIES,
    PREDICTIONS_FILE,
    RECIPES,
    VAL_PREDICTIONS_FILE,
)

OUT_OF_FOLD_FILE = "out_of_fold_metrics.json"  # runs/<entry>/seed<s>/: pooled over the folds
SHORT_MODALITY = {"pathology": "path", "mri": "mri", "clinical": "clin"}
RUN_COLUMNS = ["entry", "seed", "fold", "modalities", "fusion", "status", "val_f1", "val_auc", "test_f1", "test_auc",
               "test_accuracy", "params", "train_time_s", "error"]


def sweep_name(patterns: Sequence[str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "+".join(patterns)).strip("_.") or "sweep"


def modality_label(modalities: Sequence[str], clinical_features: Sequence[str] = CLINICAL_FEATURES) -> str:
    """'path+mri+clin'; clinical without receptor status reads 'clin-norec' (the label-leakage control)."""
    short = dict(SHORT_MODALITY)
    if set(clinical_features) != set(CLINICAL_FEATURES):
        short["clinical"] = "clin-norec"
    return "+".join(short[m] for m in MODALITIES if m in modalities)


def run_row(entry: Any, seed: int, result: dict[str, Any] | None, error: str = "",
            fold: int | None = None) -> dict[str, Any]:
    test = (result or {}).get("test", {})
    return {
        "entry": entry.name, "seed": seed, "fold": np.nan if fold is None else fold,
        "modalities": modality_label(entry.modalities, getattr(entry, "clinical_features", CLINICAL_FEATURES)),
        "fusion": getattr(entry, "fusion", None) or "none",
        "status": "ok" if result is not None else "failed",
        "val_f1": (result or {}).get("best_val_f1", np.nan), "val_auc": (result or {}).get("best_val_auc", np.nan),
        "test_f1": test.get("f1_macro", np.nan), "test_auc": test.get("auc_macro_ovr", np.nan),
        "test_accuracy": test.get("accuracy", np.nan),
        "params": (result or {}).get("num_parameters", np.nan),
        "train_time_s": (result or {}).get("train_time_s", np.nan),
        "error": error,
    }


def leaderboard(runs: pd.DataFrame, ceilings: dict[str, float] | None = None) -> pd.DataFrame:
    """Mean and std over seeds per entry (successful runs), sorted by mean test F1. With `ceilings` (modality
    label -> the cohort's Bayes ceiling, zoo.data.synthetic.ceiling), also `ceiling` and `of_ceiling`."""
    ok = runs[runs["status"] == "ok"]
    metrics = ["val_f1", "val_auc", "test_f1", "test_auc", "test_accuracy", "train_time_s"]
    if ok.empty:
        return pd.DataFrame(columns=["entry", "modalities", "fusion", "seeds", "params"]
                            + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
    grouped = ok.groupby("entry", sort=False)
    table = grouped[["modalities", "fusion", "params"]].first()
    table["seeds"] = grouped.size()
    for m in metrics:  # a seed without the metric (a late-fusion row of runs without validation predictions): none
        table[f"{m}_mean"] = grouped[m].mean(skipna=False)
        table[f"{m}_std"] = grouped[m].std(ddof=0, skipna=False)
    if ceilings:
        table["ceiling"] = [ceilings.get(label, np.nan) for label in table["modalities"]]
        table["of_ceiling"] = table["test_f1_mean"] / table["ceiling"]
    return table.reset_index().sort_values("test_f1_mean", ascending=False, kind="stable")


def leaderboard_markdown(table: pd.DataFrame, failures: pd.DataFrame, note: str = "") -> str:
    from zoo.analysis.late_fusion import LATE_FUSION, LATE_PRODUCT

    def pm(row: pd.Series, m: str) -> str:
        if pd.isna(row[f"{m}_mean"]):
            return "–"  # a late-fusion row whose members wrote no val_predictions.csv (older runs)
        return f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"

    has_ceiling = "ceiling" in table.columns and table["ceiling"].notna().any()
    header = "| entry | modalities | fusion | test F1 | test AUC | val F1 | val AUC | params | train time (s) | seeds |"
    lines = ([note, ""] if note else []) + [
        header + (" Bayes ceiling F1 | test F1 / ceiling |" if has_ceiling else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if has_ceiling else "")]
    for _, row in table.iterrows():
        ceiling = f" {row['ceiling']:.3f} | {row['of_ceiling']:.0%} |" if has_ceiling else ""
        lines.append(f"| {row['entry']} | {row['modalities']} | {row['fusion']} | {pm(row, 'test_f1')} | "
                     f"{pm(row, 'test_auc')} | {pm(row, 'val_f1')} | {pm(row, 'val_auc')} | {int(row['params']):,} | "
                     f"{row['train_time_s_mean']:.0f} | {row['seeds']} |{ceiling}")
    if table["fusion"].isin([LATE_FUSION, LATE_PRODUCT]).any():
        lines += ["", f"`late_fusion-*` ({LATE_FUSION}) and `late_product-*` ({LATE_PRODUCT}): the mean, and the "
                  "renormalised product, of the single-modality entries' class probabilities per patient, the "
                  "baselines a learned fusion strategy has to beat (the product is the Bayes rule for modalities "
                  "independent given the class); their val F1 / AUC are those of their members' combined validation "
                  "predictions (– for runs without val_predictions.csv)."]
    if has_ceiling:
        lines += ["", "Bayes ceiling: macro F1 of the MAP rule on the generator's own latents for the entry's "
                  "modalities (python -m zoo.data.synthetic.ceiling); no model of the rendered files can beat it in "
                  "expectation."]
    if not failures.empty:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r['entry']} (seed {r['seed']}): {r['error']}" for _, r in failures.iterrows()]
    return "\n".join(lines) + "\n"


# Chart series: test F1 (held out) next to the best validation F1 (the model-selection split, optimistic).
CHART_SERIES = {"test F1": "test_f1", "best val F1": "val_f1"}


def _f1_chart(rows: pd.DataFrame, labels: list[str], path: Path, title: str, folds: int | None = None) -> Path:
    seeds = int(rows["seeds"].max())
    over = f"{seeds} seed{'s' if seeds > 1 else ''}"
    ylabel = f"macro F1 (mean ± std over {over})" if not folds else f"macro F1 ({folds}-fold CV; ± std over {over})"
    series = CHART_SERIES if not folds else {"out-of-fold test F1": "test_f1", "mean best val F1": "val_f1"}
    return grouped_bar_chart(labels, {name: rows[f"{col}_mean"].tolist() for name, col in series.items()}, path,
                             errors={name: rows[f"{col}_std"].tolist() for name, col in series.items()},
                             ylabel=ylabel, title=title, annotate=True)


def write_charts(table: pd.DataFrame, out_dir: Path, folds: int | None = None) -> list[Path]:
    written = []
    full = table[table["modalities"] == modality_label(MODALITIES)]
    if not full.empty:
        written.append(_f1_chart(full, full["fusion"].tolist(), out_dir / "fusion_comparison.png",
                                 "Fusion strategies (all modalities)", folds))
    if not table.empty:
        n_modalities = table["modalities"].str.count(r"\+")
        order = table.assign(n=n_modalities).sort_values(["n", "modalities", "fusion"], kind="stable")
        labels = [m if f in ("none", "identity") else f"{m}\n({f})"
                  for m, f in zip(order["modalities"], order["fusion"])]
        written.append(_f1_chart(order, labels, out_dir / "modality_ablation.png", "Modality ablation", folds))
    return written


def write_outputs(rows: list[dict[str, Any]], out_dir: Path, folds: int | None = None,
                  scored: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """runs.csv from `rows`; the leaderboard and charts from `scored` (k-fold: one out-of-fold row per entry x
    seed), else from `rows`."""
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    atomic_write_text(out_dir / "runs.csv", runs.to_csv(index=False))
    scored_runs = runs if scored is None else pd.DataFrame(scored, columns=RUN_COLUMNS)
    from zoo.analysis.late_fusion import late_fusion_rows

    singles = [SHORT_MODALITY[m] for m in MODALITIES]
    late = late_fusion_rows(out_dir, runs, folds, singles, lambda n, seed, fold: run_path(out_dir, n, seed, fold),
                            late_fusion_row)
    if late:
        scored_runs = pd.concat([scored_runs, pd.DataFrame(late, columns=RUN_COLUMNS)], ignore_index=True)
    table = leaderboard(scored_runs, read_ceilings(out_dir))
    note = "" if not folds else (f"{folds}-fold cross-validation over the whole cohort: test F1 / AUC are out-of-fold "
                                 "(every patient predicted once, by the fold that held it out); val F1 / AUC are the "
                                 "mean over folds of the early-stopping split.")
    atomic_write_text(out_dir / "leaderboard.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "leaderboard.md", leaderboard_markdown(table, runs[runs["status"] != "ok"], note))
    write_charts(table, out_dir, folds)
    return table


def out_of_fold_row(entry: Any, seed: int, fold_rows: list[dict[str, Any]], run_dirs: list[Path]) -> dict[str, Any]:
    """One leaderboard row for an entry x seed of a k-fold sweep: pooled out-of-fold test metrics (also written,
    with the per-class report and confusion matrix, to runs/<entry>/seed<s>/out_of_fold_metrics.json)."""
    from zoo.analysis.crossval import out_of_fold_predictions, pooled_metrics

    failed = [r for r in fold_rows if r["status"] != "ok"]
    if failed:
        return run_row(entry, seed, None, f"{len(failed)} of {len(fold_rows)} folds failed: {failed[0]['error']}")
    metrics = pooled_metrics(out_of_fold_predictions(run_dirs))
    atomic_write_json(Path(run_dirs[0]).parent / OUT_OF_FOLD_FILE, metrics)  # per class, confusion matrix
    return run_row(entry, seed, {
        "best_val_f1": float(np.mean([r["val_f1"] for r in fold_rows])),
        "best_val_auc": float(np.mean([r["val_auc"] for r in fold_rows])),
        "num_parameters": fold_rows[0]["params"], "train_time_s": float(np.sum([r["train_time_s"] for r in fold_rows])),
        "test": metrics})


def write_ablation_shape(out_dir: Path, entries: Sequence[Any], folds: int,
                         scored: list[dict[str, Any]]) -> Path | None:
    """ablation_shape.md/.csv: the seed table's orderings tested on out-of-fold predictions. Per modality subset the
    entry with the best mean validation F1 stands for it (chosen on validation, never on test)."""
    from zoo.analysis.crossval import ablation_shape, out_of_fold_predictions, shape_markdown

    ok = pd.DataFrame(scored, columns=RUN_COLUMNS)
    ok = ok[ok["status"] == "ok"]
    if ok.empty:
        return None
    chosen = ok.groupby("entry")["val_f1"].mean().to_frame("val").join(ok.groupby("entry")["modalities"].first())
    chosen = chosen.sort_values("val", ascending=False).groupby("modalities").head(1)
    by_name = {e.name: e for e in entries}
    finished = ok.groupby("entry")["seed"].apply(list)  # a seed with a failed fold has no out-of-fold predictions
    oof = {label: [out_of_fold_predictions([fold_run_dir(out_dir, by_name[name], int(s), f) for f in range(folds)])
                   for s in finished[name]]
           for name, label in chosen["modalities"].items()}
    table = ablation_shape(oof)
    if table.empty:
        return None
    atomic_write_text(out_dir / "ablation_shape.csv", table.to_csv(index=False))
    patients = len(next(iter(oof.values()))[0])
    path = out_dir / "ablation_shape.md"
    atomic_write_text(path, shape_markdown(table, folds, patients, max(len(v) for v in oof.values())))
    return path


CEILINGS_FILE = "ceilings.json"
CEILING_PATIENTS = 100_000  # Monte Carlo patients: standard error ~0.003 F1, ~3 s


def write_ceilings(out_dir: Path, data_dir: Path, entries: Sequence[Any]) -> dict[str, float]:
    """ceilings.json: each entry's modality label -> the cohort's Bayes ceiling (synthetic cohorts; {} otherwise)."""
    from zoo.data.synthetic.ceiling import CohortModel, ceilings, subset_key

    try:
        model = CohortModel.from_cohort(data_dir)
    except FileNotFoundError:
        return {}
    features = {e.name: getattr(e, "clinical_features", CLINICAL_FEATURES) for e in entries}
    subsets = {modality_label(e.modalities, features[e.name]): subset_key(e.modalities, features[e.name])
               for e in entries}
    # The late-fusion rows average single-modality entries (full clinical table): their unions get a ceiling too.
    singles = sorted({e.modalities[0] for e in entries
                      if len(e.modalities) == 1 and set(features[e.name]) == set(CLINICAL_FEATURES)})
    for size in range(2, len(singles) + 1):
        for combo in combinations(singles, size):
            subsets.setdefault(modality_label(combo), subset_key(combo, CLINICAL_FEATURES))
    found = ceilings(model, set(subsets.values()), patients=CEILING_PATIENTS)
    table = {label: round(found[key]["ceiling"], 4) for label, key in subsets.items()}
    atomic_write_json(out_dir / CEILINGS_FILE, table)
    return table


def read_ceilings(out_dir: Path) -> dict[str, float]:
    path = Path(out_dir) / CEILINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def fold_run_dir(out_dir: Path, entry: Any, seed: int, fold: int | None) -> Path:
    return run_path(out_dir, entry.name, seed, fold)


def run_path(out_dir: Path, name: str, seed: int, fold: int | None) -> Path:
    run_dir = out_dir / "runs" / name / f"seed{seed}"
    return run_dir if fold is None else run_dir / f"fold{fold}"


def read_finished_run(run_dir: Path, where: str, log: Callable[[str], None]) -> dict[str, Any] | None:
    """A run's metrics.json (the trainer writes it last, and a run from epoch 0 removes an older one first), or None
    where it is absent or unreadable (said, and the run is trained again)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        finished = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        log(f"{where}: {path} is unreadable ({type(exc).__name__}: {exc}): trained again")
        return None
    if not isinstance(finished, dict):
        log(f"{where}: {path} holds no metrics object: trained again")
        return None
    return finished


def late_fusion_row(name: str, label: str, fusion: str, seed: int, metrics: dict[str, Any],
                    val: dict[str, float] | None, params: float, train_time_s: float) -> dict[str, Any]:
    val = val or {"f1_macro": np.nan, "auc_macro_ovr": np.nan}
    return {"entry": name, "seed": seed, "fold": np.nan, "modalities": label, "fusion": fusion, "status": "ok",
            "val_f1": val["f1_macro"], "val_auc": val["auc_macro_ovr"], "test_f1": metrics["f1_macro"],
            "test_auc": metrics["auc_macro_ovr"],
            "test_accuracy": metrics["accuracy"], "params": params, "train_time_s": train_time_s, "error": ""}


def prepare_fold_views(out_dir: Path, entries: Sequence[Any], recipe: str | None, data_dir: str | Path | None,
                       overrides: Sequence[str], folds: int, log: Callable[[str], None]) -> list[Path]:
    """Cohort generated / tiled / MRI-processed once (per tiling setting of the entries), then K fold views of it.
    Preparation comes first so that the views' symlinks point at finished folders and every fold shares caches."""
    from zoo.data.folds import write_fold_views
    from zoo.training.feature_cache import FEATURES_DIRNAME
    from zoo.training.pipeline import default_recipe, ensure_data, resolve_entry_config
    from zoo.training.pretrain import PRETRAINED_DIRNAME

    recipe = recipe or default_recipe()[0]
    root = None
    for entry in entries:
        _, config = resolve_entry_config(entry.name, recipe, None, overrides)
        if data_dir is not None:
            config["data"]["data_dir"] = str(data_dir)
        ensure_data(config, generate_if_missing=data_dir is None, progress=True, log=log)
        root = Path(config["data"]["data_dir"])
    for cache in (FEATURES_DIRNAME, PRETRAINED_DIRNAME):  # linked before they exist: every fold shares one of each
        (root / cache).mkdir(exist_ok=True)
    views = write_fold_views(root, out_dir / "folds", folds)
    log(f"{folds} stratified folds of {root} in {out_dir / 'folds'}")
    return views


def run_sweep(
    patterns: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    recipe: str | None = None,
    data_dir: str | Path | None = None,
    output_root: str | Path = "outputs",
    name: str | None = None,
    overrides: Sequence[str] = (),
    train_fn: Callable[..., dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    folds: int | None = None,
) -> pd.DataFrame:
    """Train each matching entry for each seed; returns the leaderboard (also written to disk after every run).

    With `resume`, a run whose metrics.json is already written (it finished: the trainer writes it last) at the
    entry's current version is read back instead of trained again, so an interrupted sweep continues where it
    stopped; one finished at another entry version is trained again."""
    from zoo.registry import list_entries
    from zoo.training.pipeline import run_training

    train_fn = train_fn or run_training
    names = list_entries(include=list(patterns))
    if not names:
        raise ValueError(f"no zoo entry matches {list(patterns)}; "
                         "see python -c 'import zoo; print(zoo.list_entries())'")
    entries = [_entry(n) for n in names]
    out_dir = Path(output_root) / "sweeps" / (name or sweep_name(patterns))
    log(f"sweep {out_dir.name}: {len(entries)} entries x {len(seeds)} seed(s)"
        f"{f' x {folds} folds' if folds else ''}: {', '.join(e.name for e in entries)}")
    views = prepare_fold_views(out_dir, entries, recipe, data_dir, overrides, folds, log) if folds else [None]
    cohort = Path(data_dir) if data_dir is not None else _default_data_dir(entries[0], recipe, overrides)
    write_ceilings(out_dir, cohort, entries)  # a quickstart cohort generated by the first run: written at the end
    rows: list[dict[str, Any]] = []
    scored: list[dict[str, Any]] = []
    table = None
    for entry in entries:
        for seed in seeds:
            fold_rows, run_dirs = [], []
            for fold, view in enumerate(views):
                fold = fold if folds else None
                where = f"{entry.name} seed {seed}" + (f" fold {fold}" if folds else "")
                run_dir = fold_run_dir(out_dir, entry, seed, fold)
                run_dirs.append(run_dir)
                t0 = time.perf_counter()
                finished = read_finished_run(run_dir, where, log) if resume else None
                if finished is not None:
                    if str(finished.get("version", entry.version)) == entry.version:  # runs before 1.3 record none
                        fold_rows.append(run_row(entry, seed, finished, fold=fold))
                        log(f"{where}: finished earlier, read from {run_dir / METRICS_FILE}")
                        continue
                    log(f"{where}: finished earlier at entry version {finished['version']!r}, the zoo's is "
                        f"{entry.version!r}: trained again")
                try:
                    result = train_fn(entry.name, recipe=recipe, data_dir=view if folds else data_dir,
                                      output_dir=run_dir,
                                      overrides=[*overrides, f"training.seed={seed}", f"data.seed={seed}"])
                    fold_rows.append(run_row(entry, seed, result, fold=fold))
                except Exception as exc:  # a failed entry is recorded; the others still run
                    log(f"FAILED {where}: {type(exc).__name__}: {exc}")
                    log(traceback.format_exc(limit=3))
                    fold_rows.append(run_row(entry, seed, None, f"{type(exc).__name__}: {exc}", fold=fold))
                log(f"{where} done in {time.perf_counter() - t0:.0f} s")
                table = write_outputs(rows + fold_rows, out_dir, folds, scored if folds else None)
            rows += fold_rows
            if folds:
                scored.append(out_of_fold_row(entry, seed, fold_rows, run_dirs))
            table = write_outputs(rows, out_dir, folds, scored if folds else None)
    if not read_ceilings(out_dir) and write_ceilings(out_dir, cohort, entries):
        table = write_outputs(rows, out_dir, folds, scored if folds else None)
    if folds and (shape := write_ablation_shape(out_dir, entries, folds, scored)) is not None:
        log(shape.read_text())
    log(f"leaderboard: {out_dir / 'leaderboard.md'}")
    log((out_dir / "leaderboard.md").read_text())
    return table


def read_runs(out_dir: Path) -> pd.DataFrame:
    """A sweep folder's runs.csv, checked."""
    path = Path(out_dir) / "runs.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give the folder of a sweep (outputs/sweeps/<name>)")
    runs = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "fold" not in runs.columns:  # written before k-fold sweeps existed
        runs.insert(2, "fold", np.nan)
    missing = [c for c in RUN_COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; it was not written by zoo.sweep")
    return runs


def report_sweep(out_dir: str | Path) -> pd.DataFrame:
    """Rewrite a finished sweep's leaderboard and charts from its runs.csv (no training); labels follow the registry."""
    out_dir = Path(out_dir)
    runs = read_runs(out_dir)
    entries = {name: _entry(name) for name in runs["entry"].unique()}
    runs["modalities"] = [modality_label(entries[n].modalities, entries[n].clinical_features) for n in runs["entry"]]
    runs["error"] = runs["error"].fillna("")
    if runs["fold"].isna().all():
        return write_outputs(runs.to_dict("records"), out_dir)
    folds = int(runs["fold"].max()) + 1
    scored = []
    for (name, seed), group in runs.groupby(["entry", "seed"], sort=False):
        scored.append(out_of_fold_row(entries[name], int(seed), group.to_dict("records"),
                                      [fold_run_dir(out_dir, entries[name], int(seed), f) for f in range(folds)]))
    table = write_outputs(runs.to_dict("records"), out_dir, folds, scored)
    write_ablation_shape(out_dir, list(entries.values()), folds, scored)
    return table


def _default_data_dir(entry: Any, recipe: str | None, overrides: Sequence[str]) -> Path:
    from zoo.training.pipeline import default_recipe, resolve_entry_config

    _, config = resolve_entry_config(entry.name, recipe or default_recipe()[0], None, overrides)
    return Path(config["data"]["data_dir"])


ARCHIVED_RUN_FILES = (METRICS_FILE, CONFIG_FILE, PREDICTIONS_FILE, VAL_PREDICTIONS_FILE, OUT_OF_FOLD_FILE)
ARCHIVED_SUFFIXES = (".csv", ".md", ".json", ".png")


def archive_sweep(out_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy a sweep's results without its checkpoints, TensorBoard logs and fold views: the tables and charts at
    its top level and, per run, metrics, resolved config and predictions. Small enough to commit or share; copied
    back to <root>/sweeps/<name>/, `--resume` continues from it (the finished runs are read, not retrained)."""
    out_dir, dest = Path(out_dir), Path(dest)
    if not (out_dir / "runs.csv").is_file():
        raise FileNotFoundError(f"{out_dir}: no runs.csv; give a sweep folder (<root>/sweeps/<name>)")
    wanted = [p for p in out_dir.iterdir() if p.is_file() and p.suffix in ARCHIVED_SUFFIXES]
    from zoo.analysis.late_fusion import LATE_FUSION_DIR

    for sub in ("runs", LATE_FUSION_DIR):
        wanted += [p for p in sorted((out_dir / sub).rglob("*")) if p.is_file() and p.name in ARCHIVED_RUN_FILES]
    return [atomic_write(dest / path.relative_to(out_dir), lambda tmp, src=path: shutil.copy2(src, tmp))
            for path in wanted]


def merge_sweeps(dest: str | Path, sources: Sequence[str | Path]) -> pd.DataFrame:
    """One k-fold sweep from several run on the same cohort and folds (an entry added later, a second seed run
    apart): their runs.csv rows together, each run's results copied without checkpoints (as --archive keeps them),
    then the leaderboard, late-fusion rows and ablation shape drawn over all of them (`report_sweep`). Refused: a
    source that is not a k-fold sweep, an entry x seed x fold found in two sources, a fold whose test patients differ
    between sources (not the same folds), an entry whose runs were made at two entry versions (metrics.json), a `dest`
    that already holds a sweep."""
    dest, sources = Path(dest), [Path(s) for s in sources]
    if (dest / "runs.csv").exists():
        raise FileExistsError(f"{dest} already holds a sweep (runs.csv); merge into a new folder")
    frames = []
    for source in sources:
        runs = read_runs(source)
        if runs["fold"].isna().any():
            raise ValueError(f"{source} is not a k-fold sweep (run with --folds); only k-fold sweeps merge")
        frames.append(runs.assign(source=str(source)))
    merged = pd.concat(frames, ignore_index=True)
    merged["seed"], merged["fold"] = merged["seed"].astype(int), merged["fold"].astype(int)
    twice = merged[merged.duplicated(["entry", "seed", "fold"], keep=False)]
    if not twice.empty:
        row = twice.iloc[0]
        raise ValueError(f"{row['entry']} seed {row['seed']} fold {row['fold']} is in more than one source "
                         f"({', '.join(sorted(set(twice['source'])))}); merge sweeps of different entries or seeds")
    test_patients: dict[int, tuple[frozenset, str]] = {}
    versions: dict[str, tuple[str, str]] = {}
    for row in merged[merged["status"] == "ok"].itertuples():
        run_dir = run_path(Path(row.source), row.entry, row.seed, row.fold)
        version = str(json.loads((run_dir / METRICS_FILE).read_text()).get("version", "before 1.3"))
        first_version = versions.setdefault(row.entry, (version, row.source))
        if first_version[0] != version:
            raise ValueError(f"{row.entry} ran at entry version {first_version[0]!r} in {first_version[1]} and at "
                             f"{version!r} in {row.source}: one entry's rows must come from one version; rerun the "
                             "older runs at the current version (--resume retrains only those)")
        ids = frozenset(pd.read_csv(run_dir / PREDICTIONS_FILE, usecols=["patient_id"], dtype=str)["patient_id"])
        first = test_patients.setdefault(row.fold, (ids, row.source))
        if first[0] != ids:
            raise ValueError(f"fold {row.fold} tests other patients in {row.source} than in {first[1]}: the sweeps "
                             "were not run on the same cohort and folds")
        for name in ARCHIVED_RUN_FILES:
            if (run_dir / name).is_file():
                target = run_path(dest, row.entry, row.seed, row.fold) / name
                atomic_write(target, lambda tmp, src=run_dir / name: shutil.copy2(src, tmp))
    ceilings: dict[str, float] = {}
    for source in sources:  # one cohort (checked above): the sources' Bayes ceilings, each subset once
        for label, value in read_ceilings(source).items():
            ceilings.setdefault(label, value)
    if ceilings:
        atomic_write_json(dest / CEILINGS_FILE, ceilings)
    atomic_write_text(dest / "runs.csv", merged.drop(columns="source").to_csv(index=False))
    return report_sweep(dest)


def _entry(name: str) -> Any:
    from zoo.registry import get_entry

    return get_entry(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("patterns", nargs="*", help="fnmatch patterns over entry names, e.g. 'attention*' '*_only'; "
                                                    "key=value arguments are config overrides for every run")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of an interrupted sweep that finished (their metrics.json exists, at the "
                             "entry's current version)")
    parser.add_argument("--report", metavar="SWEEP_DIR", default=None,
                        help="no training: rewrite SWEEP_DIR's leaderboard and charts from its runs.csv")
    parser.add_argument("--archive", nargs=2, metavar=("SWEEP_DIR", "DEST"), default=None,
                        help="no training: copy SWEEP_DIR's results without checkpoints to DEST (to commit or "
                             "share; copied back, --resume continues from it)")
    parser.add_argument("--merge", nargs="+", metavar=("DEST", "SWEEP_DIR"), default=None,
                        help="no training: DEST SWEEP_DIR [SWEEP_DIR ...]: one sweep from k-fold sweeps run on the "
                             "same cohort and folds (e.g. an entry added later), reported together")
    parser.add_argument("--recipe", choices=RECIPES, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="k-fold cross-validation over the whole cohort (train+val+test pooled; K >= 2)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output-dir", default="outputs", help="root; results go to <root>/sweeps/<name>")
    parser.add_argument("--name", default=None, help="sweep name (default: derived from the patterns)")
    args = parser.parse_intermixed_args(argv)  # patterns and overrides may follow options
    if args.report:
        table = report_sweep(args.report)
        print((Path(args.report) / "leaderboard.md").read_text())
        return 0 if not table.empty else 1
    if args.archive:
        copied = archive_sweep(*args.archive)
        print(f"{len(copied)} files of {args.archive[0]} copied to {args.archive[1]}")
        return 0
    if args.merge:
        if len(args.merge) < 3:
            parser.error("--merge takes DEST and at least two sweep folders")
        try:
            table = merge_sweeps(args.merge[0], args.merge[1:])
        except (FileNotFoundError, FileExistsError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print((Path(args.merge[0]) / "leaderboard.md").read_text())
        return 0 if not table.empty else 1
    overrides = [p for p in args.patterns if "=" in p]
    patterns = [p for p in args.patterns if "=" not in p]
    if not patterns:
        parser.error("give at least one entry pattern")
    if args.folds is not None and args.folds < 2:
        parser.error(f"--folds must be >= 2 (got {args.folds}); leave it out to use the cohort's own test split")
    table = run_sweep(patterns, seeds=args.seeds, recipe=args.recipe, data_dir=args.data_dir,
                      output_root=args.output_dir, name=args.name, overrides=overrides, resume=args.resume,
                      folds=args.folds)
    return 0 if not table.empty else 1


if __name__ == "__main__":
    sys.exit(main())
