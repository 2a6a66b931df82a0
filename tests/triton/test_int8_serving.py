"""An int8 export (quantized patch encoder) served by the real tritonserver on a real cohort slide: the served
numbers equal onnxruntime running the same exported graphs in-process, and the export's own parity check
(int8 chain on real patients) holds."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import names
from export.pipeline import export_checkpoint
from export.source import Target
from tests.triton.conftest import MAX_PATCH_BATCH, TOL
from tests.triton.served_models import LEGACY_ONNX, PARITY_SIZES, write_checkpoint
from triton_repo.build import build_repository
from triton_repo.client import SlideClient
from triton_repo.plan import BuildOptions, part_model_name
from triton_repo.server import TritonServer, free_port
from zoo.data.patches import open_slide, read_patches

INT8_ENTRY = "pathology_only"


@pytest.fixture(scope="module")
def int8_export(tiny_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    checkpoint = write_checkpoint(INT8_ENTRY, root / "outputs" / "best.pt", tiny_cohort, seed=5)
    result = export_checkpoint(Target(checkpoint, INT8_ENTRY), LEGACY_ONNX, root / "exports", sizes=PARITY_SIZES,
                               progress=False, precision="int8", data_dir=tiny_cohort)
    assert result.passed, result.report.to_markdown()
    return result.directory


@pytest.fixture(scope="module")
def int8_server(int8_export, tmp_path_factory):
    repo = tmp_path_factory.mktemp("int8_repository")
    build_repository([int8_export], repo, BuildOptions(flavor="embedded", max_patch_batch=MAX_PATCH_BATCH))
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      log_path=tmp_path_factory.mktemp("int8_log") / "tritonserver.log") as running:
        yield running, repo


def _in_process(export_dir, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and patch attention from the exported ONNX parts, run by onnxruntime in this process."""
    manifest = json.loads((export_dir / "manifest.json").read_text())

    def session(part):
        return ort.InferenceSession(str(export_dir / manifest["parts"][part]["file"]),
                                    providers=["CPUExecutionProvider"])

    features = session("patch_encoder").run([names.PATCH_FEATURES], {names.PATCHES: patches})[0]
    pooled, attention = session("mil_pool").run([names.embedding("pathology"), names.PATCH_ATTENTION],
                                                {names.PATCH_FEATURES: features})
    probs = session("fusion_head").run([names.PROBABILITIES], {names.embedding("pathology"): pooled,
                                                                names.PRESENCE: np.ones((1, 1), bool)})[0]
    return probs[0], attention


def test_served_int8_graph_is_the_quantized_one(int8_export, int8_server):
    _, repo = int8_server
    manifest = json.loads((int8_export / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["parts"] == ["patch_encoder"]
    served = next((repo / part_model_name(INT8_ENTRY, "patch_encoder") / "1").glob("*.onnx"))
    ops = {node.op_type for node in onnx.load(str(served)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_served_by_triton_equals_in_process_onnxruntime(int8_export, int8_server, tiny_cohort, tmp_path):
    server, repo = int8_server
    slide = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    with SlideClient(server.grpc_url, INT8_ENTRY, repo, chunk_size=16, tiling_dir=tmp_path / "tiles") as client:
        pred = client.predict(slides=[slide])
        patch_size, level = (int(client.manifest.preprocessing["pathology"][k]) for k in ("patch_size", "level"))
    assert (pred.coords[:, 0] == 0).all() and len(pred.coords) > 16  # one slide, several chunks
    with open_slide(slide) as handle:
        patches = read_patches(handle, pred.coords[:, 1:], patch_size, level)
    probs, attention = _in_process(int8_export, patches)
    np.testing.assert_allclose(pred.probabilities, probs, atol=TOL)
    np.testing.assert_allclose(pred.patch_attention, attention, atol=TOL)
