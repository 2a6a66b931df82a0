"""Inference engines side by side behind one interface: encode patch batches, aggregate a bag, predict a slide.

In-process engines run the exported parts (export.parts) through a runner per part -- PyTorch eager (the parts
themselves), TorchScript and onnxruntime (export.formats runners of the written files). Triton engines go through
the real server with triton_repo's client. `ENGINES` maps an engine name to how it is built; CUDA-only engines
carry `needs_cuda` so the benchmarks skip them with a reason on machines without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from export import names
from export.formats import OnnxFormat, TorchScriptFormat
from export.parts import ClinicalEncoderPart, FusionHeadPart, MilPoolPart, PatchEncoderPart, Part
from triton_repo import inputs as tinputs

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
BAG_PARTS: tuple[type[Part], ...] = (PatchEncoderPart, MilPoolPart, ClinicalEncoderPart, FusionHeadPart)


@dataclass
class SlidePrediction:
    probabilities: np.ndarray     # [K]
    patch_attention: np.ndarray   # [N]

    @property
    def num_patches(self) -> int:
        return int(len(self.patch_attention))


class Engine(Protocol):
    name: str

    def encode(self, batches: Iterable[np.ndarray]) -> np.ndarray: ...

    def aggregate(self, features: np.ndarray, clinical: np.ndarray) -> SlidePrediction: ...

    def predict(self, bag: tinputs.SlideBag, clinical: np.ndarray) -> SlidePrediction: ...

    def close(self) -> None: ...


@dataclass
class BenchModel:
    """What every engine is built from: the eager model, its geometry, and its exports per format."""
    model: torch.nn.Module
    geometry: Any                      # export.geometry.Geometry
    exports: dict[str, Path]           # format name -> export directory (manifest.json + part files)
    device: str = "cpu"


def torch_runner(part: torch.nn.Module, signature, device: str = "cpu",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Runner:
    """Run a part module (eager, compiled or cast) on named numpy inputs."""

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(device) for n in signature.input_names]
        if transform is not None:
            args = [transform(a) for a in args]
        with torch.inference_mode():
            outputs = part(*args)
        return {n: o.float().cpu().numpy() for n, o in zip(signature.output_names, outputs)}

    return run


@dataclass
class InProcessEngine:
    """Exported parts run in this process; patches are encoded chunk by chunk (bounded memory)."""
    name: str
    runners: dict[str, Runner]
    modalities: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        run = self.runners[PatchEncoderPart.name]
        return np.concatenate([run({names.PATCHES: b})[names.PATCH_FEATURES] for b in batches])

    def aggregate(self, features: np.ndarray, clinical: np.ndarray) -> SlidePrediction:
        pooled = self.runners[MilPoolPart.name]({names.PATCH_FEATURES: features})
        head_inputs = {names.embedding("pathology"): pooled[names.embedding("pathology")],
                       names.PRESENCE: np.ones((1, len(self.modalities)), bool)}
        if "clinical" in self.modalities:
            clin = self.runners[ClinicalEncoderPart.name]({names.CLINICAL: clinical[None].astype(np.float32)})
            head_inputs[names.embedding("clinical")] = clin[names.embedding("clinical")]
        head = self.runners[FusionHeadPart.name](head_inputs)
        return SlidePrediction(head[names.PROBABILITIES][0], pooled[names.PATCH_ATTENTION])

    def predict(self, bag: tinputs.SlideBag, clinical: np.ndarray) -> SlidePrediction:
        return self.aggregate(self.encode(prefetch(bag.batches)), clinical)

    def close(self) -> None:
        self.runners.clear()


def prefetch(batches: Iterable[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Read the next batches in a background thread while the current one is encoded (OpenSlide drops the GIL)."""
    import queue
    import threading

    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for b in batches:
                box.put(b)
        except BaseException as exc:  # re-raised in the consumer
            box.put(exc)
        box.put(done)

    threading.Thread(target=produce, daemon=True, name="patch-prefetch").start()
    while (item := box.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


# ------------------------------------------------------------------------------------------- engine factories
def _parts(bm: BenchModel) -> list[type[Part]]:
    return [p for p in BAG_PARTS if p.modality is None or p.modality in bm.geometry.modalities]


def eager_engine(bm: BenchModel, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 compile: bool = False, name: str = "pytorch_eager_fp32") -> InProcessEngine:
    runners = {}
    for part_cls in _parts(bm):
        part = part_cls(bm.model, bm.geometry, compute_dtype=dtype).eval().to(bm.device)
        if dtype != torch.float32:
            part = part.to(dtype)
        if channels_last:
            part = part.to(memory_format=torch.channels_last)
        if compile:
            part = torch.compile(part, dynamic=True)
        transform = (lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t) \
            if channels_last else None
        runners[part_cls.name] = torch_runner(part, part_cls.signature(bm.geometry), bm.device, transform)
    return InProcessEngine(name, runners, bm.geometry.modalities)


def file_engine(bm: BenchModel, fmt, name: str, providers: list[str] | None = None) -> InProcessEngine:
    """Runners over the exported files of `fmt` (onnxruntime CPU provider / TorchScript) via export.formats."""
    from export.manifest import load_manifest

    directory = bm.exports[fmt.name]
    manifest = load_manifest(directory)
    runners = {}
    for part_cls in _parts(bm):
        path = directory / manifest["parts"][part_cls.name]["file"]
        signature = part_cls.signature(bm.geometry)
        runners[part_cls.name] = (fmt.runner(path, signature) if providers is None
                                  else onnx_runner(path, signature, providers))
    return InProcessEngine(name, runners, bm.geometry.modalities)


def onnx_runner(path: Path, signature, providers: list[str]) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=providers)
    outputs = [o.name for o in session.get_outputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(outputs, {n: inputs[n] for n in signature.input_names})))

    return run


@dataclass(frozen=True)
class EngineSpec:
    build: Callable[[BenchModel], InProcessEngine]
    needs_cuda: bool = False
    needs_triton: bool = False


IN_PROCESS_ENGINES: dict[str, EngineSpec] = {
    "pytorch_eager_fp32": EngineSpec(lambda bm: eager_engine(bm)),
    "torchscript": EngineSpec(lambda bm: file_engine(bm, TorchScriptFormat(), "torchscript")),
    "onnxruntime_cpu": EngineSpec(lambda bm: file_engine(bm, OnnxFormat(), "onnxruntime_cpu")),
    "pytorch_bf16_channels_last": EngineSpec(
        lambda bm: eager_engine(bm, torch.bfloat16, True, name="pytorch_bf16_channels_last"), needs_cuda=True),
    "pytorch_fp16_channels_last": EngineSpec(
        lambda bm: eager_engine(bm, torch.float16, True, name="pytorch_fp16_channels_last"), needs_cuda=True),
    "pytorch_compile_bf16": EngineSpec(
        lambda bm: eager_engine(bm, torch.bfloat16, True, compile=True, name="pytorch_compile_bf16"),
        needs_cuda=True),
    "onnxruntime_cuda": EngineSpec(
        lambda bm: file_engine(bm, OnnxFormat(), "onnxruntime_cuda",
                               providers=["CUDAExecutionProvider", "CPUExecutionProvider"]), needs_cuda=True),
}
