"""MRI-only 4-fold CV of encoder variants on the cohort's preprocessed volumes."""

import json
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from torch import nn

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from zoo.data.mri import processed_path
from zoo.data.prepare import mri_processed_dir
from zoo.models.volume_encoders import ResNet3d

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
data = sys.argv[3] if len(sys.argv) > 3 else "data/breast_cancer"
t = pd.concat([pd.read_csv(f"{data}/{s}_clinical.csv", dtype={"patient_id": str}) for s in ("train", "val", "test")])
vols, ys = [], []
for pid, y in zip(t.patient_id, t.molecular_subtype):
    ps = [processed_path(mri_processed_dir(data), pid, s) for s in ("T1", "T2")]
    if not all(p.is_file() for p in ps):
        continue
    vols.append(np.stack([np.asarray(nib.load(str(p)).dataobj, np.float32) for p in ps]))
    ys.append(y)
X, Y = torch.tensor(np.stack(vols)), torch.tensor(ys)
print(len(Y), X.shape, flush=True)
variants = {
    "r18w8_avg_T1": dict(blocks=(2, 2, 2, 2), width=8, pool="avg", ch=[0]),
    "r18w8_avg_T1T2": dict(blocks=(2, 2, 2, 2), width=8, pool="avg", ch=[0, 1]),
    "r18w8_avgmax_T1T2": dict(blocks=(2, 2, 2, 2), width=8, pool="avgmax", ch=[0, 1]),
    "tinyw16_avgmax_T1T2": dict(blocks=(1, 1), width=16, pool="avgmax", ch=[0, 1]),
    "r18w8_avgmax_T1": dict(blocks=(2, 2, 2, 2), width=8, pool="avgmax", ch=[0]),
    "r18w8_avgmax_stats_T1T2": dict(blocks=(2, 2, 2, 2), width=8, pool="avgmax", ch=[0, 1], stats=True),
}
name = sys.argv[1]
v = variants[name]
epochs, lr = 30, 5e-4
oof = np.zeros((len(Y), 4))
t0 = time.time()
for fold, (tr, te) in enumerate(StratifiedKFold(4, shuffle=True, random_state=0).split(np.zeros(len(Y)), Y)):
    torch.manual_seed(fold)
    enc = ResNet3d(v["blocks"], len(v["ch"]), v["width"], v["pool"], v.get("stats", False))
    model = nn.Sequential(enc, nn.Dropout(0.5), nn.Linear(enc.out_dim, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    counts = np.bincount(Y[tr].numpy(), minlength=4)
    w = torch.tensor(counts.sum() / (4 * counts), dtype=torch.float32)
    crit = nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    steps = epochs * int(np.ceil(len(tr) / 16))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    xs = X[:, v["ch"]]
    for ep in range(epochs):
        model.train()
        perm = np.random.default_rng(ep + 100 * fold).permutation(tr)
        for i in range(0, len(perm), 16):
            b = perm[i : i + 16]
            xb = xs[b].clone()
            for ax in (2, 3):
                flip = torch.rand(len(b)) < 0.5
                xb[flip] = xb[flip].flip(ax)
            xb += 0.01 * torch.randn_like(xb)
            loss = crit(model(xb), Y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        oof[te] = torch.softmax(model(xs[te]), 1).numpy()
    print(name, fold, f"{time.time() - t0:.0f}s", f1_score(Y[te], oof[te].argmax(1), average="macro"), flush=True)
f1 = f1_score(Y, oof.argmax(1), average="macro")
auc = roc_auc_score(Y, oof, multi_class="ovr")
print(
    json.dumps({"variant": name, "oof_f1": round(f1, 3), "auc": round(auc, 3), "time_s": round(time.time() - t0)}),
    flush=True,
)
