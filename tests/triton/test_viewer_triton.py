"""The viewer's `--triton` backend against the real server: the app (a real uvicorn) over the tiny cohort shows a
patient's record with the probabilities the client itself predicts for that patient, and draws its heatmap."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from tests.triton.conftest import ENTRY, TOL
from tests.viewer.conftest import LiveServer
from triton_repo.client import SlideClient, patient_inputs


def test_viewer_on_the_triton_backend_equals_the_client(server, repository, tiny_cohort, tmp_path):
    from zoo.viewer.app import create_app
    from zoo.viewer.cohort import Cohort
    from zoo.viewer.triton_backend import TritonBackend

    cohort = Cohort(tiny_cohort)
    pid = next(p.patient_id for p in sorted(cohort.patients.values(), key=lambda p: p.patient_id)
               if p.slides and p.mri)
    backend = TritonBackend(server.grpc_url, ENTRY, repository, cohort, tiling_dir=tmp_path / "viewer_tiles")
    live = LiveServer(create_app(cohort, backend, cache_dir=tmp_path / "cache", warm=False))
    try:
        info = live.get("/api/info").json()
        assert (info["backend"], info["entry"]) == ("triton", ENTRY)
        reply = live.get(f"/api/patients/{pid}")
        assert reply.status == 200, reply.body[:500]
        detail = reply.json()
        shown = detail["prediction"]
        assert shown["status"] == "ok", shown
        with SlideClient(server.grpc_url, ENTRY, repository, tiling_dir=tmp_path / "client_tiles") as client:
            pred = client.predict(**patient_inputs(pid, tiny_cohort, client.manifest))
        assert list(shown["probabilities"]) == list(pred.class_names)
        np.testing.assert_allclose(list(shown["probabilities"].values()), pred.probabilities, atol=TOL)
        np.testing.assert_allclose(list(shown["fusion_attention"].values()), pred.fusion_attention, atol=TOL)
        assert shown["presence"] == dict(zip(pred.modalities, map(bool, pred.presence)))
        assert shown["num_patches"] == len(pred.coords)
        assert shown["predicted"] == pred.predicted_class

        # every used slide has a heatmap whose patches are the client's, with the client's attention
        with_heatmap = [s for s in detail["slides"] if s["heatmap"]]
        assert {s["slide_id"] for s in with_heatmap} == set(pred.slide_ids), [s["heatmap_missing"]
                                                                              for s in detail["slides"]]
        slides = live.state.predictions.get(pid)["slides"]
        for index, sid in enumerate(pred.slide_ids):
            rows = pred.coords[:, 0] == index
            np.testing.assert_array_equal(slides[sid]["coords"], pred.coords[rows, 1:])
            np.testing.assert_allclose(slides[sid]["attention"], pred.patch_attention[rows], atol=TOL)
        top = detail["top_patches"][0]
        assert top["attention"] == max(a for s in slides.values() for a in s["attention"])
        for entry in with_heatmap:
            r = live.get(entry["heatmap"]["url"])
            assert r.status == 200 and r.headers["content-type"] == "image/png", r.body[:300]
            with Image.open(io.BytesIO(r.body)) as image:
                assert image.format == "PNG" and image.width > 1 and image.height > 1
                assert np.asarray(image.convert("RGBA"))[..., 3].max() > 0  # something is drawn
        r = live.get(top["url"])
        assert r.status == 200 and r.headers["content-type"] == "image/jpeg"
    finally:
        live.stop()
        backend.close()


def test_triton_backend_runs_one_prediction_at_a_time(server, repository, tiny_cohort, tmp_path):
    """The app's warm-up thread and page requests share the backend's one SlideClient, whose `skipped_slides` are
    those of its last predict: concurrent computes must not overlap, and each gets its own patient's record."""
    from zoo.viewer.cohort import Cohort
    from zoo.viewer.triton_backend import TritonBackend

    cohort = Cohort(tiny_cohort)
    patients = sorted((p for p in cohort.patients.values() if p.slides), key=lambda p: p.patient_id)[:2]
    backend = TritonBackend(server.grpc_url, ENTRY, repository, cohort, tiling_dir=tmp_path / "tiles")
    try:
        alone = {p.patient_id: backend.compute(p, {}) for p in patients}
        predict, running, overlap = backend.client.predict, [0], []
        guard = threading.Lock()

        def watched(**inputs):
            with guard:
                running[0] += 1
                overlap.append(running[0])
            try:
                time.sleep(0.2)
                return predict(**inputs)
            finally:
                with guard:
                    running[0] -= 1

        backend.client.predict = watched
        with ThreadPoolExecutor(len(patients)) as pool:
            together = dict(zip(alone, pool.map(lambda p: backend.compute(p, {}), patients)))
        assert max(overlap) == 1
        for pid, rec in together.items():
            assert rec["patient_id"] == pid and rec["skipped_slides"] == alone[pid]["skipped_slides"]
            np.testing.assert_allclose(list(rec["probabilities"].values()),
                                       list(alone[pid]["probabilities"].values()), atol=TOL)
    finally:
        backend.close()
