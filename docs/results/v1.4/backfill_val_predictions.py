"""Write val_predictions.csv for finished runs that predate it, from their best.pt, and only where it reproduces
the run's own best validation macro F1 (metrics.json) exactly: otherwise the run is reported and left alone.

Runs trained from commit baacb5c on write the file themselves; this is for the sweeps made before, whose
checkpoints are still on the machine (archives keep no checkpoints). Every run folder under the given folders that
holds best.pt, config.yaml and metrics.json and no val_predictions.csv is done; the cohort (fold views) must be
where the run's config says.

uv run python docs/results/v1.4/backfill_val_predictions.py outputs/sweeps/cv4_v14_500/runs [...]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from zoo.analysis.crossval import pooled_metrics  # noqa: E402
from zoo.analysis.viz import cached_feature_dir, forward  # noqa: E402
from zoo.atomic import atomic_write_text  # noqa: E402
from zoo.checkpoint import load_model  # noqa: E402
from zoo.data import BreastCancerMultiModalDataset, collate_multimodal  # noqa: E402
from zoo.spec import BEST_CHECKPOINT, KEY_LABEL, KEY_PATIENT_ID, METRICS_FILE, VAL_PREDICTIONS_FILE  # noqa: E402
from zoo.training.trainer import EpochOutput, predictions_table  # noqa: E402


def backfill(run: Path) -> str:
    model, payload = load_model(run / BEST_CHECKPOINT, version=str(metrics(run)["version"]))
    config = payload["config"]
    dataset = BreastCancerMultiModalDataset.from_config(config, "val", training=False,
                                                        feature_dir=cached_feature_dir(config, model))
    loader = DataLoader(dataset, batch_size=int(config["data"]["batch_size"]), shuffle=False,
                        collate_fn=collate_multimodal)
    labels, probs, ids = [], [], []
    with torch.no_grad():
        for batch in loader:
            p, _ = forward(model, batch)
            labels.append(batch[KEY_LABEL].numpy())
            probs.append(p.numpy())
            ids.extend(batch[KEY_PATIENT_ID])
    table = predictions_table(EpochOutput(float("nan"), np.concatenate(labels), np.concatenate(probs), ids),
                              payload["class_names"])
    expected = float(metrics(run)["best_val"]["f1_macro"])
    got = pooled_metrics(table)["f1_macro"]
    if abs(got - expected) > 1e-6:
        return f"NOT written: validation macro F1 {got:.6f} here, {expected:.6f} in {METRICS_FILE}"
    atomic_write_text(run / VAL_PREDICTIONS_FILE, table.to_csv(index=False))
    return f"written ({len(table)} patients, macro F1 {got:.4f} = {METRICS_FILE})"


def metrics(run: Path) -> dict:
    return json.loads((run / METRICS_FILE).read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    runs = sorted({p.parent for folder in args.folders for p in folder.rglob(BEST_CHECKPOINT)
                   if (p.parent / METRICS_FILE).is_file() and not (p.parent / VAL_PREDICTIONS_FILE).is_file()})
    failed = 0
    for run in tqdm(runs, desc="val predictions", dynamic_ncols=True):
        message = backfill(run)
        failed += message.startswith("NOT")
        tqdm.write(f"{run}: {message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
