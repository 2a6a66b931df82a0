"""Split the served logits of late-residual fusion models into the late term and the fused term.

For every fold of 4-fold cross-validation runs (one seed folder per strategy, each holding fold0..fold3 with their
checkpoints: `zoo.sweep` output, not an archive), load best.pt with the project's own loader
(zoo.checkpoint.load_model), build the fold's test split with the project's dataset, run it in eval mode and
compute

  late  = late_fusion_logits(unimodal_logits, presence, late_rule)     (the late term alone)
  fused = fusion_head.head(fusion_head.fusion(embeddings, presence))   (the fused term alone)
  full  = late + fused                                                 (must equal the served logits)

and check softmax(full) against the run's test_predictions.csv. Inference only; the feature cache is read, never
written (a slide not validly cached stops the script). Run from the repository root:

uv run python docs/results/v1.4/fused_term.py \
  attention=outputs/sweeps/cv4_v14_final/runs/attention/seed0 \
  concatenate=outputs/sweeps/cv4_v14_final_strategies/runs/concatenate/seed0 > fused_term.txt
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score, log_loss  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
os.chdir(REPO)  # configs hold data_dir relative to the repository root

from zoo.checkpoint import load_model  # noqa: E402
from zoo.data import BreastCancerMultiModalDataset, collate_multimodal  # noqa: E402
from zoo.models.fusion import late_fusion_logits  # noqa: E402
from zoo.spec import (AUX_EMBEDDINGS, AUX_FUSION_ATTENTION, AUX_PRESENCE, AUX_UNIMODAL_LOGITS,  # noqa: E402
                      KEY_LABEL, KEY_PATIENT_ID)
from zoo.training.feature_cache import cache_is_valid, encoder_identity, expected_attrs, feature_dir  # noqa: E402
from zoo.training.pipeline import cohort_tiling_dir, uses_feature_cache  # noqa: E402
from zoo.training.trainer import model_inputs  # noqa: E402

torch.set_num_threads(1)

FOLDS = (0, 1, 2, 3)


def read_only_feature_dir(config, model, dataset_slides) -> Path:
    """The feature cache directory the training used (same key as zoo.training.feature_cache.ensure_features),
    checked valid for every slide the split needs; raises instead of computing anything."""
    if not uses_feature_cache(config) or getattr(model, "patch_encoder", None) is None:
        raise RuntimeError("run does not use the frozen-encoder feature cache; this script expects it")
    tiling = cohort_tiling_dir(config)
    identity = encoder_identity(model.patch_encoder, tiling)
    directory = feature_dir(config["data"]["data_dir"], identity)
    bad = [s for s in dataset_slides
           if not cache_is_valid(directory / f"{s}.h5", expected_attrs(identity, tiling / f"{s}.h5"))]
    if bad:
        raise RuntimeError(f"{directory}: {len(bad)} slide(s) not validly cached (e.g. {bad[:3]}); "
                           "would need feature extraction -- stopping")
    return directory


def run_fold(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    model, payload = load_model(run / "best.pt", version=str(metrics["version"]))
    model.eval()
    config = payload["config"]
    fh = model.fusion_head
    assert fh.late_residual and not fh.heads_only and fh.unimodal_heads is not None, "not a late-residual model"
    # Test split without features first, only to list its slides; then with the validated cache.
    probe = BreastCancerMultiModalDataset.from_config(config, "test", training=False)
    slides = sorted({s.slide_id for ss in probe._slides.values() for s in ss})
    fdir = read_only_feature_dir(config, model, slides)
    dataset = BreastCancerMultiModalDataset.from_config(config, "test", training=False, feature_dir=fdir)
    loader = DataLoader(dataset, batch_size=int(config["data"]["batch_size"]), shuffle=False, num_workers=0,
                        collate_fn=collate_multimodal)
    rows = {k: [] for k in ("served", "late", "fused", "attn", "presence", "label")}
    ids = []
    with torch.no_grad():
        for batch in loader:
            logits, aux = model(model_inputs(batch))
            presence = aux[AUX_PRESENCE].bool()
            emb = [aux[AUX_EMBEDDINGS][m] for m in model.modalities]
            uni = [aux[AUX_UNIMODAL_LOGITS][m] for m in model.modalities]
            late = late_fusion_logits(uni, presence, fh.late_rule)
            fused_repr, weights = fh.fusion(emb, presence)
            fused = fh.head(fused_repr)
            rows["served"].append(logits.float().numpy())
            rows["late"].append(late.float().numpy())
            rows["fused"].append(fused.float().numpy())
            rows["attn"].append(aux[AUX_FUSION_ATTENTION].float().numpy())
            rows["presence"].append(presence.numpy())
            rows["label"].append(batch[KEY_LABEL].numpy())
            ids.extend(str(p) for p in batch[KEY_PATIENT_ID])
    out = {k: np.concatenate(v) for k, v in rows.items()}
    out["ids"] = ids
    out["modalities"] = tuple(model.modalities)
    out["class_names"] = list(payload["class_names"])
    out["late_rule"] = fh.late_rule
    out["fusion_type"] = fh.fusion_type
    # parity: late + fused == served logits; softmax(served) == test_predictions.csv
    out["sum_vs_served"] = float(np.abs(out["late"] + out["fused"] - out["served"]).max())
    saved = pd.read_csv(run / "test_predictions.csv").set_index("patient_id")
    cols = [f"p_{c}" for c in out["class_names"]]
    full = out["late"] + out["fused"]
    probs = torch.softmax(torch.from_numpy(full), dim=1).numpy()
    ref = saved.loc[ids, cols].to_numpy(dtype=np.float64)
    out["prob_vs_csv"] = float(np.abs(probs - ref).max())
    out["labels_match_csv"] = bool((saved.loc[ids, "label"].to_numpy() == out["label"]).all())
    out["n_csv"] = len(saved)
    return out


def softmax(x):
    return torch.softmax(torch.from_numpy(np.asarray(x, dtype=np.float64)), dim=1).numpy()


def scores(y, logits, k=4):
    p = softmax(logits)
    pred = p.argmax(1)
    return {"f1": f1_score(y, pred, average="macro", labels=list(range(k)), zero_division=0),
            "acc": accuracy_score(y, pred),
            "logloss": log_loss(y, np.clip(p, 1e-12, 1), labels=list(range(k))),
            "per_class_f1": f1_score(y, pred, average=None, labels=list(range(k)), zero_division=0)}


def centered(x):
    return x - x.mean(axis=1, keepdims=True)


def report(strategy: str, folds: list[dict]) -> list[str]:
    lines = []
    cat = {k: np.concatenate([f[k] for f in folds]) for k in ("served", "late", "fused", "attn", "presence", "label")}
    y, late, fused = cat["label"], cat["late"], cat["fused"]
    full = late + fused
    mods = folds[0]["modalities"]
    classes = folds[0]["class_names"]
    n = len(y)
    lines.append(f"=== {strategy}  (fusion {folds[0]['fusion_type']}, late_rule {folds[0]['late_rule']}, "
                 f"modalities {', '.join(mods)}; {n} out-of-fold test patients, 4 folds x "
                 f"{', '.join(str(len(f['label'])) for f in folds)}) ===")
    lines.append("parity per fold: max|late+fused - served logits|, max|softmax(late+fused) - test_predictions.csv|, "
                 "labels match csv")
    for i, f in enumerate(folds):
        lines.append(f"  fold{i}: {f['sum_vs_served']:.2e}  {f['prob_vs_csv']:.2e}  {f['labels_match_csv']} "
                     f"(csv rows {f['n_csv']}, evaluated {len(f['label'])})")
    s_late, s_full, s_fused = scores(y, late), scores(y, full), scores(y, fused)
    lines.append("")
    lines.append(f"{'pooled OOF':<26}{'macroF1':>9}{'acc':>8}{'logloss':>9}   per-class F1 ({' / '.join(classes)})")
    for name, s in (("(a) late term alone", s_late), ("(c) full = late + fused", s_full),
                    ("(b) fused term alone*", s_fused)):
        pc = " / ".join(f"{v:.3f}" for v in s["per_class_f1"])
        lines.append(f"{name:<26}{s['f1']:>9.3f}{s['acc']:>8.3f}{s['logloss']:>9.3f}   {pc}")
    lines.append("  * the fused term alone is not a trained classifier on its own (its head was trained as a residual "
                 "on top of the late term); shown for reference")
    lines.append("per fold macro F1 late -> full: " + ", ".join(
        f"f{i} {scores(f['label'], f['late'])['f1']:.3f}->{scores(f['label'], f['late'] + f['fused'])['f1']:.3f}"
        for i, f in enumerate(folds)))
    lines.append("")
    lines.append("logit magnitudes (per patient 4-vector; 'centred' = minus its row mean, the part softmax sees):")
    lines.append(f"{'':<22}{'meanL2':>9}{'meanL2c':>9}{'std':>8}{'std_c':>8}{'range_c mean':>14}")
    for name, x in (("late term", late), ("fused term", fused), ("full", full)):
        c = centered(x)
        lines.append(f"{name:<22}{np.linalg.norm(x, axis=1).mean():>9.3f}{np.linalg.norm(c, axis=1).mean():>9.3f}"
                     f"{x.std():>8.3f}{c.std():>8.3f}{(c.max(1) - c.min(1)).mean():>14.3f}")
    ratio = np.linalg.norm(centered(fused), axis=1) / np.maximum(np.linalg.norm(centered(late), axis=1), 1e-12)
    cos = (centered(fused) * centered(late)).sum(1) / np.maximum(
        np.linalg.norm(centered(fused), axis=1) * np.linalg.norm(centered(late), axis=1), 1e-12)
    lines.append(f"per-patient ||fused_c|| / ||late_c||: median {np.median(ratio):.3f}, mean {ratio.mean():.3f}, "
                 f"max {ratio.max():.3f}; cosine(fused_c, late_c): mean {cos.mean():+.3f}")
    lines.append("")
    pl, pf = late.argmax(1), full.argmax(1)
    changed = pl != pf
    r2w = int((changed & (pl == y) & (pf != y)).sum())
    w2r = int((changed & (pl != y) & (pf == y)).sum())
    w2w = int((changed & (pl != y) & (pf != y)).sum())
    lines.append(f"adding the fused term changes the predicted class for {int(changed.sum())}/{n} patients "
                 f"({changed.mean():.1%}): right->wrong {r2w}, wrong->right {w2r}, wrong->other wrong {w2w}; "
                 f"net correct {w2r - r2w:+d}")
    if r2w + w2r:
        from scipy.stats import binomtest
        lines.append(f"  exact McNemar (sign) test on right<->wrong flips: two-sided p = "
                     f"{binomtest(w2r, r2w + w2r, 0.5).pvalue:.3f}")
    rng = np.random.default_rng(0)
    pred_l, pred_f = late.argmax(1), full.argmax(1)
    diffs = []
    for _ in range(2000):
        idx = rng.integers(0, n, n)
        diffs.append(f1_score(y[idx], pred_f[idx], average="macro", labels=[0, 1, 2, 3], zero_division=0)
                     - f1_score(y[idx], pred_l[idx], average="macro", labels=[0, 1, 2, 3], zero_division=0))
    diffs = np.asarray(diffs)
    lines.append(f"  paired bootstrap (2000 x {n} patients) of macro F1 full - late: "
                 f"{s_full['f1'] - s_late['f1']:+.3f}, 95% interval {np.percentile(diffs, 2.5):+.3f} .. "
                 f"{np.percentile(diffs, 97.5):+.3f}; P(diff <= 0) = {(diffs <= 0).mean():.3f}")
    if changed.any():
        trans = pd.crosstab(pd.Series([classes[i] for i in pl[changed]], name="late pred"),
                            pd.Series([classes[i] for i in pf[changed]], name="full pred"))
        lines.append("  changed predictions (late pred -> full pred):")
        lines += ["    " + ln for ln in trans.to_string().splitlines()]
    pres = cat["presence"]
    lines.append(f"presence: all {len(mods)} modalities on {int(pres.all(1).sum())}/{n}; per modality "
                 + ", ".join(f"{m} {int(pres[:, j].sum())}" for j, m in enumerate(mods)))
    if folds[0]["fusion_type"] == "attention":
        full_mask = pres.all(1)
        w = cat["attn"][full_mask]
        ent = -(w * np.log(np.clip(w, 1e-12, 1))).sum(1)
        lines.append(f"fusion attention on the {int(full_mask.sum())} patients with all modalities "
                     f"(uniform entropy ln{len(mods)} = {np.log(len(mods)):.3f}):")
        lines.append("  mean weight: " + ", ".join(f"{m} {w[:, j].mean():.3f}" for j, m in enumerate(mods))
                     + f"; mean entropy {ent.mean():.3f} nats; max weight > 0.8 on {(w.max(1) > 0.8).mean():.1%}"
                     + "; argmax modality counts: "
                     + ", ".join(f"{m} {int((w.argmax(1) == j).sum())}" for j, m in enumerate(mods)))
        for i, f in enumerate(folds):
            m = f["presence"].all(1)
            wf = f["attn"][m]
            lines.append(f"  fold{i}: " + ", ".join(f"{mm} {wf[:, j].mean():.3f}" for j, mm in enumerate(mods))
                         + f"; max>0.8 {(wf.max(1) > 0.8).mean():.1%}")
        # do changed patients differ in their attention?
        ch_full = changed[full_mask]
        if ch_full.any():
            lines.append(f"  on the {int(ch_full.sum())} full-modality patients whose class the fused term changes: "
                         + ", ".join(f"{m} {w[ch_full, j].mean():.3f}" for j, m in enumerate(mods)))
    return lines


def main(argv: list[str]) -> int:
    runs = {name: (REPO / path).resolve() for name, path in (a.split("=", 1) for a in argv)}
    if not runs:
        print(__doc__, file=sys.stderr)
        return 2
    t0 = time.process_time()
    w0 = time.time()
    lines = [f"fused vs late term of late-residual fusion (logits = head(fused) + late_fusion_logits); "
             f"torch {torch.__version__}, threads {torch.get_num_threads()}", ""]
    for strategy, root in runs.items():
        folds = []
        for k in FOLDS:
            run = root / f"fold{k}"
            t = time.time()
            folds.append(run_fold(run))
            print(f"{strategy} fold{k}: {len(folds[-1]['label'])} patients in {time.time() - t:.1f} s "
                  f"({run})", file=sys.stderr, flush=True)
        lines += report(strategy, folds) + [""]
    lines.append(f"CPU {time.process_time() - t0:.1f} s, wall {time.time() - w0:.1f} s")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
