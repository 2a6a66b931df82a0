"""The default dynamo ONNX exporter, TorchScript, fp16, and dynamic bag sizes through onnxruntime."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.formats import FORMATS, quiet
from export.manifest import load_manifest
from export.pipeline import export_checkpoint
from export.source import Target

DYNAMO_ENTRY = "attention-path_clin"


@pytest.fixture(scope="module")
def dynamo_export(tiny_checkpoint, sizes, tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamo")
    # pathology + clinical keeps the (slow) dynamo exporter inside the test budget; the 3D ResNet's dynamo
    # export is covered by the legacy-exporter parity of every entry and was checked by hand.
    return export_checkpoint(Target(tiny_checkpoint(DYNAMO_ENTRY), DYNAMO_ENTRY), FORMATS["onnx"], out, sizes=sizes,
                             progress=False)


def test_dynamo_export_is_self_contained_and_passes_parity(dynamo_export):
    assert dynamo_export.passed, dynamo_export.report.to_markdown()
    manifest = load_manifest(dynamo_export.directory)
    assert {p["exporter"] for p in manifest["parts"].values()} == {"dynamo"}, manifest["parts"]
    assert not list(dynamo_export.directory.glob("*.data")), "weights must live inside each .onnx"
    for part in manifest["parts"].values():
        model = onnx.load(str(dynamo_export.directory / part["file"]), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        assert part["files"] == {part["file"]: part["sha256"]}
    assert manifest["opset"] == 18


@pytest.mark.parametrize("n", [1, 3000])
def test_dynamic_bag_sizes(dynamo_export, n):
    """One graph serves a single patch and a 3000-patch bag: patch encoder -> mil_pool -> whole model."""
    directory = dynamo_export.directory
    manifest = load_manifest(directory)
    parts = manifest["parts"]

    def session(name):
        return ort.InferenceSession(str(directory / parts[name]["file"]), providers=["CPUExecutionProvider"])

    size = manifest["preprocessing"]["pathology"]["patch_size"]
    patches = np.random.default_rng(n).integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    (features,) = session("patch_encoder").run(None, {parts["patch_encoder"]["inputs"][0]["name"]: patches})
    assert features.shape == (n, parts["patch_encoder"]["outputs"][0]["shape"][1])
    embedding, attention = session("mil_pool").run(None, {parts["mil_pool"]["inputs"][0]["name"]: features})
    assert embedding.shape == (1, parts["mil_pool"]["outputs"][0]["shape"][1]) and attention.shape == (n,)
    np.testing.assert_allclose(attention.sum(), 1.0, atol=1e-4)
    model_inputs = parts["model"]["inputs"]
    feed = {t["name"]: np.zeros([1 if d == "batch" else n if d == "num_patches" else d for d in t["shape"]],
                                dtype=t["dtype"]) for t in model_inputs}
    feed[model_inputs[0]["name"]] = patches[None]
    feed[model_inputs[1]["name"]][:] = True  # patch mask
    feed[model_inputs[-1]["name"]][:] = [True, False]  # pathology only (clinical absent)
    probabilities, patch_attention, fusion_attention = session("model").run(None, feed)
    assert probabilities.shape == (1, 4) and patch_attention.shape == (1, n)
    np.testing.assert_allclose(patch_attention[0], attention, atol=1e-4)
    np.testing.assert_allclose(fusion_attention, [[1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("entry", ["attention", "gated-path_mri", "clinical_only"])
def test_torchscript_export_passes_parity(entry, tiny_checkpoint, sizes, tmp_path):
    result = export_checkpoint(Target(tiny_checkpoint(entry), entry), FORMATS["torchscript"], tmp_path, sizes=sizes,
                               progress=False)
    assert result.passed, result.report.to_markdown()
    manifest = load_manifest(result.directory)
    assert manifest["format"] == "torchscript" and manifest["opset"] is None
    for name, part in manifest["parts"].items():
        with quiet():
            module = torch.jit.load(str(result.directory / part["file"]))
        assert part["file"] == f"{name}.pt" and isinstance(module, torch.jit.ScriptModule)


def test_fp16_export(tiny_checkpoint, sizes, tmp_path):
    fmt = dataclasses.replace(FORMATS["onnx"], exporter="legacy")
    result = export_checkpoint(Target(tiny_checkpoint("attention"), "attention"), fmt, tmp_path, precision="fp16",
                               sizes=sizes, progress=False)
    assert result.passed, result.report.to_markdown()
    assert result.report.tolerance == 1e-2
    manifest = load_manifest(result.directory)
    assert manifest["precision"] == "fp16"
    for name, part in manifest["parts"].items():
        graph = onnx.load(str(result.directory / part["file"])).graph
        float_weights = [t.data_type for t in graph.initializer if t.data_type in (1, 10) and len(t.dims) >= 2]
        assert float_weights and set(float_weights) == {onnx.TensorProto.FLOAT16}, name
        # Inputs and outputs keep the manifest's dtypes (casts inside the graph).
        assert [i.type.tensor_type.elem_type for i in graph.input] == [
            {"uint8": 2, "bool": 9, "float32": 1}[t["dtype"]] for t in part["inputs"]]


def test_torchscript_rejects_fp16(tiny_checkpoint, tmp_path):
    from export.formats import ExportError

    with pytest.raises(ExportError, match="fp32 only|supports precision"):
        export_checkpoint(Target(tiny_checkpoint("clinical_only"), "clinical_only"), FORMATS["torchscript"],
                          tmp_path, precision="fp16", progress=False)
    assert not any(tmp_path.iterdir())
