"""zoo.checkpoint owns the checkpoint format: its errors, and the preprocessing record export copies."""
from __future__ import annotations

import dataclasses
import json

import pytest

from export.formats import FORMATS
from export.pipeline import export_checkpoint
from export.source import SourceError, Target, load_source
from tests.export.conftest import write_tiny_checkpoint
from zoo.checkpoint import CheckpointError, load_model

LEGACY = dataclasses.replace(FORMATS["onnx"], exporter="legacy")
ENTRY = "attention"  # every modality: every part of the record
MANIFEST_KEYS = {  # README / docs/cli/export.md
    "pathology": {"patch_size", "level", "max_patches", "tissue_threshold", "input_size", "normalisation"},
    "mri": {"sequences", "target_spacing", "output_shape"},
}


def test_load_model_errors_name_the_checkpoint(tmp_path):
    missing = tmp_path / "outputs" / "clinical_only" / "best.pt"
    with pytest.raises(CheckpointError, match=rf"{missing}.*does not exist.*zoo\.train"):
        load_model(missing, entry="clinical_only")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(corrupt)):
        load_model(corrupt)
    other = write_tiny_checkpoint("clinical_only", tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=rf"{other} belongs to entry 'clinical_only', not 'mri_only'"):
        load_model(other, entry="mri_only")
    with pytest.raises(CheckpointError, match=rf"{other} is version .*'9\.9' is asked"):
        load_model(other, version="9.9")
    assert issubclass(SourceError, CheckpointError) and issubclass(CheckpointError, ValueError)


def check_record(record):
    for modality, keys in MANIFEST_KEYS.items():
        assert keys <= set(record[modality]), (modality, record[modality])
    assert {"mean", "std", "applied"} <= set(record["pathology"]["normalisation"])
    assert record["clinical"] is not None


def test_manifest_copies_the_checkpoint_record(tmp_path, sizes):
    checkpoint = write_tiny_checkpoint(ENTRY, tmp_path / "best.pt")
    model, payload = load_model(checkpoint)
    recorded = payload["preprocessing"]
    check_record(recorded)
    assert recorded["pathology"]["backbone"] == payload["config"]["model"]["modalities"]["pathology"]["backbone"]
    assert recorded["pathology"] == {**recorded["pathology"], **model.patch_encoder.preprocessing(),
                                     "normalisation": recorded["pathology"]["normalisation"]}
    result = export_checkpoint(Target(checkpoint), LEGACY, tmp_path / "exports", sizes=sizes, progress=False)
    manifest = json.loads((result.directory / "manifest.json").read_text())
    assert manifest["preprocessing"] == {m: recorded[m] for m in model.modalities}


def test_checkpoint_written_before_the_record_still_exports(tmp_path, sizes):
    """Format-1 checkpoints (entry version 1.1) recorded only the clinical preprocessor here: export rebuilds the
    rest from their config, with the same keys."""
    import torch

    from zoo.checkpoint import save_checkpoint

    new = torch.load(write_tiny_checkpoint(ENTRY, tmp_path / "new.pt"), weights_only=True)
    old = save_checkpoint(tmp_path / "old.pt", {**new, "format": 1,
                                                "preprocessing": {"clinical": new["preprocessing"]["clinical"]}})
    assert load_source(Target(old)).payload["format"] == 1
    result = export_checkpoint(Target(old), LEGACY, tmp_path / "exports", sizes=sizes, progress=False)
    manifest = json.loads((result.directory / "manifest.json").read_text())
    check_record(manifest["preprocessing"])
    assert manifest["preprocessing"] == {m: new["preprocessing"][m] for m in ("pathology", "mri", "clinical")}
