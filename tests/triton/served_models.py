"""Real zoo models for the serving tests: tiny-recipe checkpoints in the trainer's format, exported by `export`.

The patch size and MRI geometry match how the `tiny_cohort` fixture (tests/conftest.py) is prepared, so the
client can be run on that cohort's real files and compared with PyTorch reading the same files through zoo.data.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from export.formats import FORMATS
from export.parts import ParitySizes
from export.pipeline import export_checkpoint
from export.source import Target
from zoo.checkpoint import checkpoint_payload, preprocessing_record, save_checkpoint
from zoo.data.clinical import ClinicalPreprocessor, load_clinical_csv
from zoo.data.prepare import tiling_dir
from zoo.registry import get_entry

COHORT_PATCH_SIZE = 64                    # tests/conftest.py TINY_PATCH_SIZE: the cohort is tiled at this size
COHORT_MRI_SHAPE = (64, 64, 32)           # its mri_processed volumes (the base config's target, 1x1x3 mm)
OVERRIDES = (f"data.modalities.pathology.patch_size={COHORT_PATCH_SIZE}",
             f"data.modalities.mri.output_shape={list(COHORT_MRI_SHAPE)}")
LEGACY_ONNX = dataclasses.replace(FORMATS["onnx"], exporter="legacy")  # fast tracer; dynamo is tested in tests/export
PARITY_SIZES = ParitySizes(patches=(4,), bag=(1, 50), batch=(1,))  # the exporter's own parity check, kept small


def entry_config(name: str) -> dict:
    return get_entry(name).config("tiny", list(OVERRIDES))


def write_checkpoint(name: str, path: Path, cohort: Path, seed: int = 0) -> Path:
    """A freshly initialised tiny-recipe model of `name`, saved like zoo.training.trainer saves best.pt.

    BatchNorm statistics are randomised so eval-mode graphs do not reduce to identity normalisation; linear biases
    are zero (see below); the clinical preprocessor is fitted on the cohort's train split, as training does.
    """
    entry = get_entry(name)
    config = entry_config(name)
    pathology = config["data"]["modalities"]["pathology"]
    tiles = tiling_dir(cohort, pathology["patch_size"], pathology["level"], pathology["tissue_threshold"])
    if not tiles.is_dir():
        raise FileNotFoundError(f"{tiles}: the cohort is not tiled at patch_size {pathology['patch_size']}; "
                                "COHORT_PATCH_SIZE must match the tiny_cohort fixture's tiling")
    torch.manual_seed(seed)
    model = sensitive_weights(entry.build_model("tiny", list(OVERRIDES)))
    train = load_clinical_csv(cohort / "train_clinical.csv", entry.clinical_features)
    clinical = ClinicalPreprocessor(entry.clinical_features).fit(train).to_dict()
    return save_checkpoint(path, checkpoint_payload(entry, config, model,
                                                    preprocessing_record(config, model, clinical=clinical)))


def sensitive_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Randomised BatchNorm statistics (eval-mode graphs do not reduce to identity normalisation) and zero linear
    biases: with PyTorch's default random biases the untrained fusion head hardly sees the small pathology and MRI
    embeddings (their effect on probabilities is ~1e-4, the tolerance); zero biases make every modality move the
    probabilities by 1e-3..1e-2, so a wrong patch or voxel fails the tests."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.zero_()
    return model


def export_entry(name: str, checkpoint: Path, output_dir: Path) -> Path:
    """`exports/<name>` written by the real exporter (ONNX, parity-checked); returns its directory."""
    result = export_checkpoint(Target(checkpoint, name), LEGACY_ONNX, output_dir, sizes=PARITY_SIZES,
                               progress=False)
    assert result.passed, result.report.to_markdown()
    return result.directory
