"""Bad-input cases the area tests did not cover (the full catalogue, with pointers, is docs/reliability.md)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from zoo.data import mri


def _volume():
    rng = np.random.default_rng(0)
    data = np.zeros((60, 50, 16), np.float32)
    data[8:52, 6:44, 2:14] = 100.0
    data[20:25, 30:35, 6:9] = 400.0  # an off-centre lesion: any axis mix-up moves it
    return data + rng.normal(0, 1, data.shape).astype(np.float32)


def _save(tmp_path, name, data, affine):
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.mark.parametrize("layout", ["LPS", "slices_first"])
def test_mri_stored_in_another_orientation_gives_the_same_volume(tmp_path, layout):
    data = _volume()
    ras = np.diag([0.7, 0.8, 3.0, 1.0])
    ras[:3, 3] = (-20.0, 5.0, -30.0)
    if layout == "LPS":  # x and y stored reversed, as DICOM-derived files often are
        other = data[::-1, ::-1].copy()
        affine = ras.copy()
        affine[:2, :2] *= -1
        affine[:2, 3] = ras[:2, 3] + np.diag(ras)[:2] * (np.array(data.shape[:2]) - 1)
    else:  # thick-slice axis stored first
        other = np.transpose(data, (2, 0, 1)).copy()
        affine = np.eye(4)
        affine[:3, :3] = ras[:3, [2, 0, 1]]
        affine[:3, 3] = ras[:3, 3]
    reference = mri.preprocess_volume(_save(tmp_path, "ras", data, ras), (1, 1, 3), (40, 40, 12))
    result = mri.preprocess_volume(_save(tmp_path, layout, other, affine), (1, 1, 3), (40, 40, 12))
    assert nib.aff2axcodes(result.affine) == ("R", "A", "S")
    np.testing.assert_allclose(result.affine, reference.affine, atol=1e-4)
    np.testing.assert_allclose(result.get_fdata(), reference.get_fdata(), atol=1e-3)
