"""A checkpoint holds every weight: exporting it never looks for the pretrained file it was trained from."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from export.cli import EXIT_OK, main
from export.formats import FORMATS
from export.parts import ParitySizes
from export.pipeline import export_checkpoint
from export.source import Target, load_source

ENTRY = "pathology_only"
LEGACY = dataclasses.replace(FORMATS["onnx"], exporter="legacy")
SIZES = ParitySizes(patches=(1, 2), bag=(1, 8), batch=(1,))
PARITY_ARGS = ["--exporter", "legacy", "--no-progress", "--parity-patches", "1,2", "--parity-bags", "1,8",
               "--parity-batches", "1"]


def resnet18_weights(path):
    """A torchvision-style resnet18 state_dict file (random weights: only its presence at build time matters)."""
    import torchvision

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def checkpoint_trained_with(pretrained, path):
    """A tiny-recipe resnet18 checkpoint whose config says `pretrained` (read once, at this build)."""
    from zoo.checkpoint import checkpoint_payload, save_checkpoint
    from zoo.registry import get_entry

    entry = get_entry(ENTRY)
    overrides = ["model.modalities.pathology.backbone=resnet18",
                 f"model.modalities.pathology.pretrained={pretrained}"]
    config = entry.config("tiny", overrides)
    torch.manual_seed(0)
    model = entry.build_model("tiny", overrides)
    return save_checkpoint(path, checkpoint_payload(entry, config, model))


@pytest.fixture(params=["path", "true"])
def orphaned_checkpoint(request, tmp_path, monkeypatch):
    """A checkpoint trained from pretrained weights whose file has since been deleted."""
    if request.param == "path":
        weights = resnet18_weights(tmp_path / "weights" / "w.pt")
        pretrained = str(weights)
    else:  # pretrained: true reads torchvision's file from the local hub cache
        import torchvision

        from zoo.models.weights import torch_hub_checkpoint

        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
        weights = resnet18_weights(torch_hub_checkpoint(torchvision.models.ResNet18_Weights.DEFAULT.url))
        pretrained = "true"
    checkpoint = checkpoint_trained_with(pretrained, tmp_path / "outputs" / ENTRY / "best.pt")
    weights.unlink()
    return checkpoint


def test_library_exports_a_checkpoint_whose_pretrained_file_is_gone(orphaned_checkpoint, tmp_path):
    from zoo.checkpoint import load_model

    model, payload = load_model(orphaned_checkpoint)
    assert payload["entry"] == ENTRY and not model.training
    source = load_source(Target(orphaned_checkpoint))
    result = export_checkpoint(Target(orphaned_checkpoint), LEGACY, tmp_path / "exports", sizes=SIZES,
                               progress=False)
    assert result.passed and source.name == ENTRY


def test_cli_exports_a_checkpoint_whose_pretrained_file_is_gone(orphaned_checkpoint, tmp_path, capsys):
    code = main("onnx", [str(orphaned_checkpoint), "--output-dir", str(tmp_path / "exports"), *PARITY_ARGS])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err
    assert "retrain" not in err
