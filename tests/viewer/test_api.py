"""The viewer's HTTP API on a real uvicorn: deep zoom, overlays, ids, caching, unreadable slides, missing data."""
from __future__ import annotations

import io
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from tests.viewer.conftest import LiveServer, free_port, make_checkpoint, serve

DZI_NS = "{http://schemas.microsoft.com/deepzoom/2008}"


def patient_with_slides(server: LiveServer) -> tuple[str, str]:
    cohort = server.state.cohort
    pid = next(p.patient_id for p in cohort.patients.values() if p.slides and p.mri)
    return pid, cohort.patients[pid].slides[0]


def test_dzi_descriptor_matches_the_slide(viewer):
    import openslide

    _, sid = patient_with_slides(viewer)
    r = viewer.get(f"/api/slides/{sid}.dzi")
    assert r.status == 200 and "xml" in r.headers["content-type"]
    root = ET.fromstring(r.body)
    size = root.find(f"{DZI_NS}Size")
    with openslide.OpenSlide(str(viewer.state.cohort.slides[sid].path)) as slide:
        assert (int(size.get("Width")), int(size.get("Height"))) == slide.dimensions
    assert (root.get("TileSize"), root.get("Overlap"), root.get("Format")) == ("254", "1", "jpeg")


def test_tiles_at_several_levels_and_out_of_range(viewer):
    from openslide import OpenSlide
    from openslide.deepzoom import DeepZoomGenerator

    _, sid = patient_with_slides(viewer)
    with OpenSlide(str(viewer.state.cohort.slides[sid].path)) as slide:
        dz = DeepZoomGenerator(slide, tile_size=254, overlap=1, limit_bounds=False)
        levels, level_tiles = dz.level_count, dz.level_tiles
        dims = {lv: dz.get_tile(lv, (0, 0)).size for lv in range(levels)}  # what DeepZoomGenerator makes
    for level in (0, levels // 2, levels - 1):
        r = viewer.get(f"/api/slides/{sid}_files/{level}/0_0.jpeg")
        assert r.status == 200 and r.headers["content-type"] == "image/jpeg", (level, r.body[:200])
        assert Image.open(io.BytesIO(r.body)).size == dims[level]
    cols, rows = level_tiles[levels - 1]
    last = viewer.get(f"/api/slides/{sid}_files/{levels - 1}/{cols - 1}_{rows - 1}.jpeg")
    assert last.status == 200
    for path in (f"/api/slides/{sid}_files/{levels}/0_0.jpeg", f"/api/slides/{sid}_files/{levels - 1}/{cols}_0.jpeg",
                 f"/api/slides/{sid}_files/{levels - 1}/0_{rows}.jpeg", f"/api/slides/{sid}_files/0/-1_0.jpeg"):
        r = viewer.get(path)
        assert r.status == 404, path
        assert r.json()["detail"], path


@pytest.mark.parametrize("path", [
    "/api/patients/..", "/api/patients/%2E%2E", "/api/patients/..%2F..%2Fetc", "/api/patients/a%2Fb",
    "/api/patients/NOPE-404", "/api/slides/NOPE-404-0.dzi", "/api/slides/..%2F..%2Fetc%2Fpasswd.dzi",
    "/api/slides/../../etc/passwd", "/api/slides/..%2Ftrain_clinical.csv_files/0/0_0.jpeg",
    "/api/slides/x..y_files/0/0_0.jpeg", "/api/slides/NOPE-404-0/heatmap.png", "/api/slides/..%2Fx/mask.png",
    "/api/patients/NOPE-404/mri/T1/0.png", "/api/patients/{pid}/mri/..%2F..%2Ftrain_clinical/0.png",
    "/api/patients/{pid}/mri/T9/0.png", "/api/patients/{pid}/mri/T1/100000.png", "/api/patients/{pid}/top/999.jpeg",
    "/api/nothing/here", "/static/../../train_clinical.csv", "/static/%2E%2E/%2E%2E/cohort.py",
])
def test_bad_ids_are_404_with_a_message(viewer, path):
    pid, _ = patient_with_slides(viewer)
    r = viewer.get(path.replace("{pid}", pid))
    assert r.status == 404, (path, r.status, r.body[:300])
    assert b"patient_id" not in r.body  # never the content of a cohort file
    if r.headers.get("content-type", "").startswith("application/json"):
        assert r.json()["detail"]


def test_patient_detail_overlays_gallery_mri_and_caching(viewer, tmp_path):
    state = viewer.state
    pid = next(p.patient_id for p in state.cohort.patients.values()
               if p.slides and p.mri and state.predictions.peek(p.patient_id) is None)
    sid = state.cohort.patients[pid].slides[0]
    before = viewer.state.predictions.computed
    d = viewer.get(f"/api/patients/{pid}").json()
    assert viewer.state.predictions.computed == before + 1
    pr = d["prediction"]
    assert pr["status"] == "ok" and abs(sum(pr["probabilities"].values()) - 1) < 1e-5
    assert set(pr["fusion_attention"]) == {"pathology", "mri", "clinical"}
    assert abs(sum(pr["fusion_attention"].values()) - 1) < 1e-4
    slide = next(s for s in d["slides"] if s["slide_id"] == sid)
    assert slide["error"] is None and slide["heatmap"] and slide["mask"]
    heat = viewer.get(slide["heatmap"]["url"])
    assert heat.status == 200 and heat.headers["content-type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(heat.body)))
    assert rgba.shape[2] == 4 and (rgba[..., 3] == 255).any() and (rgba[..., 3] == 0).any()
    assert len({tuple(c) for c in rgba[rgba[..., 3] == 255][:, :3]}) > 1  # attention varies: several colours
    mask = viewer.get(slide["mask"]["url"])
    assert mask.status == 200 and Image.open(io.BytesIO(mask.body)).mode == "RGBA"
    assert d["top_patches"] and d["top_patches"][0]["attention"] >= d["top_patches"][-1]["attention"]
    patch = viewer.get(d["top_patches"][0]["url"])
    assert patch.status == 200 and Image.open(io.BytesIO(patch.body)).size == (160, 160)
    seq = sorted(d["mri"])[0]
    info = d["mri"][seq]
    png = viewer.get(f"{info['url']}{info['num_slices'] // 2}.png")
    assert png.status == 200 and min(Image.open(io.BytesIO(png.body)).size) >= 256
    assert {"age", "er_status"} <= set(d["clinical"])
    # computed once: later views and the heatmap read the cache
    viewer.get(f"/api/patients/{pid}")
    viewer.get(slide["heatmap"]["url"])
    assert viewer.state.predictions.computed == before + 1
    # ... and on disk, keyed by the checkpoint's sha256: a new server over the same cache computes nothing
    cache = viewer.state.predictions.cache_dir
    assert (cache / f"{pid}.json").is_file()
    assert cache.parent.name == viewer.state.backend.key[:32]
    again = serve(viewer.state.cohort.data_dir, viewer.state.backend.checkpoint, cache.parent.parent)
    try:
        assert again.get(f"/api/patients/{pid}").json()["prediction"]["probabilities"] == pr["probabilities"]
        assert again.state.predictions.computed == 0
    finally:
        again.stop()


def test_patient_list_fills_in(viewer):
    rows = viewer.get("/api/patients").json()
    assert len(rows["patients"]) == len(viewer.state.cohort.patients)
    done = [r for r in rows["patients"] if r["status"] == "ok"]
    assert done, "the detail test computed at least one patient"
    r = done[0]
    detail = viewer.get(f"/api/patients/{r['patient_id']}").json()["prediction"]
    assert r["predicted"] == detail["predicted"] and isinstance(r["correct"], bool)
    assert r["probability"] == pytest.approx(max(detail["probabilities"].values()))


def test_unreadable_slide_leaves_the_rest_of_the_patient(corrupt_cohort, checkpoints):
    root, pid, bad, _ = corrupt_cohort
    server = serve(root, checkpoints["attention"], None)
    try:
        d = server.get(f"/api/patients/{pid}").json()
        slide = next(s for s in d["slides"] if s["slide_id"] == bad)
        assert "cannot open" in slide["error"]
        assert d["prediction"]["status"] == "ok" and bad in d["prediction"]["skipped_slides"]
        assert d["mri"] and d["clinical"]
        others = [s for s in d["slides"] if s["slide_id"] != bad]
        assert others, "the fixture's patient has slides besides the bad one"
        for other in others:
            assert other["error"] is None and other["heatmap"]
        assert d["prediction"]["fusion_attention"]["pathology"] > 0  # the readable slides were used
        r = server.get(f"/api/slides/{bad}.dzi")
        assert r.status == 500 and bad in r.json()["detail"]
        assert server.get(f"/api/slides/{bad}_files/0/0_0.jpeg").status == 500
        assert server.get(f"/api/slides/{bad}/heatmap.png").status == 404
    finally:
        server.stop()


def test_model_without_pathology_says_so(easy_cohort, checkpoints):
    server = serve(easy_cohort, checkpoints["concatenate-mri_clin"], None)
    try:
        pid, sid = patient_with_slides(server)
        d = server.get(f"/api/patients/{pid}").json()
        assert d["prediction"]["status"] == "ok" and set(d["prediction"]["fusion_attention"]) == {"mri", "clinical"}
        assert any("pathology: not used by this model" in m for m in d["missing"])
        slide = d["slides"][0]
        assert slide["heatmap"] is None and "does not use pathology" in slide["heatmap_missing"]
        assert d["top_patches"] == []
        assert server.get(f"/api/slides/{sid}_files/0/0_0.jpeg").status == 200  # the slide still shows
        assert server.get(f"/api/slides/{sid}/heatmap.png").status == 404
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["attention", "concatenate-mri_clin"])
def test_patient_without_mri_says_so(corrupt_cohort, checkpoints, model):
    root, _, _, no_mri = corrupt_cohort
    server = serve(root, checkpoints[model], None)
    try:
        d = server.get(f"/api/patients/{no_mri}").json()
        assert d["prediction"]["status"] == "ok" and d["mri"] == {}
        assert any(m.startswith("MRI: no volume") for m in d["missing"])
        assert d["prediction"]["fusion_attention"]["mri"] == 0
    finally:
        server.stop()


def test_missing_openseadragon_says_how_to_install(easy_cohort, checkpoints, monkeypatch, tmp_path):
    import zoo.viewer.app as app_module

    monkeypatch.setattr(app_module, "OSD_BUILD", tmp_path / "absent")
    server = serve(easy_cohort, checkpoints["concatenate-mri_clin"], None)
    try:
        r = server.get("/vendor/openseadragon/openseadragon.min.js")
        assert r.status == 503 and b"npm ci --prefix zoo/viewer/frontend" in r.body
        assert "npm ci" in server.get("/api/info").json()["openseadragon_missing"]
        assert server.get("/").status == 200
    finally:
        server.stop()


def test_cli_serves_on_loopback_and_prints_the_url(easy_cohort, checkpoints, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "zoo.viewer", "--data-dir", str(easy_cohort), "--checkpoint",
           str(checkpoints["attention"]), "--port", str(port), "--cache-dir", str(tmp_path), "--no-warm"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "serving on" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        assert f"http://127.0.0.1:{port}/" in line
        import urllib.request

        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    info = __import__("json").loads(r.read())
                break
            except OSError:
                time.sleep(0.1)
        assert info["entry"] == "attention" and info["backend"] == "checkpoint"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run([sys.executable, "-m", "zoo.viewer", "--data-dir", str(easy_cohort), "--checkpoint",
                          str(tmp_path / "missing.pt")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_checkpoint_of_an_older_version_is_served_with_version(easy_cohort, tmp_path, capsys):
    """A 1.4 attention checkpoint (summed tokens) is refused with the fix named, then served as it was trained."""
    from zoo.viewer.cli import main

    old = make_checkpoint("attention", easy_cohort, tmp_path, version="1.4",
                          overrides=("model.fusion.attention_combine=sum",))
    assert main(["--data-dir", str(easy_cohort), "--checkpoint", str(old)]) == 2
    refused = capsys.readouterr().err
    assert "pass --version 1.4" in refused and "zoo.viewer" in refused
    assert main(["--data-dir", str(easy_cohort), "--triton", "127.0.0.1:1", "--version", "1.4"]) == 2
    assert "--version applies to --checkpoint" in capsys.readouterr().err
    server = serve(easy_cohort, old, None, version="1.4")
    try:
        assert server.get("/api/info").json()["version"] == "1.4"
        assert server.state.backend.model.fusion_head.fusion.combine == "sum"
        pid, _ = patient_with_slides(server)
        d = server.get(f"/api/patients/{pid}").json()
        assert d["prediction"]["status"] == "ok"
        assert abs(sum(d["prediction"]["probabilities"].values()) - 1) < 1e-5
    finally:
        server.stop()
