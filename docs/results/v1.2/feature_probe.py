"""How much subtype signal a patch-feature cache holds: per-patient mean (+ std) of features ->
standardise -> PCA -> logistic regression, 5-fold CV macro F1 (the same on every cache)."""

import collections
import glob
import sys

import h5py
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

data, cache = sys.argv[1], sys.argv[2]
t = pd.concat([pd.read_csv(f"{data}/{s}_clinical.csv", dtype={"patient_id": str}) for s in ("train", "val", "test")])
feats = collections.defaultdict(list)
for f in glob.glob(f"{cache}/*.h5"):
    pid = f.split("/")[-1].rsplit("-", 1)[0]
    with h5py.File(f) as h:
        feats[pid].append(h["features"][()])
rows, ys = [], []
for pid, y in zip(t.patient_id, t.molecular_subtype):
    if pid in feats:
        x = np.concatenate(feats[pid])
        rows.append(np.concatenate([x.mean(0), x.std(0)]))
        ys.append(y)
X, Y = np.array(rows), np.array(ys)
for C in (0.05, 0.5):
    m = make_pipeline(
        StandardScaler(), PCA(32, random_state=0), LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
    )
    p = cross_val_predict(m, X, Y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    print(cache.split("/")[-1], "C", C, "n", len(Y), "macro F1", round(f1_score(Y, p, average="macro"), 3))
