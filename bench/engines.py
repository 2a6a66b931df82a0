"""Inference engines side by side behind one interface: encode patch batches, aggregate a bag, predict a slide.

In-process engines run the exported parts (export.parts) through a runner per part -- PyTorch eager (the parts
themselves), TorchScript and onnxruntime (export.formats runners of the written files). Triton engines go through
the real server with triton_repo's client. `IN_PROCESS_ENGINES` maps an engine name to how it is built; CUDA-only
engines carry `needs_cuda` so the benchmarks skip them with a reason on machines without a GPU, and those whose code
also runs on the CPU (`cpu_rehearsal`) are run once there by CI, for parity only, so they cannot rot before a GPU
run. An engine that cannot run here raises `EngineUnavailable` with the reason instead of quietly running elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch

from export import names
from export.formats import OnnxFormat, TorchScriptFormat
from export.parts import ClinicalEncoderPart, FusionHeadPart, MilPoolPart, Part, PatchEncoderPart
from triton_repo import inputs as tinputs

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
BAG_PARTS: tuple[type[Part], ...] = (PatchEncoderPart, MilPoolPart, ClinicalEncoderPart, FusionHeadPart)


class EngineUnavailable(RuntimeError):
    """This machine cannot run the engine; the message says why and what would make it run."""


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


def torch_runner(part: torch.nn.Module, signature, device: str = "cpu", autocast: torch.dtype | None = None,
                 channels_last: bool = False) -> Runner:
    """Run a part module (eager or compiled, optionally under autocast) on named numpy inputs."""

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(device) for n in signature.input_names]
        if channels_last:
            args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args]
        with torch.inference_mode(), torch.autocast(device, autocast or torch.float32, enabled=autocast is not None):
            outputs = part(*args)
        return {n: o.float().cpu().numpy() for n, o in zip(signature.output_names, outputs)}

    return run


@dataclass
class InProcessEngine:
    """Exported parts run in this process; patches are encoded chunk by chunk (bounded memory)."""
    name: str
    runners: dict[str, Runner]
    modalities: tuple[str, ...]

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
        return self.aggregate(self.encode(bag.batches), clinical)  # read ahead by the bag's reader threads

    def close(self) -> None:
        self.runners.clear()


# ------------------------------------------------------------------------------------------- engine factories
def _parts(bm: BenchModel) -> list[type[Part]]:
    return [p for p in BAG_PARTS if p.modality is None or p.modality in bm.geometry.modalities]


def eager_engine(bm: BenchModel, autocast: torch.dtype | None = None, channels_last: bool = False,
                 compile: bool = False, name: str = "pytorch_eager_fp32") -> InProcessEngine:
    """The parts themselves: fp32, or fp16/bf16 autocast with channels_last weights, optionally torch.compile'd."""
    runners = {}
    for part_cls in _parts(bm):
        part = part_cls(bm.model, bm.geometry).eval().to(bm.device)
        if channels_last:
            part = part.to(memory_format=torch.channels_last)
        if compile:
            part = torch.compile(part, dynamic=True)
        runners[part_cls.name] = torch_runner(part, part_cls.signature(bm.geometry), bm.device, autocast,
                                              channels_last)
    return InProcessEngine(name, runners, bm.geometry.modalities)


def file_engine(bm: BenchModel, fmt, name: str, providers: list[str] | None = None,
                export: str | None = None) -> InProcessEngine:
    """Runners over the exported files of `fmt` (onnxruntime CPU provider / TorchScript) via export.formats;
    `export` picks another export of that format (default: the fp32 one, keyed by the format name)."""
    import json

    from export.manifest import MANIFEST_NAME

    if providers is not None:
        require_provider(providers[0])  # before the export is written: that can take a minute for ResNet-50
    directory = bm.exports[export or fmt.name]
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    runners = {}
    for part_cls in _parts(bm):
        path = directory / manifest["parts"][part_cls.name]["file"]
        signature = part_cls.signature(bm.geometry)
        runners[part_cls.name] = (fmt.runner(path, signature) if providers is None
                                  else onnx_runner(path, signature, providers))
    return InProcessEngine(name, runners, bm.geometry.modalities)


def require_provider(name: str) -> str:
    """`name` if this onnxruntime package has that execution provider, else `EngineUnavailable`."""
    import onnxruntime as ort

    if name not in ort.get_available_providers():
        raise EngineUnavailable(f"onnxruntime {ort.__version__} here offers {ort.get_available_providers()}, not "
                                f"{name}; install onnxruntime-gpu (matching this CUDA) for it")
    return name


def onnx_runner(path: Path, signature, providers: list[str]) -> Runner:
    """An onnxruntime session on `providers`, the first of which must be the one that runs: onnxruntime itself
    falls back to the next provider with only a log line (the CPU package has no CUDA provider, and the CUDA
    provider falls back when its libraries do not load), which would time the CPU under the CUDA engine's name."""
    import onnxruntime as ort

    wanted = require_provider(providers[0])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != wanted:
        raise EngineUnavailable(f"onnxruntime could not start {wanted} for {path.name} (it ran on "
                                f"{session.get_providers()}): the provider failed to start, e.g. its CUDA/cuDNN "
                                "libraries did not load")
    outputs = [o.name for o in session.get_outputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(outputs, {n: inputs[n] for n in signature.input_names})))

    return run


@dataclass(frozen=True)
class EngineSpec:
    build: Callable[[BenchModel], InProcessEngine]
    needs_cuda: bool = False     # timed only on a CUDA device
    cpu_rehearsal: bool = False  # CUDA-only, but its code runs on the CPU too (autocast, channels_last, compile)
    needs_compiler: bool = False  # torch.compile: inductor builds C++ on the CPU


IN_PROCESS_ENGINES: dict[str, EngineSpec] = {
    "pytorch_eager_fp32": EngineSpec(lambda bm: eager_engine(bm)),
    "torchscript": EngineSpec(lambda bm: file_engine(bm, TorchScriptFormat(), "torchscript")),
    "onnxruntime_cpu": EngineSpec(lambda bm: file_engine(bm, OnnxFormat(), "onnxruntime_cpu")),
    # the int8 export (patch encoder quantized, calibrated on a slide that is never timed; other parts fp32)
    "onnxruntime_cpu_int8": EngineSpec(
        lambda bm: file_engine(bm, OnnxFormat(), "onnxruntime_cpu_int8", export="onnx_int8")),
    "pytorch_bf16_channels_last": EngineSpec(
        lambda bm: eager_engine(bm, torch.bfloat16, True, name="pytorch_bf16_channels_last"), needs_cuda=True,
        cpu_rehearsal=True),
    "pytorch_fp16_channels_last": EngineSpec(
        lambda bm: eager_engine(bm, torch.float16, True, name="pytorch_fp16_channels_last"), needs_cuda=True,
        cpu_rehearsal=True),
    "pytorch_compile_bf16": EngineSpec(
        lambda bm: eager_engine(bm, torch.bfloat16, True, compile=True, name="pytorch_compile_bf16"),
        needs_cuda=True, cpu_rehearsal=True, needs_compiler=True),
    "onnxruntime_cuda": EngineSpec(
        lambda bm: file_engine(bm, OnnxFormat(), "onnxruntime_cuda",
                               providers=["CUDAExecutionProvider", "CPUExecutionProvider"]), needs_cuda=True),
}


class TritonEngine:
    """The real server through triton_repo's SlideClient (gRPC; optionally patches via system shared memory)."""

    def __init__(self, name: str, url: str, export_dir: Path, shared_memory: bool, chunk_size: int,
                 in_flight: int = 2):
        from triton_repo.client import SlideClient

        self.name = name
        self.client = SlideClient(url, manifest_or_repo=export_dir, chunk_size=chunk_size, in_flight=in_flight,
                                  shared_memory=shared_memory)

    def encode(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        return self.client.streamer.encode(batches)

    def aggregate(self, features: np.ndarray, clinical: np.ndarray) -> SlidePrediction:
        """MIL + fusion only: one request to the `<entry>_slide` ensemble (features in, probabilities out)."""
        io = self.client.io
        given = {"pathology": features, "clinical": clinical[None]}
        presence = np.ones((1, len(self.client.manifest.modalities)), bool)
        result = self.client.infer_slide(given, presence)
        return SlidePrediction(result.as_numpy(io.probabilities.name)[0], result.as_numpy(io.patch_attention.name))

    def predict(self, bag: tinputs.SlideBag, clinical: np.ndarray) -> SlidePrediction:
        prediction = self.client.predict(bags=[bag], clinical=clinical)
        return SlidePrediction(prediction.probabilities, prediction.patch_attention)

    def close(self) -> None:
        self.client.close()


TRITON_ENGINES: dict[str, bool] = {"triton_grpc": False, "triton_grpc_shm": True}  # name -> shared memory
