"""Parity on real cohort inputs: patches read by OpenSlide from synthetic SVS slides, preprocessed MRI, clinical."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest

from export.formats import FORMATS, ExportError
from export.manifest import load_manifest
from export.parity import INT8_CHAIN, REPORT_JSON
from export.pipeline import export_checkpoint
from export.source import Target

LEGACY_ONNX = dataclasses.replace(FORMATS["onnx"], exporter="legacy")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Eight patients, tiled and MRI-preprocessed for the tiny recipe."""
    from tests.export.conftest import TEST_OVERRIDES
    from zoo.data.prepare import ensure_cohort
    from zoo.data.synthetic import generate_cohort
    from zoo.registry import get_entry

    cohort = tmp_path_factory.mktemp("real") / "cohort"
    generate_cohort(cohort, num_samples=8, seed=1, slide_size=256, workers=1, progress=False, mri_shape=(24, 24, 8))
    config = get_entry("attention").config("tiny", list(TEST_OVERRIDES))
    p, m = config["data"]["modalities"]["pathology"], config["data"]["modalities"]["mri"]
    ensure_cohort(cohort, generate_if_missing=False, patch_size=p["patch_size"], level=p["level"],
                  tissue_threshold=p["tissue_threshold"], target_spacing=m["target_spacing"],
                  output_shape=m["output_shape"], workers=1, progress=False)
    return cohort


def test_parity_on_real_patients(tiny_checkpoint, sizes, tmp_path, cohort):
    fmt = LEGACY_ONNX
    result = export_checkpoint(Target(tiny_checkpoint("attention"), "attention"), fmt, tmp_path / "exports",
                               sizes=sizes, data_dir=cohort, max_patients=2, progress=False)
    assert result.passed, result.report.to_markdown()
    real = [c for c in json.loads((result.directory / REPORT_JSON).read_text())["cases"]
            if c["case"].startswith("patient ")]
    assert {c["part"] for c in real} == {"patch_encoder", "mil_pool", "mri_encoder", "clinical_encoder",
                                          "fusion_head", "model"}
    assert len({c["case"] for c in real}) == 2
    patch_case = next(c for c in real if c["part"] == "patch_encoder")
    assert patch_case["shape"][0] >= 1  # real patches went through the encoder


def test_int8_export_quantizes_the_patch_encoder_calibrated_on_the_cohort(tiny_checkpoint, sizes, tmp_path, cohort):
    result = export_checkpoint(Target(tiny_checkpoint("attention-path_clin"), "attention-path_clin"), LEGACY_ONNX,
                               tmp_path / "exports", precision="int8", sizes=sizes, data_dir=cohort, progress=False)
    assert result.passed, result.report.to_markdown()
    manifest = load_manifest(result.directory)
    assert manifest["precision"] == "int8"
    quantization = manifest["quantization"]
    assert quantization["parts"] == ["patch_encoder"] and quantization["calibration_patches"] > 0
    for name, part in manifest["parts"].items():
        graph = onnx.load(str(result.directory / part["file"])).graph
        ops = {node.op_type for node in graph.node}
        int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
        if name == "patch_encoder":
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops and int8_weights
            assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # same contract as fp32
        else:
            assert "QuantizeLinear" not in ops and not int8_weights, name
    allowed = {c.part: c.allowed for c in result.report.checks if c.case.startswith("random")}
    assert allowed["mil_pool"] == pytest.approx(1e-4)  # fp32 parts keep the fp32 tolerance
    chain = [c for c in result.report.checks if c.part == INT8_CHAIN]  # quantization's effect on predictions
    assert len(chain) == 2 and all(c.case.startswith("patient ") and c.allowed == pytest.approx(0.1) for c in chain)
    worst = result.report.worst("pathology_features")
    assert 0 < worst <= max(c.allowed for c in result.report.checks if c.part == "patch_encoder")


def test_int8_export_needs_calibration_data_and_a_patch_encoder(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="--data-dir"):
        export_checkpoint(Target(tiny_checkpoint("attention"), "attention"), LEGACY_ONNX, tmp_path, precision="int8",
                          progress=False)
    with pytest.raises(ExportError, match="no patch encoder"):
        export_checkpoint(Target(tiny_checkpoint("mri_only"), "mri_only"), LEGACY_ONNX, tmp_path, precision="int8",
                          calibration=np.zeros((4, 3, 32, 32), np.uint8), progress=False)
    assert not any(tmp_path.iterdir())
