"""Registry encoders export as `patch_encoder` (uint8 in; resize + the encoder's normalisation inside; dynamic
patch count) to ONNX and TorchScript with parity: the smallest ViT (kaiko_vits16) and CLAM's resnet50_trunc."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from export.formats import FORMATS
from export.manifest import load_manifest
from export.parity import REPORT_JSON
from export.parts import ParitySizes
from export.pipeline import export_checkpoint
from export.source import Target

ENTRY = "pathology_only"
ENCODERS = ("kaiko_vits16", "resnet50_trunc")
# 48-px patches resized to 32 inside the graph (a multiple of the ViT's 16-px patches): small and fast on CPU.
PATCH_SIZE, INPUT_SIZE = 48, 32
SIZES = ParitySizes(patches=(1, 5), bag=(1, 8), batch=(1,))
CASES = [("onnx", "fp32"), ("onnx", "fp16"), ("torchscript", "fp32")]


def encoder_overrides(backbone: str) -> list[str]:
    return [f"model.modalities.pathology.backbone={backbone}", "model.modalities.pathology.weights=random",
            f"model.modalities.pathology.input_size={INPUT_SIZE}",
            f"data.modalities.pathology.patch_size={PATCH_SIZE}", "data.modalities.mri.output_shape=[8,8,4]"]


def write_encoder_checkpoint(backbone: str, path, seed: int = 0):
    """A pathology_only tiny-recipe checkpoint whose patch encoder is `backbone` (random weights)."""
    from zoo.checkpoint import checkpoint_payload, save_checkpoint
    from zoo.registry import get_entry

    entry = get_entry(ENTRY)
    overrides = encoder_overrides(backbone)
    config = entry.config("tiny", overrides)
    torch.manual_seed(seed)
    model = entry.build_model("tiny", overrides)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(path, checkpoint_payload(entry, config, model))


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder_checkpoints")
    made = {}

    def make(backbone: str):
        if backbone not in made:
            made[backbone] = write_encoder_checkpoint(backbone, root / backbone / "best.pt")
        return made[backbone]

    return make


@pytest.mark.filterwarnings("ignore:patch encoder .* weights. random:UserWarning")
@pytest.mark.parametrize("fmt_name,precision", CASES, ids=[f"{f}-{p}" for f, p in CASES])
@pytest.mark.parametrize("backbone", ENCODERS)
def test_registry_encoder_exports_with_parity(backbone, fmt_name, precision, encoder_checkpoint, tmp_path):
    fmt = FORMATS[fmt_name]
    if fmt_name == "onnx":
        fmt = dataclasses.replace(fmt, exporter="legacy")
    result = export_checkpoint(Target(encoder_checkpoint(backbone), ENTRY), fmt, tmp_path, sizes=SIZES,
                               precision=precision, progress=False)
    assert result.passed, result.report.to_markdown()
    manifest = load_manifest(tmp_path / ENTRY)
    part = manifest["parts"]["patch_encoder"]
    assert part["inputs"][0]["dtype"] == "uint8" and isinstance(part["inputs"][0]["shape"][0], str)  # dynamic N
    assert part["inputs"][0]["shape"][1:] == [3, PATCH_SIZE, PATCH_SIZE]
    pathology = manifest["preprocessing"]["pathology"]
    assert pathology["input_size"] == INPUT_SIZE and pathology["patch_size"] == PATCH_SIZE
    from zoo.models.encoders import ENCODERS as RECORDS

    record = RECORDS[backbone]
    assert pathology["normalisation"]["mean"] == list(record.mean)
    cases = json.loads((tmp_path / ENTRY / REPORT_JSON).read_text())["cases"]
    worst = max(c["max_abs_diff"] for c in cases if c["part"] == "patch_encoder")
    print(f"PARITY {backbone} {fmt_name} {precision}: patch_encoder max abs diff {worst:.3g}, "
          f"probabilities {manifest['parity']['max_abs_diff_probabilities']:.3g}")
