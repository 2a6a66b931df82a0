import gzip

import nibabel as nib
import numpy as np
import pytest

from zoo.data import mri


def _phantom(path, shape=(80, 80, 20), spacing=(0.7, 0.7, 3.0), origin=(-20.0, 5.0, -30.0), blob_world=None):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    data = np.zeros(shape, np.float32)
    data[10:70, 10:70, 3:17] = 100.0  # body
    if blob_world is not None:
        ijk = np.round(np.linalg.solve(affine, [*blob_world, 1.0])[:3]).astype(int)
        data[ijk[0] - 2 : ijk[0] + 3, ijk[1] - 2 : ijk[1] + 3, ijk[2] - 1 : ijk[2] + 2] = 400.0
    data += np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_resampled_spacing_affine_and_anatomy_position(tmp_path):
    blob = np.array([8.0, 30.0, 0.0])
    src = _phantom(tmp_path / "p" / "T1.nii.gz", blob_world=blob)
    img = mri.preprocess_volume(src, (1.0, 1.0, 3.0), (48, 48, 16))
    assert img.shape == (48, 48, 16) and img.get_data_dtype() == np.float32
    assert np.allclose(img.header.get_zooms(), (1.0, 1.0, 3.0))
    data = img.get_fdata()
    peak = np.array(np.unravel_index(np.argmax(data), data.shape))
    world = (img.affine @ [*peak, 1.0])[:3]
    assert np.allclose(world, blob, atol=[1.6, 1.6, 3.1]), world
    # z-scored within the foreground: mean 0 and std 1 over the body mask of the resampled volume, which the crop keeps
    volume, _ = mri.resample(*mri.load_volume(src), (1.0, 1.0, 3.0))
    mask = mri.foreground_mask(volume)
    body = mri.crop_or_pad_3d(mask, (48, 48, 16), mri.roi_start(mask, (48, 48, 16)), fill=False)
    assert body.sum() == mask.sum() and 0.2 < body.mean() < 0.9
    assert abs(data[body].mean()) < 1e-3 and abs(data[body].std() - 1) < 1e-3


def test_center_crop_and_pad():
    v = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)
    out = mri.center_crop_3d(v, (2, 8, 2), fill=-1)
    assert out.shape == (2, 8, 2)
    np.testing.assert_array_equal(out[:, 1:7], v[1:3])
    assert (out[:, 0] == -1).all() and (out[:, 7] == -1).all()


def test_bad_volumes_fail_with_file_names_and_others_continue(tmp_path):
    raw = tmp_path / "mri_raw"
    for pid in ("good", "nan", "const", "fourd", "trunc", "not"):
        _phantom(raw / pid / "T1.nii.gz")
        _phantom(raw / pid / "T2.nii.gz")
    (raw / "noT2" / "T1.nii.gz").parent.mkdir()
    _phantom(raw / "noT2" / "T1.nii.gz")
    a = np.diag([0.7, 0.7, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.full((20, 20, 5), np.nan, np.float32), a), raw / "nan" / "T1.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((20, 20, 5), np.float32), a), raw / "const" / "T1.nii.gz")
    nib.save(nib.Nifti1Image(np.random.rand(20, 20, 5, 3).astype(np.float32), a), raw / "fourd" / "T1.nii.gz")
    blob = (raw / "trunc" / "T1.nii.gz").read_bytes()
    (raw / "trunc" / "T1.nii.gz").write_bytes(blob[: len(blob) // 2])
    (raw / "not" / "T1.nii.gz").write_bytes(gzip.compress(b"not a nifti"))

    results = mri.preprocess_dir(raw, tmp_path / "out", (1, 1, 3), (32, 32, 8), workers=2, progress=False)
    failed = {(r.patient_id, r.sequence): r.message for r in results if r.status == "failed"}
    assert "NaN" in failed[("nan", "T1")] and "nan/T1.nii.gz" in failed[("nan", "T1")]
    assert "constant" in failed[("const", "T1")]
    assert "3D" in failed[("fourd", "T1")]
    assert "truncated" in failed[("trunc", "T1")] and "trunc/T1.nii.gz" in failed[("trunc", "T1")]
    assert "unreadable" in failed[("not", "T1")]
    assert "missing T2" in failed[("noT2", "T2")]
    assert len(failed) == 6
    processed = {(r.patient_id, r.sequence) for r in results if r.status == "processed"}
    assert {("good", "T1"), ("good", "T2"), ("noT2", "T1"), ("trunc", "T2")} <= processed
    again = mri.preprocess_dir(raw, tmp_path / "out", (1, 1, 3), (32, 32, 8), workers=1, progress=False)
    assert {(r.patient_id, r.sequence) for r in again if r.status == "skipped"} >= processed
    with pytest.raises(mri.MRIError, match="const"):
        mri.preprocess_volume(raw / "const" / "T1.nii.gz")


def test_cohort_processed_mri(tiny_cohort):
    outs = sorted((tiny_cohort / "mri_processed").glob("*_T1.nii.gz"))
    assert outs
    img = nib.load(outs[0])
    assert img.shape == (64, 64, 32) and np.allclose(img.header.get_zooms(), (1, 1, 3))
    raw = nib.load(tiny_cohort / "mri_raw" / outs[0].name.replace("_T1.nii.gz", "") / "T1.nii.gz")
    # The crop keeps world coordinates: the processed volume's centre lies inside the raw field of view.
    centre = (img.affine @ [32, 32, 16, 1])[:3]
    ijk = np.linalg.solve(raw.affine, [*centre, 1])[:3]
    assert np.all(ijk > -1) and np.all(ijk < np.array(raw.shape) + 1)
