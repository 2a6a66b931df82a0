"""Session fixtures for the benchmarks: sizes per mode, a model with its ONNX/TorchScript exports, synthetic
slides, eager references, engines, and the real Triton server (embedded flavor) on free loopback ports.

Modes: `--benchmark-only` (or --benchmark-enable) measures at full size; `--benchmark-disable` (CI) runs every case
once at small sizes with the `tiny` recipe so the bench cannot rot. BENCH_LARGE=1 adds the 40,000 px slide.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engines import IN_PROCESS_ENGINES, TRITON_ENGINES, BenchModel, EngineUnavailable, TritonEngine  # noqa: E402
from bench.pipeline import Tiling, chunks, read_all_patches, tile_coords  # noqa: E402
from bench.slides import bench_slide_path, side_for_patches, sized_slide, write_bench_slide  # noqa: E402

CALIBRATION_SLIDE_SEED = 1  # int8 calibration patches come from a slide that is never timed
CALIBRATION_PATCHES = 128
ENTRY = "attention-path_clin"  # pathology MIL + clinical, attention fusion: every per-slide stage is exercised
VIEWER_ENTRY = "attention"     # the viewer shows every modality
THREADS = 2
# Timing and parity do not depend on the weights; the gpu recipe's pretrained ResNet-50 would need a weights file.
BENCH_OVERRIDES = ("model.modalities.pathology.pretrained=false",)
LARGE_SLIDE_PX = 40_000


@dataclass(frozen=True)
class Profile:
    """Sizes of one bench mode: slides are sized for a number of tissue patches (bench.slides.sized_slide)."""
    name: str
    recipe: str
    stage_patches: int           # a few hundred patches: per-stage and per-engine timings
    compare_patches: int         # Triton vs in-process comparison slide
    memory_slide_px: tuple[int, ...]
    rounds: int
    load_s: float
    load_clients: int = 16
    load_bag: int = 16           # patches per load-test request
    batch_size: int = 64
    reader_threads: int | None = None  # None: zoo.data.tile's default (one per core, at most 8)


PROFILES = {
    "ci": Profile("ci (--benchmark-disable)", "tiny", 80, 300, (512, 1024), rounds=1, load_s=5.0),
    "cpu": Profile("cpu", "cpu", 300, 1000, (2048, 4096, 6144), rounds=3,
                   load_s=20.0),  # 3: a median ignores one slow round
    # a GPU encodes faster than one core reads: every core of the host reads
    "cuda": Profile("cuda", "gpu", 400, 10_000, (4096, 8192), rounds=5, load_s=20.0, batch_size=256,
                    reader_threads=os.cpu_count()),
}


def benchmarks_disabled(config) -> bool:
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # --benchmark-only means measure, even next to a --benchmark-disable (e.g. one given in PYTEST_ADDOPTS).
    if config.getoption("benchmark_only", default=False):
        config.option.benchmark_enable = True
    torch.set_num_threads(THREADS)


def pytest_benchmark_update_machine_info(config, machine_info):
    import onnxruntime
    import openslide

    machine_info.update({
        "bench_profile": select_profile(config).name,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                   else f"cpu ({platform.processor() or platform.machine()})"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "onnxruntime": onnxruntime.__version__, "openslide": openslide.__library_version__,
                     "tritonclient": package_version("tritonclient"),
                     "tritonserver": f"nvidia-pytriton {package_version('nvidia-pytriton')} (bundled binary)"},
    })


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def rehearsal(config) -> bool:
    """CI (`--benchmark-disable`) on a machine without CUDA: the CUDA-only cases whose code also runs on the CPU
    (autocast bf16/fp16, channels_last, torch.compile, the GPU roofline and large-slide cases) run there once at the
    CI sizes, for parity only, so the first GPU run does not meet their bugs; nothing is timed in CI."""
    return benchmarks_disabled(config) and not torch.cuda.is_available()


def select_profile(config) -> Profile:
    if benchmarks_disabled(config):
        return PROFILES["ci"]
    return PROFILES["cuda" if torch.cuda.is_available() else "cpu"]


@pytest.fixture(scope="session")
def profile(request) -> Profile:
    return select_profile(request.config)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def slide_cache(workdir) -> Path:
    """Generated slides; BENCH_CACHE=DIR keeps them between runs (they are deterministic per size)."""
    path = Path(os.environ.get("BENCH_CACHE") or workdir / "slides")
    path.mkdir(parents=True, exist_ok=True)
    return path


def calibration_patches(slide_cache: Path, workdir: Path, patch_size: int) -> np.ndarray:
    """uint8 tissue patches of a separate synthetic slide, for the int8 export's calibration."""
    side = side_for_patches(CALIBRATION_PATCHES, patch_size, seed=CALIBRATION_SLIDE_SEED)
    path = write_bench_slide(bench_slide_path(slide_cache, side, seed=CALIBRATION_SLIDE_SEED), side,
                             seed=CALIBRATION_SLIDE_SEED)
    tiling = Tiling(patch_size=patch_size)
    return read_all_patches(path, tile_coords(path, workdir / "calibration_tiles", tiling),
                            tiling)[:CALIBRATION_PATCHES]


def build_bench_model(recipe: str, entry_name: str = ENTRY, overrides: Sequence[str] = ()):
    """(entry, resolved config, model in eval mode) of a bench entry (`ENTRY`; the viewer bench's is `attention`)
    under `recipe` and `overrides`, from a fixed seed with random weights (`BENCH_OVERRIDES`, and no weights file is
    read: the cpu recipe's self-supervised encoder would need its cohort's artifact), so no recipe needs a weights
    file on the machine."""
    from zoo.models.builder import build_model_from_config
    from zoo.registry import get_entry

    entry = get_entry(entry_name)
    config = entry.config(recipe, [*BENCH_OVERRIDES, *overrides])
    torch.manual_seed(0)
    return entry, config, build_model_from_config(config["model"], load_pretrained=False).eval()


class LazyExports(dict):
    """Export directories by key, each written on first use: a run of some cases (the GPU ones, say) pays only
    for the exports its engines read."""

    def __init__(self, make: Callable[[str], Path]):
        super().__init__()
        self._make = make

    def __missing__(self, key: str) -> Path:
        self[key] = path = self._make(key)
        return path


@pytest.fixture(scope="session")
def bench_model(profile, workdir, slide_cache) -> BenchModel:
    """The entry's model (fixed seed, untrained: timing and parity do not depend on training) and its exports
    (written when an engine first reads them)."""
    from export.formats import OnnxFormat, TorchScriptFormat
    from export.geometry import probe_geometry
    from export.parts import ParitySizes
    from export.pipeline import export_checkpoint
    from export.source import Target
    from zoo.checkpoint import checkpoint_payload, save_checkpoint
    from zoo.spec import BEST_CHECKPOINT

    entry, config, model = build_bench_model(profile.recipe)
    checkpoint = save_checkpoint(workdir / "checkpoint" / BEST_CHECKPOINT, checkpoint_payload(entry, config, model))
    sizes = ParitySizes(patches=(1, 5), bag=(1, 40), batch=(1, 2))  # export's own parity, kept small
    patch_size = int(config["data"]["modalities"]["pathology"]["patch_size"])
    formats = {"onnx": (OnnxFormat, "fp32"), "torchscript": (TorchScriptFormat, "fp32"),
               "onnx_int8": (OnnxFormat, "int8")}

    def export(key: str) -> Path:
        fmt, precision = formats[key]
        calibration = calibration_patches(slide_cache, workdir, patch_size) if precision == "int8" else None
        result = export_checkpoint(Target(checkpoint), fmt(), workdir / f"exports_{key}", sizes=sizes, overwrite=True,
                                   progress=False, precision=precision, calibration=calibration)
        assert result.passed, f"{key} export of {entry.name} failed its parity check: {result.report.summary()}"
        return result.directory

    exports = LazyExports(export)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return BenchModel(model.to(device), probe_geometry(model, config), exports, device)


@pytest.fixture(scope="session")
def tiling(bench_model, profile) -> Tiling:
    from zoo.data.patches import reader_threads
    return Tiling(patch_size=bench_model.geometry.patch_size, batch_size=profile.batch_size,
                  reader_threads=reader_threads(profile.reader_threads))


@pytest.fixture(scope="session")
def clinical(bench_model) -> np.ndarray:
    return np.random.default_rng(0).normal(size=bench_model.geometry.clinical_dim).astype(np.float32)


@dataclass
class SlideData:
    """One slide, tiled once, its patches in memory, and the eager fp32 reference outputs."""
    path: Path
    coords: np.ndarray
    patches: np.ndarray
    features: np.ndarray
    probabilities: np.ndarray
    patch_attention: np.ndarray

    @property
    def side_px(self) -> int:
        return int(self.path.stem.rsplit("_", 1)[-1])

    def batches(self, size: int):
        return chunks(self.patches, size)


def _slide_data(path: Path, coords: np.ndarray, tiling: Tiling, engines, clinical: np.ndarray) -> SlideData:
    patches = read_all_patches(path, coords, tiling)
    eager = engines.get("pytorch_eager_fp32")
    features = eager.encode(chunks(patches, tiling.batch_size))
    prediction = eager.aggregate(features, clinical)
    return SlideData(path, coords, patches, features, prediction.probabilities, prediction.patch_attention)


def _sized_slide(patches: int, slide_cache: Path, workdir: Path, tiling: Tiling, engines, clinical) -> SlideData:
    tiled: dict[Path, np.ndarray] = {}  # the sizing's tiling, kept for the slide it settles on

    def count(slide: Path) -> int:
        tiled[slide] = tile_coords(slide, workdir / "tiles", tiling)
        return len(tiled[slide])

    path, _ = sized_slide(slide_cache, patches, tiling.patch_size, count)
    return _slide_data(path, tiled[path], tiling, engines, clinical)


@pytest.fixture(scope="session")
def stage_slide(profile, slide_cache, workdir, tiling, engines, clinical) -> SlideData:
    return _sized_slide(profile.stage_patches, slide_cache, workdir, tiling, engines, clinical)


@pytest.fixture(scope="session")
def compare_slide(profile, slide_cache, workdir, tiling, engines, clinical) -> SlideData:
    return _sized_slide(profile.compare_patches, slide_cache, workdir, tiling, engines, clinical)


@pytest.fixture(scope="session")
def triton_server(bench_model, workdir, profile):
    from triton_repo.build import build_repository
    from triton_repo.plan import BuildOptions
    from triton_repo.server import TritonServer, free_port

    repo = workdir / "model_repository"
    build_repository([bench_model.exports["onnx"]], repo,
                     BuildOptions(flavor="embedded", max_patch_batch=max(256, profile.batch_size)))
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      log_path=workdir / "tritonserver.log") as server:
        yield server


@pytest.fixture(scope="session")
def triton_engines(triton_server, bench_model, tiling):
    built = {name: TritonEngine(name, triton_server.grpc_url, bench_model.exports["onnx"], shm,
                                chunk_size=tiling.batch_size) for name, shm in TRITON_ENGINES.items()}
    yield built
    for engine in built.values():
        engine.close()


def _can_build_cpp() -> bool:
    """What inductor needs to compile for the CPU: a C++ compiler and this interpreter's headers."""
    import sysconfig

    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return bool(shutil.which("g++") or shutil.which("c++")) and headers.is_file()


class Engines:
    """Engines built on first use and reused for the session; ones this machine cannot run skip with the reason.
    In a rehearsal (see `rehearsal`) the CUDA-only engines whose code runs on the CPU are built on the CPU."""

    def __init__(self, request, bench_model: BenchModel, tiling: Tiling):
        self.request, self.bench_model, self.tiling = request, bench_model, tiling
        self.rehearsal = rehearsal(request.config)
        self._built: dict[str, object] = {}
        self._unavailable: dict[str, str] = {}

    def get(self, name: str):
        engine = self.find(name)
        if engine is None:
            pytest.skip(self._unavailable[name])
        return engine

    def find(self, name: str):
        """The engine, or None when this machine cannot run it (`get` skips with the reason)."""
        if name not in self._built and name not in self._unavailable:
            try:
                self._built[name] = self._build(name)
            except EngineUnavailable as exc:
                self._unavailable[name] = f"{name}: {exc}"
        return self._built.get(name)

    def _build(self, name: str):
        if name in TRITON_ENGINES:
            return self.request.getfixturevalue("triton_engines")[name]
        spec = IN_PROCESS_ENGINES[name]
        if spec.needs_cuda and not torch.cuda.is_available():
            if not (self.rehearsal and spec.cpu_rehearsal):
                raise EngineUnavailable("needs a CUDA device; none on this machine (torch.cuda.is_available() is "
                                        "False)")
            if spec.needs_compiler and not _can_build_cpp():
                raise EngineUnavailable("its CPU rehearsal needs a C++ compiler on PATH and Python's headers for "
                                        "torch.compile; this machine lacks one of them")
        return spec.build(self.bench_model)

    def close(self) -> None:
        for engine in self._built.values():
            if not isinstance(engine, TritonEngine):  # those close with their fixture, before the server stops
                engine.close()


@pytest.fixture(scope="session")
def engines(request, bench_model, tiling):
    registry = Engines(request, bench_model, tiling)
    yield registry
    registry.close()


ENGINE_NAMES = [*IN_PROCESS_ENGINES, *TRITON_ENGINES]
# Largest allowed deviation from the eager fp32 reference, (features relative to their scale, probabilities).
TOLERANCES = {"default": (1e-3, 1e-4), "onnxruntime_cpu_int8": (1e-1, 2e-2), "pytorch_bf16_channels_last": (5e-2, 2e-2),
              "pytorch_fp16_channels_last": (1e-2, 5e-3), "pytorch_compile_bf16": (5e-2, 2e-2)}


def tolerance(engine: str) -> tuple[float, float]:
    return TOLERANCES.get(engine, TOLERANCES["default"])
