"""`python -m triton_repo.client predict --features FILE.h5` against the real server: one cohort slide's patch
features, computed by the served `<entry>_patch_encoder` and written as a TRIDENT and as a CLAM file, predict the
same probabilities and patch attention as `predict --slide` on that slide (the same coords, in the same order)."""
from __future__ import annotations

import json

import h5py
import numpy as np

from tests.triton.conftest import ENTRY, TOL
from triton_repo import client as cli
from triton_repo.client import SlideClient
from zoo.data.feature_files import read_feature_file, write_trident_features
from zoo.data.tile import load_coords


def _predict(capsys, *args) -> dict:
    capsys.readouterr()
    assert cli.main(["predict", *args, "--top-k", "100000"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _attention(result: dict, coords: np.ndarray) -> np.ndarray:
    """The patches' attention in `coords` order (every patch is in the top list), checking the slide id."""
    top = result["top_patches"]
    assert result["num_patches"] == len(top) == len(coords)
    index = {(p["x"], p["y"]): p["attention"] for p in top}
    assert len(index) == len(top)
    return np.array([index[(int(x), int(y))] for x, y in coords])


def test_predict_features_equals_predict_slide(server, repository, tiny_cohort, tmp_path, capsys):
    slide = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    tiles = tmp_path / "tiles"
    with SlideClient(server.grpc_url, ENTRY, repository, chunk_size=16, tiling_dir=tiles) as client:
        bag, = client.tile_slides([slide])
        features, coords, ids = client.encode_slides([bag])
    assert ids == (slide.stem,) and len(features) > 1
    xy = coords[:, 1:]
    _, tiling_attrs = load_coords(next(tiles.rglob(f"{slide.stem}.h5")))
    attrs = {k: v for k, v in tiling_attrs.items() if np.isscalar(v) or isinstance(v, str)}

    trident = write_trident_features(tmp_path / "trident" / f"features_{ENTRY}" / f"{slide.stem}.h5", features, xy,
                                     attrs, encoder=f"{ENTRY}_patch_encoder")
    clam = tmp_path / "clam" / "h5_files" / f"{slide.stem}.h5"
    clam.parent.mkdir(parents=True)
    with h5py.File(clam, "w") as fh:  # CLAM's h5_files: float32 features, int32 coords, no attrs
        fh.create_dataset("features", data=features.astype(np.float32))
        fh.create_dataset("coords", data=xy.astype(np.int32))
    for path in (trident, clam):
        stored = read_feature_file(path)
        np.testing.assert_array_equal(stored.coords, xy)
        np.testing.assert_array_equal(stored.features, features)

    common = ["--url", server.grpc_url, "--repository", str(repository), "--model", ENTRY, "--chunk-size", "16",
              "--tiling-dir", str(tiles)]
    by_slide = _predict(capsys, "--slide", str(slide), *common)
    expected = _attention(by_slide, xy)
    assert by_slide["presence"]["pathology"] and not by_slide["presence"]["mri"]
    for path in (trident, clam):
        by_features = _predict(capsys, "--features", str(path), *common)
        assert by_features["presence"] == by_slide["presence"], path
        assert {p["slide_id"] for p in by_features["top_patches"]} == {slide.stem}, path
        np.testing.assert_allclose(list(by_features["probabilities"].values()),
                                   list(by_slide["probabilities"].values()), atol=TOL, err_msg=str(path))
        np.testing.assert_allclose(list(by_features["fusion_attention"].values()),
                                   list(by_slide["fusion_attention"].values()), atol=TOL, err_msg=str(path))
        np.testing.assert_allclose(_attention(by_features, xy), expected, atol=TOL, err_msg=str(path))
    assert expected.std() > 0, "patch attention is uniform: the comparison would not see a shuffled order"
