"""Export formats as small strategy objects: how to write a part, check the written file, and run it.

The pipeline, the manifest and the parity checker only talk to `ExportFormat`; `FORMATS` maps a format name
to its strategy.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from export.signature import Signature, TensorSpec

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
ONNX_PROTOBUF_LIMIT = 2 * 1024**3
NUM_THREADS = 2

log = logging.getLogger(__name__)


class ExportFormat(Protocol):
    name: str
    suffix: str
    default_output_dir: str
    precisions: tuple[str, ...]

    def export(self, module: nn.Module, example: tuple[torch.Tensor, ...], signature: Signature, path: Path,
               opset: int) -> dict[str, Any]:
        """Write `module` to `path`; return facts for the manifest (exporter used, extra files)."""

    def set_precision(self, path: Path, precision: str) -> None:
        """Convert the written fp32 file in place to `precision` (inputs and outputs keep their dtypes)."""

    def verify(self, path: Path, signature: Signature) -> None:
        """Raise if the written file is invalid or its inputs/outputs differ from `signature`."""

    def runner(self, path: Path, signature: Signature) -> Runner:
        """A callable running the exported file on named numpy inputs, returning named numpy outputs."""


class ExportError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------- ONNX
ONNX_EXPORTERS = ("dynamo", "legacy")
ONNX_DTYPES = {"uint8": 2, "bool": 9, "float32": 1, "float16": 10, "int64": 7}  # onnx.TensorProto enum values


def parameter_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@dataclass(frozen=True)
class OnnxFormat:
    name: str = "onnx"
    suffix: str = ".onnx"
    default_output_dir: str = "exports"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")  # int8: the patch encoder only (export.quantize)
    exporter: str = "dynamo"  # "dynamo" (torch.export, falls back to legacy on failure) or "legacy" (dynamo=False)

    def __post_init__(self) -> None:
        if self.exporter not in ONNX_EXPORTERS:
            raise ValueError(f"unknown ONNX exporter {self.exporter!r}; expected one of {ONNX_EXPORTERS}")

    def export(self, module: nn.Module, example: tuple[torch.Tensor, ...], signature: Signature, path: Path,
               opset: int) -> dict[str, Any]:
        exporter = self.exporter
        if exporter == "dynamo":
            external = parameter_bytes(module) > ONNX_PROTOBUF_LIMIT * 0.9
            try:
                self._export_dynamo(module, example, signature, path, opset, external)
            except Exception as exc:  # torch.export rejects some code paths the legacy tracer handles
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                log.warning("dynamo ONNX export of %s failed (%s: %s); falling back to dynamo=False",
                            path.name, type(exc).__name__, first_line)
                for stale in (path, path.with_name(path.name + ".data")):
                    stale.unlink(missing_ok=True)
                exporter = f"legacy (dynamo failed: {type(exc).__name__}: {first_line[:200]})"
        if exporter != "dynamo":
            self._export_legacy(module, example, signature, path, opset)
        files = [path.name]
        data = path.with_name(path.name + ".data")
        if data.exists():
            files.append(data.name)
        return {"exporter": exporter, "files": files}

    @staticmethod
    def _export_dynamo(module, example, signature: Signature, path: Path, opset: int, external: bool) -> None:
        dims = {s: torch.export.Dim(s, min=1) for s in signature.symbols}
        dynamic_shapes = tuple(
            {axis: dims[symbol] for axis, symbol in t.dynamic_axes.items()} or None for t in signature.inputs
        )
        with quiet():
            torch.onnx.export(
                module, example, str(path), dynamo=True, external_data=external,
                dynamic_shapes={"inputs": dynamic_shapes},  # Part.forward takes *inputs
                input_names=signature.input_names, output_names=signature.output_names, opset_version=opset,
            )

    @staticmethod
    def _export_legacy(module, example, signature: Signature, path: Path, opset: int) -> None:
        dynamic_axes = {t.name: t.dynamic_axes for t in (*signature.inputs, *signature.outputs) if t.dynamic_axes}
        with quiet():
            torch.onnx.export(
                module, example, str(path), dynamo=False, dynamic_axes=dynamic_axes,
                input_names=signature.input_names, output_names=signature.output_names, opset_version=opset,
            )

    def set_precision(self, path: Path, precision: str) -> None:
        if precision in ("fp32", "int8"):  # int8 needs calibration data: the pipeline quantizes with it
            return
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # Weights and compute in fp16; graph inputs/outputs stay as declared (uint8/bool/float32) via casts.
        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        toposort_nodes(model.graph)  # the converter appends its input casts after their consumers
        onnx.save(model, str(path), save_as_external_data=False)

    def verify(self, path: Path, signature: Signature) -> None:
        import onnx

        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as exc:
            raise ExportError(f"{path.name}: onnx.checker failed: {exc}") from exc
        graph = onnx.load(str(path), load_external_data=False).graph
        problems = compare_io("input", graph.input, signature.inputs) + compare_io("output", graph.output,
                                                                                   signature.outputs)
        if problems:
            raise ExportError(f"{path.name} does not match its declared signature: " + "; ".join(problems))

    def runner(self, path: Path, signature: Signature) -> Runner:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, min(NUM_THREADS, torch.get_num_threads()))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        output_names = [o.name for o in session.get_outputs()]

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            feed = {name: inputs[name] for name in signature.input_names}
            return dict(zip(output_names, session.run(output_names, feed)))

        return run


def toposort_nodes(graph) -> None:
    """Reorder `graph.node` so every node comes after the producers of its inputs (stable otherwise)."""
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output}
    nodes = list(graph.node)
    order: list[int] = []
    state = [0] * len(nodes)  # 0 new, 1 visiting, 2 done
    for root in range(len(nodes)):
        stack = [(root, iter(nodes[root].input))]
        if state[root]:
            continue
        state[root] = 1
        while stack:
            index, inputs = stack[-1]
            dep = next((produced_by[i] for i in inputs if i in produced_by and state[produced_by[i]] == 0), None)
            if dep is None:
                if all(i not in produced_by or state[produced_by[i]] == 2 for i in nodes[index].input):
                    state[index] = 2
                    order.append(index)
                    stack.pop()
                    continue
                raise ExportError(f"graph {graph.name!r} has a cycle through node {nodes[index].name!r}")
            state[dep] = 1
            stack.append((dep, iter(nodes[dep].input)))
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def onnx_dims(value_info) -> list[int | str | None]:
    """Each dim of an ONNX value as int (static), str (symbolic) or None (unknown)."""
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return dims


def compare_io(kind: str, values, declared: tuple[TensorSpec, ...]) -> list[str]:
    """Differences between an ONNX graph's inputs or outputs and the declared tensor specs."""
    actual = {v.name: v for v in values}
    problems = []
    if [v.name for v in values] != [t.name for t in declared]:
        problems.append(f"{kind} names {[v.name for v in values]} != declared {[t.name for t in declared]}")
    for t in declared:
        if t.name not in actual:
            continue
        value = actual[t.name]
        if value.type.tensor_type.elem_type != ONNX_DTYPES[t.dtype]:
            problems.append(f"{kind} {t.name}: elem_type {value.type.tensor_type.elem_type} is not {t.dtype}")
        dims = onnx_dims(value)
        if len(dims) != len(t.shape):
            problems.append(f"{kind} {t.name}: rank {len(dims)} != declared {len(t.shape)}")
            continue
        for axis, (got, want) in enumerate(zip(dims, t.shape)):
            # A symbolic output dim where a fixed one is declared is legal (the legacy exporter writes them);
            # parity checks the real output shapes.
            if isinstance(want, int) and got != want and (kind == "input" or isinstance(got, int)):
                problems.append(f"{kind} {t.name} axis {axis}: {got} != declared {want}")
            if isinstance(want, str) and isinstance(got, int):
                problems.append(f"{kind} {t.name} axis {axis}: fixed at {got}, declared dynamic {want!r}")
    return problems


# ---------------------------------------------------------------------------------------------- TorchScript
@dataclass(frozen=True)
class TorchScriptFormat:
    name: str = "torchscript"
    suffix: str = ".pt"
    default_output_dir: str = "exports_torchscript"
    precisions: tuple[str, ...] = ("fp32",)

    def set_precision(self, path: Path, precision: str) -> None:
        if precision != "fp32":
            raise ExportError(f"TorchScript export is fp32 only, not {precision}")

    def export(self, module: nn.Module, example: tuple[torch.Tensor, ...], signature: Signature, path: Path,
               opset: int) -> dict[str, Any]:
        with quiet(), torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=False)
            traced = torch.jit.freeze(traced.eval())
            torch.jit.save(traced, str(path))
        return {"exporter": "torch.jit.trace", "files": [path.name]}

    def verify(self, path: Path, signature: Signature) -> None:
        try:
            with quiet():
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ExportError(f"{path.name}: torch.jit.load failed: {exc}") from exc
        declared = len(signature.inputs) + 1  # + self
        got = len(list(module.forward.schema.arguments)) if hasattr(module.forward, "schema") else declared
        if got != declared:
            raise ExportError(f"{path.name}: forward takes {got - 1} inputs, declared {declared - 1}")

    def runner(self, path: Path, signature: Signature) -> Runner:
        with quiet():
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in signature.input_names]
            with torch.no_grad():
                outputs = module(*args)
            return {name: o.numpy() for name, o in zip(signature.output_names, outputs)}

        return run


@contextlib.contextmanager
def quiet():
    """Silence exporter progress prints and tracer warnings; errors still propagate."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (OnnxFormat(), TorchScriptFormat())}
