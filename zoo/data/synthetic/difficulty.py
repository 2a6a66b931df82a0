"""Difficulty check of a prepared cohort with hand-crafted features + logistic regression (no deep model).

``python -m zoo.data.synthetic.difficulty --data-dir DIR [--patch-size 128]`` prints 5-fold cross-validated
macro-F1 for every modality subset. Features: pathology = colour / nuclear-density / lumen statistics of the
darkest quarter of each patient's patches (tumour-rich); MRI = intensity statistics of T1 and T2 within the
brightest voxels; clinical = the table's values (standardised, imputed, missing indicators).
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import openslide
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from zoo import spec
from zoo.cli_help import HelpFormatter

from ..clinical import ClinicalPreprocessor
from ..mri import processed_path
from ..patches import read_patches
from ..prepare import mri_processed_dir, tiling_dir
from ..tile import load_coords


def patch_features(patches: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] uint8 -> [N, 7]: mean RGB, dark (nuclear) fraction, very dark fraction, white fraction, blue-red."""
    x = patches.astype(np.float32)
    lo = x.min(axis=1)
    return np.column_stack([x.mean(axis=(2, 3)), (lo < 130).mean(axis=(1, 2)), (lo < 70).mean(axis=(1, 2)),
                            (lo > 215).mean(axis=(1, 2)), (x[:, 2] - x[:, 0]).mean(axis=(1, 2))])


def pathology_features(data_dir: Path, pid: str, patch_size: int, max_patches: int = 64) -> np.ndarray | None:
    feats = []
    for h5 in sorted(tiling_dir(data_dir, patch_size, 0, 0.5).glob(f"{pid}-*.h5")):
        coords, attrs = load_coords(h5)
        coords = coords[np.random.default_rng(0).permutation(len(coords))[:max_patches]]
        with openslide.OpenSlide(str(data_dir / "wsi_raw" / f"{h5.stem}.svs")) as s:
            feats.append(patch_features(read_patches(s, coords, patch_size, 0)))
    if not feats:
        return None
    f = np.concatenate(feats)
    top = f[np.argsort(-f[:, 3])[: max(1, len(f) // 4)]]
    return np.concatenate([top.mean(0), top.std(0)])


def mri_features(data_dir: Path, pid: str) -> np.ndarray | None:
    out = []
    for seq in ("T1", "T2"):
        p = processed_path(mri_processed_dir(data_dir), pid, seq)
        if not p.is_file():
            return None
        v = np.asarray(nib.load(str(p)).dataobj, np.float32)
        q = np.quantile(v, [0.9, 0.99, 0.999])
        hot = v > q[1]
        out += [*q, v[hot].std(), float(np.ptp(np.argwhere(hot), axis=0).mean())]
    return np.asarray(out, np.float32)


def _fill(rows: list[np.ndarray | None]) -> np.ndarray:
    width = next(len(r) for r in rows if r is not None)
    m = np.array([r if r is not None else np.full(width, np.nan) for r in rows], np.float64)
    missing = np.isnan(m).any(axis=1)
    m[missing] = np.nanmean(m, axis=0)
    return np.column_stack([m, missing])


def evaluate(data_dir: Path, patch_size: int = 128, seed: int = 0) -> dict[tuple[str, ...], float]:
    table = pd.concat([pd.read_csv(data_dir / f"{s}_clinical.csv",
                                   dtype={spec.CLINICAL_ID: str}) for s in spec.SPLITS])
    pids, y = table[spec.CLINICAL_ID].tolist(), table[spec.CLINICAL_LABEL].to_numpy()
    feats = {
        "pathology": _fill([pathology_features(data_dir, p,
                                               patch_size) for p in tqdm(pids, desc="pathology features")]),
        "mri": _fill([mri_features(data_dir, p) for p in pids]),
        "clinical": ClinicalPreprocessor(spec.CLINICAL_FEATURES).fit(table).transform(table),
    }
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = {}
    for r in (1, 2, 3):
        for combo in itertools.combinations(spec.MODALITIES, r):
            x = np.concatenate([feats[m] for m in combo], axis=1)
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5, class_weight="balanced"))
            scores[combo] = float(f1_score(y, cross_val_predict(model, x, y, cv=cv), average="macro"))
    return scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.data.synthetic.difficulty", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--patch-size", type=int, default=128, help="an existing tiling (ps<P>_l0_t0.5)")
    a = p.parse_args(argv)
    for combo, score in evaluate(a.data_dir, a.patch_size).items():
        print(f"{'+'.join(combo):28s} macro-F1 {score:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
