"""Per fold of a k-fold sweep: an entry's mean fusion weight per modality on the fold's held-out patients, and what
its fused term adds to its late term (accuracy of the late term alone -> of the served logits).

    uv run python docs/results/v1.5/fusion_weights.py outputs/sweeps/<sweep>/runs/<entry>/seed<s> [...]

Needs the sweep's checkpoints (fold<k>/best.pt) and cohort; a model without a late term reports the served accuracy
only. The late term is read as served logits minus the fused classifier's output (zoo.models.fusion.FusionHead).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from zoo.analysis.viz import collate_one, make_dataset, view_config  # noqa: E402
from zoo.checkpoint import load_model  # noqa: E402
from zoo.spec import AUX_FUSION_ATTENTION, BEST_CHECKPOINT, KEY_LABEL  # noqa: E402
from zoo.training.trainer import model_inputs  # noqa: E402


@torch.no_grad()
def read_fold(checkpoint: Path) -> dict:
    model, payload = load_model(checkpoint)
    config = view_config(payload, None, all_patches=False)
    dataset = make_dataset(config, "test", model)  # a fold's test split = its held-out patients
    head = model.fusion_head
    fused_out: list[torch.Tensor] = []
    hook = head.head.register_forward_hook(lambda _m, _i, out: fused_out.append(out[0].clone()))
    weights, served, labels = [], [], []
    try:
        for i in range(len(dataset)):
            batch = collate_one(dataset, i)
            logits, aux = model(model_inputs(batch))
            weights.append(aux[AUX_FUSION_ATTENTION][0].numpy())
            served.append(logits[0].numpy())
            labels.append(int(batch[KEY_LABEL][0]))
    finally:
        hook.remove()
    served_arr, labels_arr = np.stack(served), np.asarray(labels)
    row = {"modalities": model.modalities, "weights": np.stack(weights).mean(axis=0),
           "served": float((served_arr.argmax(1) == labels_arr).mean()), "late": None}
    if head.late_residual:
        late = served_arr - torch.stack(fused_out).numpy()
        row["late"] = float((late.argmax(1) == labels_arr).mean())
    return row


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for seed_dir in map(Path, argv):
        folds = sorted(seed_dir.glob(f"fold*/{BEST_CHECKPOINT}"))
        if not folds:
            print(f"error: no fold*/{BEST_CHECKPOINT} under {seed_dir} (an archive keeps no checkpoints: use the "
                  "sweep folder itself)", file=sys.stderr)
            return 2
        print(f"{seed_dir}")
        for checkpoint in folds:
            r = read_fold(checkpoint)
            weights = " / ".join(f"{m} {w:.3f}" for m, w in zip(r["modalities"], r["weights"]))
            late = f"late term {r['late']:.3f} -> " if r["late"] is not None else ""
            print(f"  {checkpoint.parent.name}: mean weight {weights}; {late}served {r['served']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
