"""The client end to end on real cohort files (SVS via OpenSlide, raw NIfTI, clinical CSV), served by Triton,
against in-process PyTorch fed the same patients through zoo.data's dataset."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.triton.conftest import ENTRY, TOL
from tests.triton.served_models import entry_config
from triton_repo.client import SlideClient, resolve_manifest
from zoo.data import BreastCancerMultiModalDataset, collate_multimodal

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tiny_cohort):
    """Every patch of every tiled slide (no sampling), MRI from the cohort's mri_processed, clinical encoded."""
    return BreastCancerMultiModalDataset.from_config(entry_config(ENTRY), split="train", data_dir=tiny_cohort,
                                                     max_patches=None)


def _patient(dataset, with_mri: bool) -> tuple[str, dict]:
    """First patient with slides, and with or without MRI, as (patient_id, collated batch of one)."""
    for index, pid in enumerate(dataset.patient_ids):
        item = dataset[index]
        present = dict(zip(("pathology", "mri", "clinical"), item["presence"].tolist()))
        if present["pathology"] and present["mri"] == with_mri:
            return pid, collate_multimodal([item])
    pytest.fail(f"no train patient with slides and mri={with_mri} in {dataset.data_dir}")


def _assert_slides_match(slide_ids, coords, batch):
    assert list(slide_ids) == batch["slide_ids"][0]
    np.testing.assert_array_equal(coords, batch["pathology_coords"][0].numpy())


def test_slide_client_on_real_files_equals_pytorch(server, repository, references, dataset, tiny_cohort, tmp_path):
    pid, batch = _patient(dataset, with_mri=True)
    row = dataset.table[dataset.table["patient_id"] == pid].iloc[0].to_dict()
    slides = sorted((tiny_cohort / "wsi_raw").glob(f"{pid}-*.svs"))
    with SlideClient(server.grpc_url, ENTRY, repository, chunk_size=16, tiling_dir=tmp_path / "tiles") as client:
        pred = client.predict(slides=slides, mri=tiny_cohort / "mri_raw" / pid / "T1.nii.gz", clinical=row)
    ref = references[ENTRY].run(batch)
    np.testing.assert_allclose(pred.probabilities, ref.probabilities, atol=TOL)
    np.testing.assert_allclose(pred.fusion_attention, ref.fusion_attention, atol=TOL)
    np.testing.assert_allclose(pred.patch_attention, ref.patch_attention, atol=TOL)
    assert pred.presence.all()
    _assert_slides_match(pred.slide_ids, pred.coords, batch)


def test_client_cli_on_a_patient_without_mri(server, repository, references, dataset, tiny_cohort, tmp_path):
    pid, batch = _patient(dataset, with_mri=False)
    heatmap = tmp_path / "attention.png"
    # The default tiling cache ($XDG_CACHE_HOME) is used, inside this test's directory.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "triton_repo.client", "predict", "--patient-id", pid, "--data-dir", str(tiny_cohort),
         "--url", server.grpc_url, "--repository", str(repository), "--model", ENTRY, "--heatmap", str(heatmap),
         "--top-k", "1000", "--chunk-size", "8", "--reader-threads", "3"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    ref = references[ENTRY].run(batch)
    np.testing.assert_allclose(list(result["probabilities"].values()), ref.probabilities, atol=TOL)
    np.testing.assert_allclose(list(result["fusion_attention"].values()), ref.fusion_attention, atol=TOL)
    assert result["presence"] == {"pathology": True, "mri": False, "clinical": True}
    assert result["fusion_attention"]["mri"] == pytest.approx(0.0, abs=1e-6)
    # Every patch comes back in the top list (top-k above N): its attention, slide and level-0 position.
    top = result["top_patches"]
    assert result["num_patches"] == len(top) == len(ref.patch_attention)
    index = {(p["slide_id"], p["x"], p["y"]): p["attention"] for p in top}
    coords = batch["pathology_coords"][0].numpy()
    served = [index[(batch["slide_ids"][0][s], x, y)] for s, x, y in coords]
    np.testing.assert_allclose(served, ref.patch_attention, atol=TOL)
    assert list((tmp_path / "cache").rglob("*.h5")), "the client's tilings were not cached"
    with Image.open(heatmap) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        assert np.asarray(image.convert("L")).std() > 0  # drawn, not blank


def test_tiling_cache_tells_slides_with_the_same_id_apart(server, repository, tiny_cohort, tmp_path):
    """Every cohort has a P-0.svs: two different slide files with one name must not share cached coordinates."""
    from zoo.data.tile import load_coords
    tiles = sorted((tiny_cohort / "wsi_patches" / "ps64_l0_t0.5").glob("*.h5"))
    first, second = tiles[0], next(t for t in tiles[1:] if len(load_coords(t)[0]) != len(load_coords(tiles[0])[0]))
    with SlideClient(server.grpc_url, ENTRY, repository, tiling_dir=tmp_path / "tiles") as client:
        for tiling, folder in ((first, "a"), (second, "b")):
            copy = tmp_path / folder / "P-0.svs"
            copy.parent.mkdir()
            copy.write_bytes((tiny_cohort / "wsi_raw" / f"{tiling.stem}.svs").read_bytes())
            bag, = client.tile_slides([copy])
            np.testing.assert_array_equal(bag.coords, load_coords(tiling)[0])


def test_a_slide_without_usable_tissue_is_skipped_not_fatal(server, repository, tiny_cohort, tmp_path, capsys):
    """At 256 px some cohort slides have no patch over the tissue threshold: the patient's other slides count."""
    from zoo.data.tile import load_coords
    tiled = {p.stem for p in (tiny_cohort / "wsi_patches" / "ps256_l0_t0.5").glob("*.h5")}
    slides = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))
    good = next(s for s in slides if s.stem in tiled)
    bad = next(s for s in slides if s.stem not in tiled)
    manifest = resolve_manifest(repository, ENTRY)
    tiling = {**manifest.preprocessing["pathology"], "patch_size": 256}
    at_256 = dataclasses.replace(manifest, preprocessing={**manifest.preprocessing, "pathology": tiling})
    with SlideClient(server.grpc_url, ENTRY, at_256, tiling_dir=tmp_path) as client:
        bags = client.tile_slides([bad, good])
    assert [b.slide_id for b in bags] == [good.stem]
    np.testing.assert_array_equal(bags[0].coords, load_coords(tiny_cohort / "wsi_patches" / "ps256_l0_t0.5"
                                                              / f"{good.stem}.h5")[0])
    assert f"{bad}: tiling failed" in capsys.readouterr().err
