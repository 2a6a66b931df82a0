"""A tiny hand-built export (ONNX graphs + manifest.json, schema v1 of export.manifest) for the serving tests.

Stand-in for `python -m export.onnx` while the exporter is not in this checkout: each served part is a small real
ONNX graph with fixed random weights and the real parts' tensor names, dtypes and dynamic axes. The `model` part
(the whole graph, not served by Triton) is recorded with the fusion head's file, so the manifest validates.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zoo import spec

PATCH = 32
FEATURE_DIM = 6
EMBED_DIM = 5
MRI_SHAPE = (1, 4, 4, 2)
CLINICAL_DIM = 4


def _tensor(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _w(rng, name, shape):
    return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)


def _patch_encoder(rng, path):
    mean = np.array(spec.IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(spec.IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    nodes = [
        helper.make_node("Cast", ["patches"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "c255"], ["u"]),
        helper.make_node("Sub", ["u", "mean"], ["c"]),
        helper.make_node("Div", ["c", "std"], ["n"]),
        helper.make_node("ReduceMean", ["n", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["h"]),
        helper.make_node("Tanh", ["h"], ["features"]),
    ]
    inits = [numpy_helper.from_array(np.array(255, np.float32), "c255"), numpy_helper.from_array(mean, "mean"),
             numpy_helper.from_array(std, "std"), numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             _w(rng, "w", (3, FEATURE_DIM))]
    _save(helper.make_graph(nodes, "patch_encoder", [_tensor("patches", TensorProto.UINT8, ["num_patches", 3, PATCH, PATCH])],
                            [_tensor("features", TensorProto.FLOAT, ["num_patches", FEATURE_DIM])], inits), path)


def _mil_pool(rng, path):
    nodes = [
        helper.make_node("MatMul", ["features", "wa"], ["scores"]),            # [N,1]
        helper.make_node("Softmax", ["scores"], ["att2"], axis=0),
        helper.make_node("Transpose", ["att2"], ["att_t"], perm=[1, 0]),       # [1,N]
        helper.make_node("MatMul", ["att_t", "features"], ["pooled"]),         # [1,D]
        helper.make_node("MatMul", ["pooled", "we"], ["slide_embedding"]),     # [1,E]
        helper.make_node("Reshape", ["att2", "flat"], ["attention"]),          # [N]
    ]
    inits = [_w(rng, "wa", (FEATURE_DIM, 1)), _w(rng, "we", (FEATURE_DIM, EMBED_DIM)),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    _save(helper.make_graph(nodes, "mil_pool", [_tensor("features", TensorProto.FLOAT, ["num_patches", FEATURE_DIM])],
                            [_tensor("slide_embedding", TensorProto.FLOAT, [1, EMBED_DIM]),
                             _tensor("attention", TensorProto.FLOAT, ["num_patches"])], inits), path)


def _mri_encoder(rng, path):
    nodes = [helper.make_node("ReduceMean", ["mri", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["mri_embedding"])]
    inits = [numpy_helper.from_array(np.array([2, 3, 4], np.int64), "axes"), _w(rng, "w", (MRI_SHAPE[0], EMBED_DIM))]
    _save(helper.make_graph(nodes, "mri_encoder", [_tensor("mri", TensorProto.FLOAT, ["batch", *MRI_SHAPE])],
                            [_tensor("mri_embedding", TensorProto.FLOAT, ["batch", EMBED_DIM])], inits), path)


def _clinical_encoder(rng, path):
    nodes = [helper.make_node("MatMul", ["clinical", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["clinical_embedding"])]
    _save(helper.make_graph(nodes, "clinical_encoder", [_tensor("clinical", TensorProto.FLOAT, ["batch", CLINICAL_DIM])],
                            [_tensor("clinical_embedding", TensorProto.FLOAT, ["batch", EMBED_DIM])],
                            [_w(rng, "w", (CLINICAL_DIM, EMBED_DIM))]), path)


def _fusion_head(rng, path, modalities):
    names = [f"{m}_embedding" for m in modalities]
    m = len(modalities)
    nodes = [helper.make_node("Unsqueeze", [n, "ax1"], [f"{n}_u"]) for n in names]
    nodes += [
        helper.make_node("Concat", [f"{n}_u" for n in names], ["stack"], axis=1),          # [B,M,E]
        helper.make_node("MatMul", ["stack", "wg"], ["g3"]),                              # [B,M,1]
        helper.make_node("Squeeze", ["g3", "ax2"], ["g"]),                                # [B,M]
        helper.make_node("Where", ["presence", "g", "neg"], ["gm"]),
        helper.make_node("Softmax", ["gm"], ["fusion_attention"], axis=1),
        helper.make_node("Unsqueeze", ["fusion_attention", "ax2"], ["a3"]),
        helper.make_node("Mul", ["stack", "a3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "ax1"], ["fused"], keepdims=0),        # [B,E]
        helper.make_node("MatMul", ["fused", "wc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax1"), numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             numpy_helper.from_array(np.array(-1e9, np.float32), "neg"), _w(rng, "wg", (EMBED_DIM, 1)),
             _w(rng, "wc", (EMBED_DIM, len(spec.CLASS_NAMES)))]
    inputs = [_tensor(n, TensorProto.FLOAT, ["batch", EMBED_DIM]) for n in names]
    inputs.append(_tensor("presence", TensorProto.BOOL, ["batch", m]))
    _save(helper.make_graph(nodes, "fusion_head", inputs,
                            [_tensor("probabilities", TensorProto.FLOAT, ["batch", len(spec.CLASS_NAMES)]),
                             _tensor("fusion_attention", TensorProto.FLOAT, ["batch", m])], inits), path)


def _io(model_path: Path) -> tuple[list, list]:
    model = onnx.load(model_path)
    dtype = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8", TensorProto.BOOL: "bool"}

    def describe(v):
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "dtype": dtype[v.type.tensor_type.elem_type], "shape": dims}
    return [describe(v) for v in model.graph.input], [describe(v) for v in model.graph.output]


def write_tiny_export(export_dir: Path, entry: str = "tiny_attention",
                      modalities: tuple[str, ...] = spec.MODALITIES, seed: int = 0) -> Path:
    export_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    builders = {"pathology": [("patch_encoder", _patch_encoder), ("mil_pool", _mil_pool)],
                "mri": [("mri_encoder", _mri_encoder)], "clinical": [("clinical_encoder", _clinical_encoder)]}
    parts = {}
    for modality in modalities:
        for part, build in builders[modality]:
            build(rng, export_dir / f"{part}.onnx")
            parts[part] = f"{part}.onnx"
    _fusion_head(rng, export_dir / "fusion_head.onnx", modalities)
    parts["fusion_head"] = "fusion_head.onnx"
    parts["model"] = "fusion_head.onnx"
    manifest = {"schema_version": 1, "format": "onnx", "entry": entry, "version": "0.0.1", "precision": "fp32",
                "class_names": list(spec.CLASS_NAMES), "modalities": list(modalities),
                "preprocessing": {"pathology": {"patch_size": PATCH}}, "parts": {},
                "source_checkpoint": {"path": "none", "sha256": ""}, "parity": {"passed": True}}
    for part, file in parts.items():
        inputs, outputs = _io(export_dir / file)
        digest = hashlib.sha256((export_dir / file).read_bytes()).hexdigest()
        manifest["parts"][part] = {"file": file, "sha256": digest, "files": {file: digest},
                                   "inputs": inputs, "outputs": outputs}
    (export_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return export_dir
