"""Session fixtures: a tiny export, a model repository built from it, and the real Triton server on it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The project is not installed as a package: make the repository root and this directory importable.
for path in (Path(__file__).resolve().parents[2], Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tiny_export import write_tiny_export  # noqa: E402

from triton_repo import manifest as mf  # noqa: E402
from triton_repo.build import build_repository  # noqa: E402
from triton_repo.plan import BuildOptions  # noqa: E402
from triton_repo.server import TritonServer, free_port  # noqa: E402

ENTRY = "tiny_attention"
SECOND_ENTRY = "tiny_attention-path_clin"  # a second entry side by side, without MRI
MAX_PATCH_BATCH = 128


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {ENTRY: write_tiny_export(root / ENTRY, ENTRY, seed=0),
            SECOND_ENTRY: write_tiny_export(root / SECOND_ENTRY, SECOND_ENTRY, ("pathology", "clinical"), seed=1)}


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
