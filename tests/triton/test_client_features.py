"""`python -m triton_repo.client predict --features FILE.h5`: the reader path (TRIDENT and CLAM files -> the
[N,D] features and (slide, x, y) coords sent to <entry>_slide), without a server."""
from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from triton_repo.client import ClientError, SlideClient


def _stub(dim):
    return SimpleNamespace(entry="pathology_only", _modality_input=lambda _m: SimpleNamespace(shape=[-1, dim]))


def test_trident_and_clam_files_become_one_bag(tmp_path):
    trident = tmp_path / "features_uni_v1" / "P1-0.h5"
    trident.parent.mkdir()
    with h5py.File(trident, "w") as fh:
        fh.create_dataset("features", data=np.ones((3, 8), np.float32)).attrs["name"] = "P1-0"
        fh.create_dataset("coords", data=np.array([[0, 0], [512, 0], [0, 512]], np.int64)).attrs.update(
            {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40, "target_magnification": 20})
    clam = tmp_path / "h5_files" / "P1-1.h5"
    clam.parent.mkdir()
    with h5py.File(clam, "w") as fh:
        fh.create_dataset("features", data=np.zeros((2, 8), np.float32))
        fh.create_dataset("coords", data=np.array([[1, 2], [3, 4]], np.int32))
    empty = tmp_path / "features_uni_v1" / "P1-2.h5"
    with h5py.File(empty, "w") as fh:
        fh.create_dataset("features", data=np.zeros((0, 8), np.float32))
        fh.create_dataset("coords", data=np.zeros((0, 2), np.int64))
    feats, coords, ids = SlideClient.stored_features(_stub(8), [trident, clam, empty])
    assert feats.shape == (5, 8) and ids == ("P1-0", "P1-1")
    assert coords.tolist() == [[0, 0, 0], [0, 512, 0], [0, 0, 512], [1, 1, 2], [1, 3, 4]]
    with pytest.raises(ClientError, match="pools 16-d"):
        SlideClient.stored_features(_stub(16), [trident])
    with pytest.raises(ClientError, match="h5_files"):
        SlideClient.stored_features(_stub(8), [tmp_path / "x.pt"])
