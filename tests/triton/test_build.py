"""Repository rendering: schema-valid configs for both flavors, dims from the ONNX graphs, complete ensembles."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.processes import dead_pid
from tests.triton.conftest import ENTRY, MAX_PATCH_BATCH
from triton_repo import config as cfg
from triton_repo import manifest as mf
from triton_repo.build import build_repository
from triton_repo.build import main as build_main
from triton_repo.plan import BuildOptions, model_configs, part_model_name, slide_ensemble_name
from zoo.atomic import _HOST


def _onnx_dims(path, name, kind):
    graph = onnx.load(path).graph
    values = {v.name: v for v in (graph.input if kind == "input" else graph.output)}
    return [d.dim_value if d.HasField("dim_value") else -1 for d in values[name].type.tensor_type.shape.dim]


def _configs(repo):
    return {p.parent.name: cfg.parse(p.read_text(), str(p)) for p in repo.glob("*/config.pbtxt")}


@pytest.mark.parametrize("flavor", ["embedded", "gpu"])
def test_every_config_parses_and_matches_the_onnx_graphs(exports, tmp_path, flavor):
    build_repository(list(exports.values()), tmp_path, BuildOptions(flavor=flavor, tensorrt_fp16=True,
                                                                    max_patch_batch=MAX_PATCH_BATCH))
    configs = _configs(tmp_path)
    assert len(configs) == 7 + 6  # entry with 3 modalities; entry without MRI
    for name, config in configs.items():
        if config.platform == "ensemble":
            continue
        onnx_path = tmp_path / name / "1" / config.parameters["onnx_file"].string_value
        assert onnx_path.is_file()
        batch = [-1] if config.max_batch_size > 0 else []
        for tensors, kind in ((config.input, "input"), (config.output, "output")):
            for t in tensors:
                served, graph = batch + list(t.dims), _onnx_dims(onnx_path, t.name, kind)
                assert len(served) == len(graph), (name, t.name, served, graph)
                for axis, (want, got) in enumerate(zip(served, graph)):
                    # The legacy tracer leaves some output dims symbolic; the config pins them (manifest).
                    assert want == got or (kind == "output" and got == -1), (name, t.name, axis, served, graph)
        if flavor == "gpu":
            assert config.platform == "onnxruntime_onnx" and config.instance_group[0].kind == 1  # KIND_GPU
            accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
            assert accelerators[0].name == "tensorrt" and accelerators[0].parameters["precision_mode"] == "FP16"
        else:
            assert config.backend == "python" and (tmp_path / name / "1" / "model.py").is_file()
    encoder = configs[part_model_name(ENTRY, mf.PATCH_ENCODER)]
    assert encoder.max_batch_size == MAX_PATCH_BATCH and encoder.HasField("dynamic_batching")
    assert all(c.max_batch_size == 0 for n, c in configs.items() if not n.endswith(mf.PATCH_ENCODER))


def test_ensemble_maps_are_complete(repository):
    configs = _configs(repository)
    for name in (ENTRY, slide_ensemble_name(ENTRY)):
        ensemble = configs[name]
        available = {t.name: list(t.dims) for t in ensemble.input}
        for step in ensemble.ensemble_scheduling.step:
            model = configs[step.model_name]
            assert set(step.input_map) == {t.name for t in model.input}, step.model_name
            assert set(step.output_map) <= {t.name for t in model.output}
            assert set(step.input_map.values()) <= set(available), f"{name}: {step.model_name} input not produced yet"
            available.update({v: None for v in step.output_map.values()})
        assert {t.name for t in ensemble.output} <= set(available)
    # The slide ensemble starts from features: no patch-encoder step.
    slide_steps = [s.model_name for s in configs[slide_ensemble_name(ENTRY)].ensemble_scheduling.step]
    assert part_model_name(ENTRY, mf.PATCH_ENCODER) not in slide_steps
    assert json.loads((repository / ENTRY / "manifest.json").read_text())["entry"] == ENTRY


def test_renderer_rejects_what_triton_schema_rejects():
    with pytest.raises(cfg.ModelConfigError, match="not a valid Triton ModelConfig"):
        cfg.parse('name: "x"\nmax_batch_size: 0\nbogus_field: 1\n')
    bad = cfg.ModelConfig("x", (cfg.Tensor("a", np.dtype(np.float32), (-1,)),), (), instance_kind="KIND_TPU")
    with pytest.raises(ValueError):
        cfg.render(bad)


def test_build_refuses_a_tampered_onnx_file(exports, tmp_path):
    tampered = tmp_path / "export"
    tampered.mkdir()
    for f in exports[ENTRY].iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    (tampered / "fusion_head.onnx").write_bytes((tampered / "fusion_head.onnx").read_bytes() + b"\0")
    with pytest.raises(mf.ManifestError, match="fusion_head.onnx (has )?sha256 .*"):
        build_repository([tampered], tmp_path / "repo")
    assert not any((tmp_path / "repo").iterdir())  # nothing half-written


def test_build_cli_needs_overwrite_to_replace(exports, tmp_path, capsys):
    args = ["--export-dir", str(exports[ENTRY]), "--output", str(tmp_path)]
    assert build_main(args) == 0
    models = sorted(p.name for p in tmp_path.iterdir())
    assert build_main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    # what a build killed midway leaves (its staging folder, a model folder being retired): the next build removes it
    dead = dead_pid()
    for leftover in (f".staging.pid{dead}@{_HOST}.ab12", f".{ENTRY}.old.pid{dead}@{_HOST}.cd34"):
        (tmp_path / leftover / "1").mkdir(parents=True)
    assert build_main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == models and not any(m.startswith(".") for m in models)


def test_mismatched_parts_are_refused_at_build_time(manifest):
    mil = manifest.part(mf.MIL_POOL)
    wrong = mf.ServedTensor(mil.outputs[0].name, mil.outputs[0].dtype, (1, 999))
    broken_mil = mf.PartSpec(mil.name, mil.path, mil.sha256, mil.inputs, (wrong, *mil.outputs[1:]))
    broken = mf.ExportManifest(manifest.entry, manifest.version, manifest.export_dir, manifest.class_names,
                               manifest.modalities, {**manifest.parts, mf.MIL_POOL: broken_mil})
    with pytest.raises(mf.ManifestError, match="mil_pool output .* cannot feed fusion_head input"):
        model_configs(broken, BuildOptions())
