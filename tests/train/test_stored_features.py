"""Bring your own features: `python -m zoo.features extract` writes TRIDENT's layout from our coords, zoo entries
train on a TRIDENT (or CLAM) feature folder with data.modalities.pathology.features_dir, attention-score reads
the stored coords."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

TILING = "wsi_patches/ps32_l0_t0.5"  # the tiny recipe's tiling of the easy cohort


@pytest.fixture(scope="module")
def trident_job(easy_cohort, tmp_path_factory):
    from zoo.training.extract import main

    out = tmp_path_factory.mktemp("trident_job")
    args = ["extract", "--encoder", "cnn_tiny", "--slides", str(easy_cohort / "wsi_raw"), "--coords",
            str(easy_cohort / TILING), "--output", str(out), "--input-size", "32", "--batch-size", "16"]
    assert main(args) == 0
    return out, args


def test_our_coords_and_features_read_as_trident(easy_cohort, trident_job):
    job, args = trident_job
    coords_file = sorted((easy_cohort / TILING).glob("*.h5"))[0]
    with h5py.File(coords_file, "r") as fh:  # TRIDENT's read_coords: attrs of the coords dataset
        attrs = dict(fh["coords"].attrs)
        coords = fh["coords"][:]
    for key in ("patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap",
                "name", "savetodir", "level0_width", "level0_height"):
        assert key in attrs, key
    assert attrs["level0_magnification"] == 20 and attrs["target_magnification"] == 20  # synthetic: 0.5 mpp, 20x
    level0_size = attrs["patch_size"] * attrs["level0_magnification"] // attrs["target_magnification"]
    assert attrs["patch_size_level0"] == level0_size
    assert attrs["name"] == coords_file.stem and attrs["overlap"] == 0
    features_file = job / "features_cnn_tiny" / f"{coords_file.stem}.h5"
    with h5py.File(features_file, "r") as fh:
        assert fh["features"].dtype == np.float32 and fh["features"].shape[0] == len(coords)
        assert {"name", "savetodir", "encoder"} <= set(fh["features"].attrs)
        assert fh["features"].attrs["encoder"] == "cnn_tiny"
        assert np.array_equal(fh["coords"][:], coords)
        assert fh["coords"].attrs["patch_size_level0"] == attrs["patch_size_level0"]
    from zoo.training.extract import main
    assert main(args) == 0  # idempotent: every slide already done


def test_extract_reports_a_bad_slide_and_does_the_rest(easy_cohort, tmp_path, capsys):
    from zoo.training.extract import main

    coords = tmp_path / "coords"
    coords.mkdir()
    for p in sorted((easy_cohort / TILING).glob("*.h5"))[:2]:
        shutil.copy(p, coords / p.name)
    shutil.copy(p, coords / "NOSLIDE-0.h5")
    rc = main(["extract", "--encoder", "cnn_tiny", "--slides", str(easy_cohort / "wsi_raw"), "--coords", str(coords),
               "--output", str(tmp_path / "out"), "--input-size", "32"])
    out = capsys.readouterr().out
    assert rc == 1 and "2 extracted" in out and "FAILED NOSLIDE-0" in out
    assert sorted(p.name for p in (tmp_path / "out" / "features_cnn_tiny").iterdir()) == [
        f"{q.stem}.h5" for q in sorted(coords.glob("*.h5")) if q.stem != "NOSLIDE-0"]


def test_pathology_only_trains_on_trident_folder_and_scores(easy_cohort, trident_job, tmp_path):
    from zoo.analysis.viz import main as viz_main
    from zoo.training.pipeline import run_training

    job, _ = trident_job
    logs: list[str] = []
    out = tmp_path / "pathology_only"
    result = run_training("pathology_only", recipe="tiny", data_dir=easy_cohort, output_dir=out, progress=False,
                          overrides=[f"data.modalities.pathology.features_dir={job}", "training.epochs=2"],
                          log=logs.append)
    assert result["epochs_run"] == 2
    text = "\n".join(logs)
    assert "stored features" in text and "no patch encoder" in text and "standardised" in text
    payload = torch.load(out / "best.pt", weights_only=True)
    assert payload["config"]["model"]["modalities"]["pathology"]["feature_dim"] == 32
    assert payload["config"]["data"]["modalities"]["pathology"]["features_encoder"] == "cnn_tiny"
    assert not any(k.startswith("patch_encoder.") for k in payload["state_dict"])
    assert viz_main(["attention-score", "--checkpoint", str(out / "best.pt"), "--split", "test"]) == 0
    summary = json.loads((out / "attention_score_test.json").read_text())
    assert summary["num_slides"] > 0


def test_attention_trains_with_bad_files_named(easy_cohort, trident_job, tmp_path):
    from zoo.training.pipeline import run_training

    job, _ = trident_job
    folder = tmp_path / "job" / "features_cnn_tiny"
    shutil.copytree(job / "features_cnn_tiny", folder)
    files = sorted(folder.glob("*.h5"))
    with h5py.File(files[0], "r+") as fh:  # another encoder's dim
        del fh["features"]
        fh.create_dataset("features", data=np.zeros((fh["coords"].shape[0], 7), np.float32))
    with h5py.File(files[1], "r+") as fh:  # coords and features lengths differ
        del fh["coords"]
        fh.create_dataset("coords", data=np.zeros((1000, 2), np.int64))
    logs: list[str] = []
    with pytest.warns(UserWarning, match="skipped"):
        result = run_training("attention", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "attention",
                              progress=False, log=logs.append,
                              overrides=[f"data.modalities.pathology.features_dir={tmp_path / 'job'}",
                                         "training.epochs=1", "data.modalities.pathology.max_patches=4"])
    assert result["epochs_run"] == 1
    text = "\n".join(logs)
    assert files[0].stem in text and "feature dim 7" in text and files[1].stem in text


def test_clam_folder_feeds_the_dataset(easy_cohort, trident_job, tmp_path):
    from zoo.data import BreastCancerMultiModalDataset

    job, _ = trident_job
    src = sorted((job / "features_cnn_tiny").glob("*.h5"))
    root = tmp_path / "clam"
    (root / "h5_files").mkdir(parents=True)
    (root / "pt_files").mkdir()
    for i, p in enumerate(src):
        with h5py.File(p, "r") as fh:
            feats, coords = fh["features"][:], fh["coords"][:].astype(np.int32)
        if i % 2:  # every other slide as CLAM's pt_files only
            torch.save(torch.from_numpy(feats), root / "pt_files" / f"{p.stem}.pt")
            continue
        with h5py.File(root / "h5_files" / f"{p.stem}.h5", "w") as fh:
            fh.create_dataset("features", data=feats)
            fh.create_dataset("coords", data=coords)
    with pytest.warns(UserWarning, match="without coords"):
        ds = BreastCancerMultiModalDataset(easy_cohort, "train", use_mri=False, use_clinical=False, max_patches=8,
                                           external_features=root)
    assert ds.feature_folder.layout == "clam" and ds.feature_dim == 32
    items = [ds[i] for i in range(len(ds))]
    with_path = [it for it in items if it["presence"][0]]
    assert with_path and all(it["pathology_features"].shape[1] == 32 for it in with_path)
