"""The training pipeline as a library: one zoo entry end to end (`run_training`); `zoo.training.cli` is its CLI.

Resolves the entry's config, makes sure the cohort exists (generating the quickstart synthetic cohort on a
fresh clone), caches frozen patch-encoder features, trains, evaluates the best checkpoint on the test split
and prints the results table. `torchrun --nproc_per_node N -m zoo.train <entry>` trains with DDP.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

from zoo.spec import BEST_CHECKPOINT, CLASS_NAMES, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, SPLITS
from zoo.training import distributed as ddp
from zoo.training.metrics import format_results_table
from zoo.training.trainer import MultimodalTrainer, seed_everything


class TrainingSetupError(ValueError):
    """The run cannot start (bad entry, data dir, split or modality); the message says what to do."""


def default_recipe() -> tuple[str, str]:
    """(recipe, why): gpu when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return "gpu", f"CUDA is available ({torch.cuda.get_device_name(0)})"
    return "cpu", "CUDA is not available, so the CPU recipe (frozen encoder + feature cache, small sizes) is used"


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """{'a': {'b': 1}} -> [('a.b', 1)] (the override form entry.config accepts)."""
    items: list[tuple[str, Any]] = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        items += flatten_tree(value, dotted + ".") if isinstance(value, Mapping) else [(dotted, value)]
    return items


def resolve_entry_config(entry_name: str, recipe: str, config_file: str | Path | None,
                         overrides: Sequence[str]) -> tuple[Any, dict]:
    """Entry config under `recipe`, then the --config file's keys, then key=value overrides."""
    from zoo.config import read_yaml, validate_config
    from zoo.registry import get_entry

    try:
        entry = get_entry(entry_name)
    except KeyError as exc:
        raise TrainingSetupError(str(exc.args[0])) from None
    file_layer: list[tuple[str, Any]] = []
    if config_file is not None:
        tree = read_yaml(config_file)
        validate_config(tree, str(config_file))
        file_layer = flatten_tree(tree)
    return entry, entry.config(recipe, overrides=[*file_layer, *overrides])


def uses_feature_cache(config: Mapping[str, Any]) -> bool:
    pathology = config["model"]["modalities"].get("pathology")
    if pathology and int(pathology.get("feature_dim") or 0) > 0:
        return False  # stored features (data.modalities.pathology.features_dir): nothing to encode or cache
    return bool(pathology and pathology.get("freeze") and config["training"].get("feature_cache"))


def uses_stored_features(config: Mapping[str, Any]) -> bool:
    return bool(config["model"]["modalities"].get("pathology")
                and config["data"]["modalities"]["pathology"].get("features_dir"))


def prepare_stored_features(config: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any] | None:
    """`data.modalities.pathology.features_dir` set: recognise the layout (TRIDENT / CLAM / flat), check every
    file, and make the MIL input dim the files' (`model.modalities.pathology.feature_dim`). The model then has
    no patch encoder: the encoder that made the features is recorded by name, never run."""
    if not uses_stored_features(config):
        return None
    from zoo.data.feature_files import FeatureFileError, detect_feature_folder, scan_feature_files

    data_p, model_p = config["data"]["modalities"]["pathology"], config["model"]["modalities"]["pathology"]
    root = Path(data_p["features_dir"]).expanduser().resolve()
    try:
        folder = detect_feature_folder(root, data_p.get("features_encoder") or None)
    except FeatureFileError as exc:
        raise TrainingSetupError(str(exc)) from None
    declared = int(model_p.get("feature_dim") or 0) or None
    report = scan_feature_files(folder, None, declared)
    if not report.rows:
        reasons = "; ".join(f"{k}: {v}" for k, v in sorted(report.problems.items())[:5])
        raise TrainingSetupError(f"{folder.directory}: no usable feature file ({reasons})")
    data_p["features_dir"], data_p["features_encoder"] = str(root), folder.encoder
    model_p["feature_dim"] = int(report.dim)
    for slide_id, why in sorted(report.problems.items()):
        log(f"WARNING stored features of slide {slide_id} skipped: {why}")
    log(f"pathology: training on stored features in {folder.directory} ({folder.layout} layout, encoder "
        f"{folder.encoder or 'unknown'}, {report.dim}-d, {len(report.rows)} slide file(s)"
        f"{f', {len(report.problems)} skipped' if report.problems else ''}); the model has no patch encoder (the "
        "features' encoder is never run here): MIL, other encoders and fusion head are trained; export needs "
        "a patch encoder and refuses such a checkpoint (serve it from precomputed features)")
    return {"features_dir": str(root), "layout": folder.layout, "encoder": folder.encoder,
            "feature_dim": int(report.dim), "num_files": len(report.rows), "skipped": dict(report.problems)}


def make_datasets(config: Mapping[str, Any], feature_dir: Path | None) -> dict[str, Any]:
    from zoo.data import BreastCancerMultiModalDataset

    data_dir = Path(config["data"]["data_dir"])
    datasets = {}
    for split in SPLITS:
        dataset = BreastCancerMultiModalDataset.from_config(config, split, training=(split == "train"),
                                                            feature_dir=feature_dir)
        if len(dataset) == 0:
            raise TrainingSetupError(f"split {split!r} of {data_dir} has no patients ({data_dir}/{split}_clinical.csv "
                                     "is empty); regenerate the cohort or fix the CSV")
        datasets[split] = dataset
    return datasets


def modality_availability(dataset: Any) -> dict[str, int]:
    """How many patients of `dataset` have each enabled modality (cheap: file checks, no pixels read)."""
    from zoo.data.mri import processed_path
    from zoo.data.prepare import mri_processed_dir

    counts = {}
    if dataset.use["pathology"]:
        counts["pathology"] = sum(dataset.num_patches(pid) > 0 for pid in dataset.patient_ids)
    if dataset.use["mri"]:
        mri_dir = mri_processed_dir(dataset.data_dir)
        counts["mri"] = sum(all(processed_path(mri_dir, pid, seq).is_file() for seq in dataset.mri_sequences)
                            for pid in dataset.patient_ids)
    if dataset.use["clinical"]:
        counts["clinical"] = len(dataset.patient_ids)
    return counts


def check_modalities_available(entry: Any, dataset: Any) -> dict[str, int]:
    """An entry needing a modality that no training patient has cannot learn it: say so before training."""
    counts = modality_availability(dataset)
    missing = [m for m in entry.modalities if not counts.get(m, 0)]
    if missing:
        raise TrainingSetupError(
            f"entry {entry.name!r} needs {' and '.join(missing)}, but no patient of the train split in "
            f"{dataset.data_dir} has {' or '.join(missing)} data; add it (see python -m zoo.data.prepare) or train "
            "an entry without that modality (python -m zoo lists them)")
    return counts


def make_loaders(config: Mapping[str, Any], datasets: Mapping[str, Any], seed: int) -> dict[str, DataLoader]:
    from zoo.data import collate_multimodal

    batch_size = int(config["data"]["batch_size"])
    workers = int(config["data"]["num_workers"])
    loaders = {}
    for split, dataset in datasets.items():
        train = split == "train"
        if ddp.is_distributed():
            sampler = DistributedSampler(dataset, shuffle=train, seed=seed) if train else ddp.ShardSampler(len(dataset))
            kwargs: dict[str, Any] = {"sampler": sampler}
        else:
            kwargs = {"shuffle": train, "generator": torch.Generator().manual_seed(seed) if train else None}
        per_replica = len(kwargs["sampler"]) if "sampler" in kwargs else len(dataset)
        loaders[split] = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                    collate_fn=collate_multimodal, persistent_workers=False,
                                    drop_last=train and lone_last_batch(per_replica, batch_size), **kwargs)
    return loaders


def lone_last_batch(num_samples: int, batch_size: int) -> bool:
    """Whether an epoch of `num_samples` would end on a batch of one sample: BatchNorm cannot train on it (PyTorch
    raises "Expected more than 1 value per channel"), so the training loader drops it; the loader shuffles, so a
    different patient sits out each epoch."""
    return num_samples > batch_size and num_samples % batch_size == 1


def cohort_tiling_dir(config: Mapping[str, Any]) -> Path:
    from zoo.data.prepare import tiling_dir
    from zoo.data.tile import resolution_options

    p = config["data"]["modalities"]["pathology"]
    return tiling_dir(config["data"]["data_dir"], p["patch_size"], p["level"], p["tissue_threshold"],
                      **resolution_options(p))


def prepare_pretrained_encoder(config: dict[str, Any], progress: bool,
                               log: Callable[[str], None]) -> dict[str, Any] | None:
    """A self-supervised patch encoder (registry `self_supervised`, e.g. cnn_ssl) without a `weights` file gets the
    cohort's own label-free artifact, pretrained here when absent (zoo.training.pretrain); the config then names it,
    so the feature cache, the checkpoint and the export manifest record its sha256 and provenance."""
    pathology = config["model"]["modalities"].get("pathology")
    if not pathology or pathology.get("weights") or int(pathology.get("feature_dim") or 0) > 0:
        return None
    from zoo.models.encoders import get_record

    record = get_record(pathology["backbone"])
    if not record.self_supervised:
        return None
    from zoo.training.pretrain import PretrainRecipe, ensure_pretrained

    result = ensure_pretrained(config["data"]["data_dir"], cohort_tiling_dir(config), record.name,
                               int(pathology.get("input_size") or record.input_size),
                               PretrainRecipe.from_config(pathology["pretraining"]), progress=progress, log=log)
    pathology["weights"] = str(result.weights)
    return result.provenance


def prepare_feature_cache(config: Mapping[str, Any], model: torch.nn.Module, device: torch.device,
                          progress: bool, log: Callable[[str], None]) -> Path | None:
    if not uses_feature_cache(config) or getattr(model, "patch_encoder", None) is None:
        return None
    from zoo.training.feature_cache import ensure_features

    t0 = time.perf_counter()
    report = ensure_features(config["data"]["data_dir"], model.patch_encoder, tiling_dir=cohort_tiling_dir(config),
                             device=device, progress=progress)
    log(f"feature cache {report.directory}: {len(report.computed)} slide(s) computed, {len(report.reused)} reused "
        f"({time.perf_counter() - t0:.1f} s)")
    return report.directory


def fit_feature_standardization(config: Mapping[str, Any], model: torch.nn.Module, train_dataset: Any,
                                log: Callable[[str], None]) -> dict[str, Any] | None:
    """z-score the MIL input with the training split's cached features (never val/test: no leakage)."""
    if not (train_dataset.feature_dir is not None and config["training"].get("feature_standardization")):
        return None
    from zoo.training.feature_cache import feature_statistics

    mean, std, n = feature_statistics(train_dataset.feature_paths())
    model.mil.set_input_standardization(mean, std)
    log(f"patch features standardised with train-split statistics ({n:,} patches; per-dimension mean "
        f"{float(mean.min()):.3g}..{float(mean.max()):.3g}, std {float(std.min()):.3g}..{float(std.max()):.3g})")
    return {"fitted_on": "train", "num_patches": n}


def preprocessing_record(config: Mapping[str, Any], model: torch.nn.Module, train_dataset: Any,
                         feature_standardization: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's preprocessing record (zoo.checkpoint.preprocessing_record) with the train split's fitted
    clinical preprocessor."""
    from zoo.checkpoint import preprocessing_record as record

    clinical = getattr(train_dataset, "clinical_preprocessor", None)
    return record(config, model, clinical=clinical.to_dict() if clinical is not None else None,
                  feature_standardization=feature_standardization)


def ensure_data(config: Mapping[str, Any], generate_if_missing: bool, progress: bool,
                log: Callable[[str], None]) -> None:
    """Cohort present, tiled for this config's patch settings, MRI preprocessed (rank 0 does it; others wait)."""
    from zoo.data.prepare import cohort_exists, ensure_cohort

    data_dir = Path(config["data"]["data_dir"])
    if not generate_if_missing and not cohort_exists(data_dir):
        raise TrainingSetupError(
            f"data dir {data_dir} holds no cohort ({{train,val,test}}_clinical.csv missing); generate one with "
            f"python -m zoo.data.synthetic --output-dir {data_dir}, or omit --data-dir to use (and on first use "
            "generate) the quickstart cohort")
    if ddp.is_main_process():
        t0 = time.perf_counter()
        p, m = config["data"]["modalities"]["pathology"], config["data"]["modalities"]["mri"]
        from zoo.data.tile import resolution_options

        ensure_cohort(data_dir, generate_if_missing=generate_if_missing, patch_size=p["patch_size"], level=p["level"],
                      tissue_threshold=p["tissue_threshold"], **resolution_options(p),
                      target_spacing=m["target_spacing"],
                      output_shape=m["output_shape"], progress=progress, tile=not uses_stored_features(config))
        log(f"cohort ready in {data_dir} ({time.perf_counter() - t0:.1f} s)")
    ddp.barrier()


def run_training(
    entry_name: str,
    *,
    config_file: str | Path | None = None,
    data_dir: str | Path | None = None,
    recipe: str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> dict[str, Any]:
    """Train `entry_name` and return the trainer's metrics (with test metrics); writes outputs/<entry>/."""
    log = log if ddp.is_main_process() else (lambda _m: None)
    if recipe is None:
        recipe, why = default_recipe()
        log(f"recipe: {recipe} ({why})")
    else:
        log(f"recipe: {recipe} (requested)")
    entry, config = resolve_entry_config(entry_name, recipe, config_file, overrides)
    if data_dir is not None:
        config["data"]["data_dir"] = str(data_dir)
    output_dir = Path(output_dir) if output_dir is not None else Path("outputs") / entry.name
    seed = int(config["training"]["seed"])
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")

    ensure_data(config, generate_if_missing=data_dir is None, progress=progress, log=log)
    seed_everything(seed)
    from zoo.models import build_model_from_config

    prepare_stored_features(config, log)
    if ddp.is_main_process():
        prepare_pretrained_encoder(config, progress, log)
    ddp.barrier()
    if not ddp.is_main_process():
        prepare_pretrained_encoder(config, progress=False, log=log)  # rank 0 made it: now only found
    model = build_model_from_config(config["model"])
    feature_dir = prepare_feature_cache(config, model, device, progress, log)
    datasets = make_datasets(config, feature_dir)
    available = check_modalities_available(entry, datasets["train"])
    standardization = fit_feature_standardization(config, model, datasets["train"], log)
    loaders = make_loaders(config, datasets, seed)
    log(f"{entry.name}: modalities {', '.join(entry.modalities)}; fusion {getattr(entry, 'fusion', '-')}; "
        f"{sum(len(d) for d in datasets.values())} patients "
        f"(train {len(datasets['train'])}, val {len(datasets['val'])}, test {len(datasets['test'])}; train patients "
        f"with each modality: {available}); "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters; device {device}")
    trainer = MultimodalTrainer(
        model, config, loaders["train"], loaders["val"], output_dir=output_dir, entry=entry,
        test_loader=loaders["test"], device=device,
        preprocessing=preprocessing_record(config, model, datasets["train"], standardization),
        resume=resume, progress=progress, log=log, on_epoch_end=on_epoch_end)
    t0 = time.perf_counter()
    result = trainer.train()
    log(f"trained {result['epochs_run']} epoch(s) in {time.perf_counter() - t0:.1f} s; best epoch "
        f"{result['best_epoch'] + 1}, best val F1 {result['best_val_f1']:.3f}, val AUC {result['best_val_auc']:.3f}")
    log(format_results_table(result["test"], CLASS_NAMES, title=f"{entry.name}: test split (best checkpoint)"))
    log(f"one split of {result['test']['num_samples']} test patients; to compare entries, cross-validate (every "
        f"patient scored once): python -m zoo.sweep {entry.name} --folds 4")
    log(f"outputs: {output_dir}/({BEST_CHECKPOINT}, {LAST_CHECKPOINT}, {METRICS_FILE}, {CONFIG_FILE}, tensorboard/)")
    return result
