"""TRIDENT / CLAM feature and coords files written here with h5py, read by zoo.data.feature_files; ours read
back by a small reader written to TRIDENT's documented layout."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from zoo.data.feature_files import (
    FeatureFileError,
    detect_feature_folder,
    level0_magnification,
    read_coords_file,
    read_feature_file,
    scan_feature_files,
    write_trident_features,
)

TRIDENT_COORDS_ATTRS = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                        "target_magnification": 20, "overlap": 0, "name": "S1", "savetodir": "/x/20x_256px_0px_overlap",
                        "level0_width": 4096, "level0_height": 2048}


def trident_features(path, n, d, attrs=TRIDENT_COORDS_ATTRS, seed=0):
    """As TRIDENT's save_h5: datasets features and coords, attrs on the datasets (features: name, savetodir)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        f = fh.create_dataset("features", data=rng.normal(size=(n, d)).astype(np.float32),
                              maxshape=(None, d), chunks=(1, d) if n else None)
        f.attrs.update({"name": path.stem, "savetodir": str(path.parent)})
        c = fh.create_dataset("coords", data=(np.arange(2 * n).reshape(n, 2) * 512).astype(np.int64))
        c.attrs.update({**attrs, "name": path.stem})
    return path


def read_trident(path):
    """A reader as TRIDENT's (IO.read_coords + the features dataset): attrs live on the datasets."""
    with h5py.File(path, "r") as fh:
        return (fh["features"][:], dict(fh["features"].attrs), fh["coords"][:], dict(fh["coords"].attrs))


def test_trident_job_folder(tmp_path):
    job = tmp_path / "20x_256px_0px_overlap"
    trident_features(job / "features_uni_v1" / "P1-0.h5", 5, 16)
    trident_features(job / "features_uni_v1" / "P2-0.h5", 0, 16)  # empty slide: (0, D)
    folder = detect_feature_folder(job)
    assert (folder.layout, folder.encoder, sorted(folder.files)) == ("trident", "uni_v1", ["P1-0", "P2-0"])
    slide = read_feature_file(folder.files["P1-0"])
    assert slide.features.shape == (5, 16) and slide.coords.dtype == np.int64
    assert slide.coords_attrs["patch_size_level0"] == 512 and slide.features_attrs["name"] == "P1-0"
    assert read_feature_file(folder.files["P2-0"]).features.shape == (0, 16)
    assert detect_feature_folder(job / "features_uni_v1").encoder == "uni_v1"
    report = scan_feature_files(folder)
    assert report.dim == 16 and report.rows == {"P1-0": 5, "P2-0": 0} and not report.problems
    trident_features(job / "features_conch_v15" / "P1-0.h5", 5, 8)
    with pytest.raises(FeatureFileError, match="several encoders"):
        detect_feature_folder(job)
    assert detect_feature_folder(job, "conch_v15").encoder == "conch_v15"


def test_clam_folder_h5_and_pt(tmp_path):
    torch = pytest.importorskip("torch")
    root = tmp_path / "clam_feats"
    (root / "h5_files").mkdir(parents=True)
    (root / "pt_files").mkdir()
    feats = np.random.default_rng(1).normal(size=(4, 1024)).astype(np.float32)
    with h5py.File(root / "h5_files" / "P1-0.h5", "w") as fh:  # CLAM: no attrs, int32 coords
        fh.create_dataset("features", data=feats)
        fh.create_dataset("coords", data=np.arange(8, dtype=np.int32).reshape(4, 2))
    torch.save(torch.from_numpy(feats), root / "pt_files" / "P1-0.pt")
    torch.save(torch.from_numpy(feats[:3]), root / "pt_files" / "P3-0.pt")  # a slide with a .pt only
    folder = detect_feature_folder(root)
    assert folder.layout == "clam" and folder.files["P1-0"].suffix == ".h5" and folder.files["P3-0"].suffix == ".pt"
    assert read_feature_file(folder.files["P1-0"]).coords.dtype == np.int64
    pt = read_feature_file(folder.files["P3-0"])
    assert pt.coords is None and np.array_equal(pt.features, feats[:3])
    assert scan_feature_files(folder).rows == {"P1-0": 4, "P3-0": 3}
    import pickle
    (root / "pt_files" / "P4-0.pt").write_bytes(pickle.dumps({"not": "a tensor"}))
    report = scan_feature_files(detect_feature_folder(root))
    assert "P4-0" in report.problems and "weights_only" in report.problems["P4-0"]


def test_coords_attrs_trident_and_clam_legacy(tmp_path):
    no_size0 = {k: v for k, v in TRIDENT_COORDS_ATTRS.items() if k != "patch_size_level0"}
    path = tmp_path / "patches" / "S1_patches.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as fh:
        fh.create_dataset("coords", data=np.zeros((3, 2), np.int64)).attrs.update(no_size0)
    coords, attrs = read_coords_file(path)
    assert coords.shape == (3, 2) and attrs["patch_size_level0"] == 256 * 40 // 20
    clam = tmp_path / "S2.h5"
    with h5py.File(clam, "w") as fh:  # CLAM create_patches_fp: patch_level 1 of a 4x pyramid level
        fh.create_dataset("coords", data=np.zeros((2, 2), np.int64)).attrs.update(
            {"patch_size": 256, "patch_level": 1, "downsample": np.array([4.0, 4.0]),
             "downsampled_level_dim": np.array([1000, 500]), "level_dim": np.array([1000, 500]),
             "name": "S2", "save_path": "/x/patches"})
    _, attrs = read_coords_file(clam)
    assert attrs["patch_size_level0"] == 1024 and attrs["level"] == 1
    assert level0_magnification(0.25) == 40 and level0_magnification(0.5) == 20
    assert level0_magnification(None, "20") == 20 and level0_magnification(float("nan"), None) is None


def test_scan_names_bad_slides(tmp_path):
    d = tmp_path / "features_x"
    trident_features(d / "A-0.h5", 4, 8)
    trident_features(d / "B-0.h5", 4, 8)
    trident_features(d / "C-0.h5", 4, 5)  # another encoder's dim
    with h5py.File(d / "D-0.h5", "w") as fh:  # coords and features lengths differ
        fh.create_dataset("features", data=np.zeros((3, 8), np.float32))
        fh.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    report = scan_feature_files(detect_feature_folder(d))
    assert report.dim == 8 and sorted(report.rows) == ["A-0", "B-0"]
    assert "feature dim 5" in report.problems["C-0"] and "3 feature rows but 2 coords" in report.problems["D-0"]
    forced = scan_feature_files(detect_feature_folder(d), expected_dim=5)
    assert sorted(forced.rows) == ["C-0"] and "model's input dim" in forced.problems["A-0"]


def test_ours_read_by_a_trident_reader(tmp_path):
    path = tmp_path / "features_resnet18" / "P1-0.h5"
    feats = np.ones((3, 4), np.float32)
    write_trident_features(path, feats, np.array([[0, 0], [256, 0], [0, 256]]), TRIDENT_COORDS_ATTRS,
                           encoder="resnet18")
    features, fattrs, coords, cattrs = read_trident(path)
    assert features.dtype == np.float32 and features.shape == (3, 4) and coords.shape == (3, 2)
    assert fattrs["name"] == "P1-0" and fattrs["encoder"] == "resnet18" and fattrs["savetodir"] == str(path.parent)
    assert {k: cattrs[k] for k in TRIDENT_COORDS_ATTRS} == TRIDENT_COORDS_ATTRS
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
