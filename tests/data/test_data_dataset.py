import h5py
import numpy as np
import pytest
import torch

from zoo import spec
from zoo.data import BreastCancerMultiModalDataset, collate_multimodal
from zoo.data.prepare import tiling_dir

PS = 64


def _ds(root, **kw):
    kw.setdefault("patch_size", PS)
    return BreastCancerMultiModalDataset(root, "train", **kw)


def _all_ids(root):
    import pandas as pd
    return {s: pd.read_csv(root / f"{s}_clinical.csv")["patient_id"].tolist() for s in ("train", "val", "test")}


def _find_split(root, predicate):
    for split, ids in _all_ids(root).items():
        for pid in ids:
            if predicate(pid):
                return split, pid
    raise AssertionError("tiny cohort lacks the case")


def test_item_keys_dtypes_and_collate(tiny_cohort):
    ds = _ds(tiny_cohort, max_patches=8)
    batch = collate_multimodal([ds[i] for i in range(4)])
    assert batch[spec.KEY_PATHOLOGY].dtype == torch.uint8 and batch[spec.KEY_PATHOLOGY].shape[2:] == (3, PS, PS)
    assert batch[spec.KEY_PATHOLOGY_MASK].dtype == torch.bool
    assert batch[spec.KEY_PATHOLOGY_COORDS].dtype == torch.int64 and batch[spec.KEY_PATHOLOGY_COORDS].shape[-1] == 3
    assert batch[spec.KEY_MRI].shape == (4, 1, 64, 64, 32) and batch[spec.KEY_MRI].dtype == torch.float32
    assert batch[spec.KEY_CLINICAL].shape == (4, 12) and batch[spec.KEY_CLINICAL].dtype == torch.float32
    assert batch[spec.KEY_PRESENCE].shape == (4, 3) and batch[spec.KEY_LABEL].dtype == torch.int64
    assert len(batch[spec.KEY_PATIENT_ID]) == 4 and len(batch[spec.KEY_SLIDE_IDS]) == 4
    # Padding: masked rows are zeros; real rows are patches of the named slides.
    mask = batch[spec.KEY_PATHOLOGY_MASK]
    assert (batch[spec.KEY_PATHOLOGY][~mask] == 0).all()
    for row, pid in zip(mask, batch[spec.KEY_PATIENT_ID]):
        assert int(row.sum()) == min(8, ds.num_patches(pid))
    assert np.array_equal(ds.labels, np.array([int(ds[i][spec.KEY_LABEL]) for i in range(len(ds))]))


def test_raw_patches_are_openslides_pixels(tiny_cohort):
    """The dataset decodes level-0 JPEG tiles directly (zoo.data.patches.PatchSource): the same pixels as OpenSlide."""
    import openslide

    from zoo.data import patches
    ds = _ds(tiny_cohort, max_patches=16)
    item = next(ds[i] for i in range(len(ds)) if ds[i][spec.KEY_PATHOLOGY_MASK].any())
    coords, bag = item[spec.KEY_PATHOLOGY_COORDS].numpy(), item[spec.KEY_PATHOLOGY].numpy()
    for index, slide_id in enumerate(item[spec.KEY_SLIDE_IDS]):
        rows = coords[:, 0] == index
        with openslide.OpenSlide(str(tiny_cohort / "wsi_raw" / f"{slide_id}.svs")) as slide:
            np.testing.assert_array_equal(bag[rows], patches.read_patches(slide, coords[rows, 1:], PS, 0))
    assert any(source.direct for source in ds._sources.values())


def test_presence_with_missing_modalities(tiny_cohort):
    split, pid = _find_split(tiny_cohort, lambda p: not (tiny_cohort / "mri_processed" / f"{p}_T1.nii.gz").exists())
    ds = BreastCancerMultiModalDataset(tiny_cohort, split, patch_size=PS)
    item = ds[ds.patient_ids.index(pid)]
    assert item[spec.KEY_PRESENCE].tolist()[1] is False and (item[spec.KEY_MRI] == 0).all()
    split, pid = _find_split(tiny_cohort, lambda p: not list((tiny_cohort / "wsi_raw").glob(f"{p}-*.svs")))
    ds = BreastCancerMultiModalDataset(tiny_cohort, split, patch_size=PS)
    item = ds[ds.patient_ids.index(pid)]
    assert item[spec.KEY_PRESENCE].tolist() == [False, item[spec.KEY_PRESENCE].tolist()[1], True]
    assert not item[spec.KEY_PATHOLOGY_MASK].any() and (item[spec.KEY_PATHOLOGY] == 0).all()
    assert ds.slide_paths(pid) == []


def test_disabled_modalities_are_absent(tiny_cohort):
    item = _ds(tiny_cohort, use_pathology=False, use_clinical=False)[0]
    assert spec.KEY_PATHOLOGY not in item and spec.KEY_CLINICAL not in item
    assert item[spec.KEY_PRESENCE].tolist()[0] is False and item[spec.KEY_PRESENCE].tolist()[2] is False


def test_sampling_is_reproducible_per_seed_and_epoch(tiny_cohort):
    a, b = _ds(tiny_cohort, max_patches=4, training=True), _ds(tiny_cohort, max_patches=4, training=True)
    pid = max(a.patient_ids, key=a.num_patches)
    assert a.num_patches(pid) > 8
    assert np.array_equal(a.sample_patches(pid), b.sample_patches(pid))
    first = a.sample_patches(pid)
    a.set_epoch(1)
    assert not np.array_equal(first, a.sample_patches(pid))
    assert not np.array_equal(first, _ds(tiny_cohort, max_patches=4, training=True, seed=1).sample_patches(pid))
    ev = _ds(tiny_cohort, max_patches=4)
    before = ev.sample_patches(pid)
    ev.set_epoch(5)
    assert np.array_equal(before, ev.sample_patches(pid))  # evaluation ignores the epoch
    full = _ds(tiny_cohort, max_patches=0)
    assert len(full.sample_patches(pid)) == full.num_patches(pid)
    # Served coordinates are tiling coordinates of the named slide.
    item = a[a.patient_ids.index(pid)]
    for slide_index, x, y in item[spec.KEY_PATHOLOGY_COORDS].tolist():
        sid = item[spec.KEY_SLIDE_IDS][slide_index]
        with h5py.File(tiling_dir(tiny_cohort, PS, 0, 0.5) / f"{sid}.h5") as f:
            assert [x, y] in f["coords"][()].tolist()


def test_feature_dir_serves_rows_aligned_with_coords(tiny_cohort, tmp_path):
    tiles = tiling_dir(tiny_cohort, PS, 0, 0.5)
    for h5 in tiles.glob("*.h5"):
        with h5py.File(h5) as f:
            coords = f["coords"][()]
        with h5py.File(tmp_path / h5.name, "w") as f:
            f["features"] = np.column_stack([coords, np.full(len(coords), 7)]).astype(np.float32)
    ds = _ds(tiny_cohort, max_patches=5, feature_dir=tmp_path)
    item = ds[0]
    feats, coords = item[spec.KEY_PATHOLOGY_FEATURES], item[spec.KEY_PATHOLOGY_COORDS]
    mask = item[spec.KEY_PATHOLOGY_MASK]
    assert spec.KEY_PATHOLOGY not in item and feats.dtype == torch.float32 and feats.shape[1] == 3
    assert torch.equal(feats[mask][:, :2].long(), coords[mask][:, 1:])
    corrupt = ds.slide_paths(ds.patient_ids[0])[0].stem
    with h5py.File(tmp_path / f"{corrupt}.h5", "w") as f:
        f["features"] = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match=f"{corrupt}.h5: 1 feature rows"):
        _ds(tiny_cohort, feature_dir=tmp_path)


def test_from_config_and_dataloader(tiny_cohort_config):
    ds = BreastCancerMultiModalDataset.from_config(tiny_cohort_config, "val", training=True)
    assert ds.patch_size == PS and ds.max_patches == 16 and ds.augment is not None
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_multimodal)
    batches = list(loader)
    assert sum(len(b[spec.KEY_PATIENT_ID]) for b in batches) == len(ds)
    assert BreastCancerMultiModalDataset.from_config(tiny_cohort_config, "test").augment is None


def test_missing_tiling_is_a_clear_error(tiny_cohort):
    with pytest.raises(FileNotFoundError, match="no tiling for patch_size=48"):
        _ds(tiny_cohort, patch_size=48)
