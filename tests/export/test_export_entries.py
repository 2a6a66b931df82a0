"""Every registry entry (tiny recipe) exports to ONNX, matches its manifest, and passes parity."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import names
from export.formats import FORMATS, ONNX_DTYPES, onnx_dims
from export.manifest import load_manifest
from export.parity import REPORT_JSON, REPORT_MD
from export.parts import parts_for, pattern_label, presence_patterns
from export.pipeline import export_checkpoint
from export.source import Target
from zoo.registry import list_entries

LEGACY_ONNX = dataclasses.replace(FORMATS["onnx"], exporter="legacy")


def assert_manifest_matches_graphs(export_dir, manifest):
    """Names, dtypes and dims the manifest declares are exactly the ONNX graphs' inputs and outputs."""
    for name, part in manifest["parts"].items():
        graph = onnx.load(str(export_dir / part["file"])).graph
        for kind, values in (("inputs", graph.input), ("outputs", graph.output)):
            declared = part[kind]
            assert [v.name for v in values] == [t["name"] for t in declared], (name, kind)
            for value, t in zip(values, declared):
                assert value.type.tensor_type.elem_type == ONNX_DTYPES[t["dtype"]], (name, t["name"])
                dims = onnx_dims(value)
                assert len(dims) == len(t["shape"]), (name, t["name"])
                for got, want in zip(dims, t["shape"]):
                    if isinstance(want, int):
                        assert got in (want, None) or isinstance(got, str) and kind == "outputs", (name, t, dims)
                    elif kind == "inputs":
                        assert got == want, (name, t["name"], dims)  # dynamic input axes carry the manifest symbol
                    else:
                        assert not isinstance(got, int), (name, t["name"], dims)


@pytest.mark.parametrize("entry", list_entries())
def test_entry_exports_with_parity(entry, tiny_checkpoint, sizes, tmp_path):
    result = export_checkpoint(Target(tiny_checkpoint(entry), entry), LEGACY_ONNX, tmp_path, sizes=sizes,
                               progress=False)
    assert result.passed, result.report.to_markdown()
    export_dir = tmp_path / entry
    assert result.directory == export_dir
    manifest = load_manifest(export_dir)
    assert manifest["entry"] == entry and manifest["format"] == "onnx" and manifest["precision"] == "fp32"
    expected_parts = [p.name for p in parts_for(manifest["modalities"])]
    assert sorted(manifest["parts"]) == sorted(expected_parts)
    assert sorted(p.name for p in export_dir.iterdir()) == sorted(
        [f"{n}.onnx" for n in expected_parts] + ["manifest.json", REPORT_JSON, REPORT_MD])
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff_probabilities"] <= 1e-4
    # Every part was checked; the fusion head and the whole model at every presence pattern of the entry's
    # modalities; bag sizes 1 and 3000 reach mil_pool.
    cases = {(c["part"], c["case"]) for c in json.loads((export_dir / REPORT_JSON).read_text())["cases"]}
    assert {p for p, _ in cases} == set(expected_parts)
    patterns = presence_patterns(manifest["modalities"])
    assert len(patterns) == 2 ** len(manifest["modalities"]) - 1
    for part in {names.FUSION_HEAD, names.WHOLE_MODEL} & set(expected_parts):
        want = {(part, f"present={pattern_label(manifest['modalities'], row)}") for row in patterns}
        assert want <= cases, want - cases
    if "mil_pool" in expected_parts:
        assert {("mil_pool", "random N=1"), ("mil_pool", "random N=3000")} <= cases
    assert_manifest_matches_graphs(export_dir, manifest)
    for part in manifest["parts"].values():
        onnx.checker.check_model(str(export_dir / part["file"]), full_check=True)


def test_probabilities_are_a_distribution(tiny_checkpoint, sizes, tmp_path):
    """The served fusion head returns softmax probabilities and masks absent modalities."""
    export_checkpoint(Target(tiny_checkpoint("attention"), "attention"), LEGACY_ONNX, tmp_path, sizes=sizes,
                      progress=False)
    manifest = load_manifest(tmp_path / "attention")
    part = manifest["parts"]["fusion_head"]
    session = ort.InferenceSession(str(tmp_path / "attention" / part["file"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {t["name"]: rng.normal(size=(2, t["shape"][1])).astype(np.float32) for t in part["inputs"][:-1]}
    feed[part["inputs"][-1]["name"]] = np.array([[True, True, True], [False, True, False]])
    probabilities, attention = session.run(None, feed)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(attention[1], [0.0, 1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("entry,rule", [("attention", "mean"), ("bilinear-path_mri", "mean"), ("gated", "product")])
def test_late_residual_exports_with_parity(entry, rule, sizes, tmp_path):
    """With model.fusion.late_residual the unimodal heads are part of the served fusion head (either late rule)."""
    from tests.export.conftest import write_tiny_checkpoint

    late = ("model.fusion.auxiliary_heads=true", "model.fusion.late_residual=true", f"model.fusion.late_rule={rule}")
    checkpoint = write_tiny_checkpoint(entry, tmp_path / "outputs" / entry / "best.pt", overrides=late)
    result = export_checkpoint(Target(checkpoint, entry), LEGACY_ONNX, tmp_path / "export", sizes=sizes,
                               progress=False)
    assert result.passed, result.report.to_markdown()
    graph = onnx.load(str(tmp_path / "export" / entry / "fusion_head.onnx")).graph
    class_rows = [tuple(t.dims) for t in graph.initializer if len(t.dims) == 2 and t.dims[0] == 4]
    modalities = load_manifest(tmp_path / "export" / entry)["modalities"]
    assert len(class_rows) == 1 + len(modalities), class_rows  # the fused classifier and one head per modality
