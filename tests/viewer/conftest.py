"""Viewer fixtures: the training tests' easy cohort, untrained tiny-recipe checkpoints (the viewer's contract does
not depend on training), and the app served by a real uvicorn on a free loopback port."""
from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.train.conftest import _two_threads, easy_cohort  # noqa: F401  (fixtures shared with the training tests)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class LiveServer:
    """uvicorn serving `app` in a thread; `get` sends the path exactly as written (no client-side normalising)."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def get(self, path: str, timeout: float = 120) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    @property
    def state(self):
        return self.app.state.viewer

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def make_checkpoint(entry_name: str, data_dir: Path, out: Path, seed: int = 0, version: str | None = None,
                    overrides: tuple[str, ...] = ()) -> Path:
    """best.pt of an untrained tiny-recipe model of `entry_name` (fixed seed), recorded as `version` when given."""
    import torch

    from zoo.checkpoint import checkpoint_payload, save_checkpoint
    from zoo.models.builder import build_model_from_config
    from zoo.registry import get_entry
    from zoo.spec import BEST_CHECKPOINT

    entry = get_entry(entry_name)
    config = entry.config("tiny", [f"data.data_dir={data_dir}", *overrides])
    torch.manual_seed(seed)
    model = build_model_from_config(config["model"]).eval()
    return save_checkpoint(out / entry_name / BEST_CHECKPOINT, checkpoint_payload(entry, config, model,
                                                                                  version=version))


@pytest.fixture(scope="session")
def checkpoints(easy_cohort, tmp_path_factory):  # noqa: F811  (the imported fixture)
    out = tmp_path_factory.mktemp("viewer_checkpoints")
    return {name: make_checkpoint(name, easy_cohort, out) for name in ("attention", "concatenate-mri_clin")}


def serve(data_dir: Path, checkpoint: Path, cache_dir: Path | None, warm: bool = False,
          version: str | None = None) -> LiveServer:
    from zoo.viewer.app import create_app
    from zoo.viewer.cohort import Cohort
    from zoo.viewer.inference import CheckpointBackend

    cohort = Cohort(data_dir)
    backend = CheckpointBackend(checkpoint, cohort, version=version)
    return LiveServer(create_app(cohort, backend, cache_dir=cache_dir, warm=warm))


@pytest.fixture(scope="session")
def viewer(easy_cohort, checkpoints, tmp_path_factory):  # noqa: F811
    """The all-modality attention checkpoint over the easy cohort (patients computed on demand)."""
    server = serve(easy_cohort, checkpoints["attention"], tmp_path_factory.mktemp("viewer_cache"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def corrupt_cohort(easy_cohort, tmp_path_factory):  # noqa: F811
    """A copy of the easy cohort in which one slide of a patient with MRI and other slides is garbage, and another
    patient's MRI (raw and processed) is gone: (dir, patient, slide, patient without MRI)."""
    from zoo.viewer.cohort import Cohort

    root = tmp_path_factory.mktemp("corrupt") / "cohort"
    shutil.copytree(easy_cohort, root, symlinks=True, ignore=shutil.ignore_patterns("features"))
    cohort = Cohort(root)
    patient = min((p for p in cohort.patients.values() if len(p.slides) >= 2 and p.mri), key=lambda p: len(p.slides))
    slide = cohort.slides[patient.slides[0]]
    slide.path.write_bytes(b"this is not a slide\n" * 64)
    no_mri = next(p.patient_id for p in cohort.patients.values()
                  if p.slides and p.mri and p.patient_id != patient.patient_id)
    shutil.rmtree(root / "mri_raw" / no_mri)
    for path in (root / "mri_processed").glob(f"{no_mri}_*"):
        path.unlink()
    return root, patient.patient_id, slide.slide_id, no_mri
