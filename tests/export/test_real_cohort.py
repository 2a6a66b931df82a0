"""Parity on real cohort inputs: patches read by OpenSlide from synthetic SVS slides, preprocessed MRI, clinical."""
from __future__ import annotations

import dataclasses
import json

from export.formats import FORMATS
from export.parity import REPORT_JSON
from export.pipeline import export_checkpoint
from export.source import Target


def test_parity_on_real_patients(tiny_checkpoint, sizes, tmp_path):
    from zoo.data.prepare import ensure_cohort
    from zoo.data.synthetic import generate_cohort
    from zoo.registry import get_entry
    from tests.export.conftest import TEST_OVERRIDES

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, num_samples=8, seed=1, slide_size=256, workers=1, progress=False, mri_shape=(24, 24, 8))
    config = get_entry("attention").config("tiny", list(TEST_OVERRIDES))
    p, m = config["data"]["modalities"]["pathology"], config["data"]["modalities"]["mri"]
    ensure_cohort(cohort, generate_if_missing=False, patch_size=p["patch_size"], level=p["level"],
                  tissue_threshold=p["tissue_threshold"], target_spacing=m["target_spacing"],
                  output_shape=m["output_shape"], workers=1, progress=False)
    fmt = dataclasses.replace(FORMATS["onnx"], exporter="legacy")
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
