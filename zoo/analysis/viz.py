"""Attention views of a trained checkpoint; figures go to <checkpoint dir>/figures/ (or --output-dir).

    python -m zoo.viz mil --checkpoint outputs/<entry>/best.pt --patient-id P [--top-k 10]
    python -m zoo.viz fusion --checkpoint outputs/<entry>/best.pt [--patient-id P] [--split test]
    python -m zoo.viz attention-score --checkpoint outputs/<entry>/best.pt [--split test]

`mil`: the top-k patches with their attention weights (seed 9.1) and a whole-slide heatmap over each of the
patient's slides (CLAM-style). `fusion`: per-modality fusion weights of one patient (seed 9.2) and the cohort
average per class. `attention-score`: AUROC of patch attention against the synthetic cohort's ground-truth
tumour masks, per slide and mean (written to attention_score.json).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from zoo.analysis.attention_plots import fusion_bar_figure, fusion_by_class_figure, heatmap_figure, top_k_figure
from zoo.analysis.attention_score import load_tumour_mask, score_slide, summarise
from zoo.atomic import atomic_write_json
from zoo.checkpoint import CheckpointError, load_model
from zoo.cli_help import HelpFormatter
from zoo.data.patches import iter_patch_batches
from zoo.data.tile import load_coords, patch_read_size, resolution_options
from zoo.spec import (
    AUX_FUSION_ATTENTION,
    AUX_PATHOLOGY_ATTENTION,
    BEST_CHECKPOINT,
    CLINICAL_ID,
    KEY_LABEL,
    KEY_PATHOLOGY_COORDS,
    KEY_PATHOLOGY_MASK,
    KEY_PATIENT_ID,
    KEY_SLIDE_IDS,
    SPLITS,
)
from zoo.training.trainer import model_inputs

ALL_PATCHES = 1_000_000  # max_patches for views: every tiled patch of the patient


class VizError(ValueError):
    """Bad viz input (checkpoint, patient, modality); the message says what to do."""


def view_config(payload: dict[str, Any], data_dir: str | Path | None, all_patches: bool = True) -> dict[str, Any]:
    """The checkpoint's config on `data_dir`; every tiled patch of a patient when `all_patches`, else the bag size
    the model was trained with (fusion weights are read as the model saw its patients)."""
    config = copy.deepcopy(payload["config"])
    if data_dir is not None:
        config["data"]["data_dir"] = str(data_dir)
    if all_patches:
        config["data"]["modalities"]["pathology"]["max_patches"] = ALL_PATCHES
    return config


def split_of(data_dir: Path, patient_id: str) -> str:
    for split in SPLITS:
        path = data_dir / f"{split}_clinical.csv"
        if path.is_file() and patient_id in set(pd.read_csv(path, usecols=[CLINICAL_ID])[CLINICAL_ID].astype(str)):
            return split
    raise VizError(f"patient {patient_id!r} is in none of {data_dir}/{{train,val,test}}_clinical.csv")


def cached_feature_dir(config: dict[str, Any], model: torch.nn.Module) -> Path | None:
    """A frozen patch encoder trained on cached features: reuse (or complete) that cache instead of reading and
    encoding every patch of every slide again. None for fine-tuned encoders."""
    from zoo.training.feature_cache import ensure_features
    from zoo.training.pipeline import cohort_tiling_dir, uses_feature_cache

    if getattr(model, "patch_encoder", None) is None or not uses_feature_cache(config):
        return None
    return ensure_features(config["data"]["data_dir"], model.patch_encoder,
                           tiling_dir=cohort_tiling_dir(config)).directory


def make_dataset(config: dict[str, Any], split: str, model: torch.nn.Module):
    from zoo.data import BreastCancerMultiModalDataset

    return BreastCancerMultiModalDataset.from_config(config, split, data_dir=Path(config["data"]["data_dir"]),
                                                     feature_dir=cached_feature_dir(config, model), training=False)


def collate_one(dataset: Any, index: int) -> dict[str, Any]:
    from zoo.data import collate_multimodal

    return collate_multimodal([dataset[index]])


@torch.no_grad()
def forward(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    logits, aux = model(model_inputs(batch))
    return torch.softmax(logits.float(), dim=1), aux


def patient_index(dataset: Any, patient_id: str) -> int:
    ids = [str(p) for p in dataset.patient_ids]
    if patient_id not in ids:
        raise VizError(f"patient {patient_id!r} not found in the {dataset.split!r} split")
    return ids.index(patient_id)


def slide_attention(batch: dict[str, Any], attention: torch.Tensor) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(slide_id, coords [n,2], attention [n])] for the first sample of a collated batch."""
    mask = batch[KEY_PATHOLOGY_MASK][0].numpy().astype(bool)
    coords = batch[KEY_PATHOLOGY_COORDS][0].numpy()[mask]
    weights = attention[0].float().numpy()[mask]
    out = []
    for k, slide_id in enumerate(batch[KEY_SLIDE_IDS][0]):
        sel = coords[:, 0] == k
        out.append((str(slide_id), coords[sel, 1:], weights[sel]))
    return out


def require_modality(model: torch.nn.Module, modality: str, command: str) -> None:
    if modality not in model.modalities:
        raise VizError(f"`zoo.viz {command}` needs a model with {modality}; this checkpoint has {model.modalities}")


def slide_thumbnail(slide_path: str, max_size: int = 1024) -> tuple[np.ndarray, float]:
    import openslide

    slide = openslide.OpenSlide(slide_path)
    try:
        thumb = slide.get_thumbnail((max_size, max_size)).convert("RGB")
        return np.asarray(thumb), thumb.size[0] / slide.dimensions[0]
    finally:
        slide.close()


def tiling_info(config: dict[str, Any], slide_id: str, dataset: Any = None,
                patient_id: str | None = None) -> dict[str, Any]:
    """slide_path, patch_size, level and patch_size_level0 of a slide: from the stored feature file's coords attrs
    when the model was trained on stored features (data.modalities.pathology.features_dir), else the tiling's."""
    from zoo.data.prepare import tiling_dir

    if dataset is not None and getattr(dataset, "external_features", None) is not None:
        info = dataset.slide_info(str(patient_id), slide_id)
        if "patch_size_level0" not in info:
            raise VizError(f"slide {slide_id}: its stored features carry no patch geometry (patch_size_level0)")
        if "level" not in info:  # TRIDENT tiles by magnification: read the level-0 square, resized by the view
            info["level"], info["patch_size"] = 0, int(info["patch_size_level0"])
        info.setdefault("slide_path", "")  # none in wsi_raw: scores work, patch views and heatmaps cannot
        return info
    pathology = config["data"]["modalities"]["pathology"]
    directory = tiling_dir(config["data"]["data_dir"], pathology["patch_size"], pathology["level"],
                          pathology["tissue_threshold"], **resolution_options(pathology))
    return load_coords(directory / f"{slide_id}.h5")[1]


# ---------------------------------------------------------------------------------------------- commands
def cmd_mil(args: argparse.Namespace) -> list[Path]:
    model, payload = load_model(args.checkpoint, version=args.version)
    require_modality(model, "pathology", "mil")
    config = view_config(payload, args.data_dir)
    data_dir = Path(config["data"]["data_dir"])
    dataset = make_dataset(config, split_of(data_dir, args.patient_id), model)
    batch = collate_one(dataset, patient_index(dataset, args.patient_id))
    if not batch[KEY_PATHOLOGY_MASK].any():
        raise VizError(f"patient {args.patient_id!r} has no pathology patches; pick a patient with slides")
    probs, aux = forward(model, batch)
    slides = slide_attention(batch, aux[AUX_PATHOLOGY_ATTENTION])
    out_dir = figures_dir(args)
    written = []
    flat = [(w, slide_id, xy) for slide_id, coords, weights in slides for xy, w in zip(coords, weights)]
    flat.sort(key=lambda t: -t[0])
    top = flat[: args.top_k]
    patches, titles = [], []
    for _weight, slide_id, xy in top:
        info = tiling_info(config, slide_id, dataset, args.patient_id)
        _, patch = next(iter_patch_batches(str(info["slide_path"]), np.asarray([xy]), int(info["patch_size"]),
                                           int(info["level"]), batch_size=1, threads=0,
                                           read_size=patch_read_size(info)))
        patches.append(patch[0])
        titles.append(f"{slide_id} ({xy[0]}, {xy[1]})")
    predicted = payload["class_names"][int(probs.argmax())]
    written.append(top_k_figure(np.stack(patches), [t[0] for t in top], titles,
                                out_dir / f"mil_attention_{args.patient_id}.png",
                                suptitle=f"{args.patient_id}: top-{len(top)} patches (predicted {predicted})"))
    for slide_id, coords, weights in slides:
        info = tiling_info(config, slide_id, dataset, args.patient_id)
        thumb, scale = slide_thumbnail(str(info["slide_path"]))
        try:
            mask, _ = load_tumour_mask(data_dir, slide_id)
        except FileNotFoundError:
            mask = None
        written.append(heatmap_figure(thumb, scale, coords, float(info["patch_size_level0"]), weights,
                                      out_dir / f"mil_heatmap_{slide_id}.png",
                                      title=f"{slide_id}: attention heatmap", tumour_mask=mask))
    return written


def cmd_fusion(args: argparse.Namespace) -> list[Path]:
    model, payload = load_model(args.checkpoint, version=args.version)
    if len(model.modalities) < 2:
        raise VizError(f"`zoo.viz fusion` needs a multimodal model; this checkpoint has only {model.modalities}")
    config = view_config(payload, args.data_dir, all_patches=False)
    data_dir = Path(config["data"]["data_dir"])
    split = split_of(data_dir, args.patient_id) if args.patient_id else args.split
    dataset = make_dataset(config, split, model)
    class_names = payload["class_names"]
    weights, labels, ids = [], [], []
    for i in tqdm(range(len(dataset)), desc=f"fusion attention ({split})", dynamic_ncols=True):
        batch = collate_one(dataset, i)
        _, aux = forward(model, batch)
        weights.append(aux[AUX_FUSION_ATTENTION][0].float().numpy())
        labels.append(int(batch[KEY_LABEL][0]))
        ids.append(str(batch[KEY_PATIENT_ID][0]))
    weights_arr = np.stack(weights)
    out_dir = figures_dir(args)
    patient = args.patient_id or ids[0]
    row = weights_arr[ids.index(patient)]
    written = [fusion_bar_figure(list(model.modalities), row.tolist(), out_dir / f"fusion_attention_{patient}.png",
                                 title=f"Fusion attention: patient {patient}")]
    per_class = np.stack([weights_arr[np.asarray(labels) == k].mean(axis=0) if (np.asarray(labels) == k).any()
                          else np.full(len(model.modalities), np.nan) for k in range(len(class_names))])
    written.append(fusion_by_class_figure(class_names, list(model.modalities), per_class,
                                          out_dir / f"fusion_attention_by_class_{split}.png",
                                          title=f"Mean fusion attention per true class ({split} split)"))
    return written


def cmd_attention_score(args: argparse.Namespace) -> list[Path]:
    model, payload = load_model(args.checkpoint, version=args.version)
    require_modality(model, "pathology", "attention-score")
    config = view_config(payload, args.data_dir)
    data_dir = Path(config["data"]["data_dir"])
    dataset = make_dataset(config, args.split, model)
    scores = []
    for i in tqdm(range(len(dataset)), desc=f"attention vs tumour mask ({args.split})", dynamic_ncols=True):
        batch = collate_one(dataset, i)
        if not batch[KEY_PATHOLOGY_MASK].any():
            continue
        _, aux = forward(model, batch)
        for slide_id, coords, weights in slide_attention(batch, aux[AUX_PATHOLOGY_ATTENTION]):
            info = tiling_info(config, slide_id, dataset, str(batch[KEY_PATIENT_ID][0]))
            scores.append(score_slide(data_dir, slide_id, coords, weights, float(info["patch_size_level0"])))
    if not scores:
        raise VizError(f"no slide with patches in the {args.split!r} split of {data_dir}")
    summary = {"checkpoint": str(args.checkpoint), "split": args.split, **summarise(scores)}
    path = figures_dir(args).parent / f"attention_score_{args.split}.json"
    atomic_write_json(path, summary)
    print(f"attention AUROC vs tumour mask ({args.split}): mean {summary['mean_auroc']:.3f} over "
          f"{summary['num_slides_scored']} of {summary['num_slides']} slide(s) (others are all-tumour or all-normal)")
    for s in scores:
        print(f"  {s.slide_id}: AUROC {s.auroc:.3f}  ({s.num_tumour}/{s.num_patches} tumour patches)")
    return [path]


COMMANDS: dict[str, Callable[[argparse.Namespace], list[Path]]] = {
    "mil": cmd_mil,
    "fusion": cmd_fusion,
    "attention-score": cmd_attention_score,
}


def figures_dir(args: argparse.Namespace) -> Path:
    out = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent / "figures"
    out.mkdir(parents=True, exist_ok=True)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zoo.viz", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        p = sub.add_parser(name, formatter_class=HelpFormatter)
        p.add_argument("--checkpoint", required=True, help=f"outputs/<entry>/{BEST_CHECKPOINT}")
        p.add_argument("--data-dir", default=None, help="cohort directory (default: the checkpoint config's)")
        p.add_argument("--output-dir", default=None, help="default: <checkpoint dir>/figures")
        p.add_argument("--patient-id", default=None, required=name == "mil")
        p.add_argument("--split", choices=SPLITS, default="test")
        p.add_argument("--top-k", type=int, default=10)
        p.add_argument("--version", default=None,
                       help="the checkpoint's entry version when it is not the registry's (e.g. 1.4)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = COMMANDS[args.command](args)
    except (VizError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
