"""Registry encoders served by the real tritonserver: the smallest ViT (kaiko_vits16) and CLAM's resnet50_trunc
as the `patch_encoder` of a pathology_only export (uint8 64-px cohort patches resized to 32 px and normalised
inside the graph); the served slide prediction equals PyTorch on the same patches."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from export.pipeline import export_checkpoint
from export.source import Target
from tests.triton.conftest import MAX_PATCH_BATCH, TOL
from tests.triton.served_models import COHORT_PATCH_SIZE, LEGACY_ONNX, OVERRIDES, PARITY_SIZES, sensitive_weights
from triton_repo.build import build_repository
from triton_repo.client import SlideClient
from triton_repo.plan import BuildOptions
from triton_repo.server import TritonServer, free_port
from zoo import spec
from zoo.data.patches import open_slide, read_patches

ENTRY = "pathology_only"
INPUT_SIZE = 32  # a multiple of the ViT's 16-px patches; small so CI stays fast


def _overrides(backbone: str) -> list[str]:
    return [*OVERRIDES, f"model.modalities.pathology.backbone={backbone}", "model.modalities.pathology.weights=random",
            f"model.modalities.pathology.input_size={INPUT_SIZE}"]


@pytest.fixture(scope="module", params=["kaiko_vits16", "resnet50_trunc"])
def served_encoder(request, tiny_cohort, tmp_path_factory):
    from zoo.checkpoint import checkpoint_payload, save_checkpoint
    from zoo.registry import get_entry

    backbone = request.param
    root = tmp_path_factory.mktemp(f"serve_{backbone}")
    entry = get_entry(ENTRY)
    torch.manual_seed(3)
    with warnings.catch_warnings():  # weights: random warns (once per process, tests/models/test_encoders.py)
        warnings.simplefilter("ignore", UserWarning)
        model = sensitive_weights(entry.build_model("tiny", _overrides(backbone)))
    checkpoint = save_checkpoint(root / "outputs" / "best.pt",
                                 checkpoint_payload(entry, entry.config("tiny", _overrides(backbone)), model))
    result = export_checkpoint(Target(checkpoint, ENTRY), LEGACY_ONNX, root / "exports", sizes=PARITY_SIZES,
                               progress=False)
    assert result.passed, result.report.to_markdown()
    repo = root / "repository"
    build_repository([result.directory], repo, BuildOptions(flavor="embedded", max_patch_batch=MAX_PATCH_BATCH))
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      log_path=root / "tritonserver.log") as server:
        yield backbone, model.eval(), server, repo


def test_served_registry_encoder_equals_pytorch(served_encoder, tiny_cohort, tmp_path):
    backbone, model, server, repo = served_encoder
    slide = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    with SlideClient(server.grpc_url, ENTRY, repo, chunk_size=16, tiling_dir=tmp_path / "tiles") as client:
        pred = client.predict(slides=[slide])
        pathology = client.manifest.preprocessing["pathology"]
    assert pathology["encoder"] == backbone and pathology["input_size"] == INPUT_SIZE
    assert int(pathology["patch_size"]) == COHORT_PATCH_SIZE and len(pred.coords) > 16  # several chunks
    with open_slide(slide) as handle:
        patches = read_patches(handle, pred.coords[:, 1:], COHORT_PATCH_SIZE, int(pathology["level"]))
    batch = {spec.KEY_PATHOLOGY: torch.from_numpy(patches)[None],
             spec.KEY_PATHOLOGY_MASK: torch.ones(1, len(patches), dtype=torch.bool)}
    with torch.no_grad():
        logits, aux = model(batch)
    np.testing.assert_allclose(pred.probabilities, torch.softmax(logits, -1)[0].numpy(), atol=TOL)
    np.testing.assert_allclose(pred.patch_attention, aux["pathology_attention"][0].numpy(), atol=TOL)
