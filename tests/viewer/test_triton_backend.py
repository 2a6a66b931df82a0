"""The viewer's Triton backend turns a SlideClient prediction into the viewer's record (a stand-in client: the real
server path is the client's own, tested in tests/triton), leaving unreadable slides out of the request."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tests.viewer.conftest import LiveServer


class FakeClient:
    def __init__(self, tmp_path):
        self.entry = "attention"
        self.manifest = SimpleNamespace(modalities=("pathology", "mri", "clinical"), version="1.1",
                                        class_names=("Luminal A", "Luminal B", "HER2-enriched", "Triple-negative"),
                                        export_dir=tmp_path, preprocessing={"pathology": {"patch_size": 32, "level": 0},
                                                                            "mri": {"sequences": ["T1"]}})
        self.calls = []
        self.skipped_slides = []

    def predict(self, slides=(), mri=None, clinical=None):
        self.calls.append([p.stem for p in slides])
        coords = np.array([[0, 0, 0], [0, 32, 0], [0, 0, 32]], np.int64)
        return SimpleNamespace(probabilities=np.array([0.1, 0.6, 0.2, 0.1]), fusion_attention=np.array([.5, .3, .2]),
                               presence=np.array([True, mri is not None, True]), patch_attention=np.array([.2, .5, .3]),
                               coords=coords, slide_ids=tuple(p.stem for p in slides[:1]))

    def close(self):
        pass


def test_triton_backend_record(corrupt_cohort, tmp_path):
    from zoo.viewer.app import create_app
    from zoo.viewer.cohort import Cohort
    from zoo.viewer.triton_backend import TritonBackend

    root, pid, bad, _ = corrupt_cohort
    cohort = Cohort(root)
    client = FakeClient(tmp_path)
    backend = TritonBackend("127.0.0.1:1", None, None, cohort, client=client)
    server = LiveServer(create_app(cohort, backend, cache_dir=tmp_path / "cache", warm=False))
    try:
        d = server.get(f"/api/patients/{pid}").json()
        assert bad not in client.calls[0]
        pr = d["prediction"]
        assert pr["predicted"] == "Luminal B" and pr["fusion_attention"]["pathology"] == 0.5
        assert bad in pr["skipped_slides"]
        good = [s for s in d["slides"] if s["heatmap"]]
        assert len(cohort.patients[pid].slides) >= 2 and len(good) == 1  # the client answers for its first slide
        assert good[0]["heatmap"]["patch_size_level0"] == 32
        assert d["top_patches"][0]["attention"] == 0.5
        assert server.get("/api/info").json()["backend"] == "triton"
    finally:
        server.stop()
