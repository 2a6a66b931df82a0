"""Triton model configs as a small data structure, rendered (and checked) through Triton's own schema.

`render` builds a `model_config_pb2.ModelConfig` message, so a field or enum Triton does not know is an error
at build time rather than at server start; `parse` reads a config.pbtxt back with the same schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

_TRITON_DTYPES: dict[np.dtype, str] = {
    np.dtype(bool): "TYPE_BOOL", np.dtype(np.uint8): "TYPE_UINT8", np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16", np.dtype(np.int32): "TYPE_INT32", np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16", np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float64): "TYPE_FP64",
}


class ModelConfigError(ValueError):
    """A Triton model config (config.pbtxt) that Triton's schema rejects."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: np.dtype
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Step:
    model: str
    input_map: dict[str, str]   # the step model's input name -> ensemble tensor
    output_map: dict[str, str]  # the step model's output name -> ensemble tensor


@dataclass(frozen=True)
class ModelConfig:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int = 0
    backend: str = ""
    platform: str = ""
    instance_kind: str = ""            # KIND_CPU | KIND_GPU | KIND_MODEL; empty for ensembles
    instance_count: int = 1
    dynamic_batching_delay_us: int | None = None  # None = no dynamic batching
    steps: tuple[Step, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    gpu_accelerators: tuple[tuple[str, dict[str, str]], ...] = ()
    default_model_filename: str = ""


def triton_dtype(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype not in _TRITON_DTYPES:
        raise ModelConfigError(f"dtype {dtype} has no Triton equivalent")
    return _TRITON_DTYPES[dtype]


def _tensor(message, tensor: Tensor) -> None:
    message.name = tensor.name
    message.data_type = pb.DataType.Value(triton_dtype(tensor.dtype))
    message.dims.extend(int(d) for d in tensor.dims)


def to_proto(cfg: ModelConfig) -> pb.ModelConfig:
    msg = pb.ModelConfig(name=cfg.name, max_batch_size=cfg.max_batch_size)
    if cfg.platform:
        msg.platform = cfg.platform
    if cfg.backend:
        msg.backend = cfg.backend
    if cfg.default_model_filename:
        msg.default_model_filename = cfg.default_model_filename
    for tensor in cfg.inputs:
        _tensor(msg.input.add(), tensor)
    for tensor in cfg.outputs:
        _tensor(msg.output.add(), tensor)
    if cfg.instance_kind:
        group = msg.instance_group.add(count=cfg.instance_count)
        group.kind = pb.ModelInstanceGroup.Kind.Value(cfg.instance_kind)
    if cfg.dynamic_batching_delay_us is not None:
        msg.dynamic_batching.max_queue_delay_microseconds = cfg.dynamic_batching_delay_us
    for step in cfg.steps:
        s = msg.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        s.input_map.update(step.input_map)
        s.output_map.update(step.output_map)
    if cfg.steps:
        msg.platform = "ensemble"
    for key, value in cfg.parameters.items():
        msg.parameters[key].string_value = str(value)
    for name, params in cfg.gpu_accelerators:
        acc = msg.optimization.execution_accelerators.gpu_execution_accelerator.add(name=name)
        acc.parameters.update(params)
    return msg


def render(cfg: ModelConfig) -> str:
    """The config.pbtxt text of `cfg` (checked by round-tripping through Triton's schema)."""
    text = text_format.MessageToString(to_proto(cfg))
    parse(text, where=f"rendered config of {cfg.name!r}")
    return text


def parse(text: str, where: str = "config.pbtxt") -> pb.ModelConfig:
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as err:
        raise ModelConfigError(f"{where}: not a valid Triton ModelConfig: {err}") from None
