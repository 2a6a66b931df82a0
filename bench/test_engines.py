"""An engine runs where its name says or not at all: onnxruntime's silent provider fallback is refused."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from bench.conftest import LazyExports
from bench.engines import EngineUnavailable, file_engine, onnx_runner
from export.formats import OnnxFormat

SIGNATURE = SimpleNamespace(input_names=["x"])


@pytest.fixture
def identity_onnx(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_cpu_provider_runs(identity_onnx):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert (onnx_runner(identity_onnx, SIGNATURE, ["CPUExecutionProvider"])({"x": x})["y"] == x).all()


def test_provider_missing_from_the_package_is_refused(identity_onnx):
    with pytest.raises(EngineUnavailable, match="NoSuchExecutionProvider"):
        onnx_runner(identity_onnx, SIGNATURE, ["NoSuchExecutionProvider", "CPUExecutionProvider"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the CUDA provider may really start")
def test_cuda_provider_falling_back_to_the_cpu_is_refused(identity_onnx):
    """Without a GPU, onnxruntime-gpu lists the CUDA provider but a session on it runs on the CPU."""
    with pytest.raises(EngineUnavailable, match="CUDAExecutionProvider"):
        onnx_runner(identity_onnx, SIGNATURE, ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_missing_provider_is_found_before_the_export_is_written():
    """On a GPU host whose onnxruntime lacks the CUDA provider, no time goes into exporting ResNet-50 first."""
    def export(key):
        pytest.fail(f"the {key} export was written for an engine that cannot run")

    model = SimpleNamespace(exports=LazyExports(export))
    with pytest.raises(EngineUnavailable, match="NoSuchExecutionProvider"):
        file_engine(model, OnnxFormat(), "onnxruntime_nosuch", providers=["NoSuchExecutionProvider"])
