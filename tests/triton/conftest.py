"""Session fixtures: real tiny-recipe checkpoints, their real ONNX exports, a model repository built from them,
the real Triton server on it, and the in-process PyTorch models the served results are compared with."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.triton.reference import TorchReference
from tests.triton.served_models import export_entry, write_checkpoint
from triton_repo import manifest as mf
from triton_repo.build import build_repository
from triton_repo.plan import BuildOptions
from triton_repo.server import TritonServer, free_port

ENTRY = "attention"               # all three modalities
SECOND_ENTRY = "late-path_clin"   # a second entry side by side: the product of experts, without MRI
MAX_PATCH_BATCH = 128
TOL = 1e-4                        # issue #6: Triton equals in-process PyTorch within 1e-4


@pytest.fixture(scope="session")
def checkpoints(tiny_cohort, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outputs")
    return {name: write_checkpoint(name, root / name / "best.pt", tiny_cohort, seed=i)
            for i, name in enumerate((ENTRY, SECOND_ENTRY))}


@pytest.fixture(scope="session")
def exports(checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {name: export_entry(name, checkpoint, root) for name, checkpoint in checkpoints.items()}


@pytest.fixture(scope="session")
def references(checkpoints) -> dict[str, TorchReference]:
    return {name: TorchReference(checkpoint) for name, checkpoint in checkpoints.items()}


@pytest.fixture(scope="session")
def manifest(exports) -> mf.ExportManifest:
    return mf.load(exports[ENTRY])


@pytest.fixture(scope="session")
def repository(exports, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("model_repository")
    build_repository(list(exports.values()), repo, BuildOptions(flavor="embedded", max_patch_batch=MAX_PATCH_BATCH))
    return repo


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton_log") / "tritonserver.log"
    with TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      log_path=log) as running:
        yield running
