import pytest

from zoo.data.prepare import ensure_cohort, tiling_dir


def test_ensure_cohort_is_idempotent(tiny_cohort, capsys):
    tiles = tiling_dir(tiny_cohort, 64, 0, 0.5)
    before = {p: p.stat().st_mtime_ns for p in tiles.glob("*.h5")}
    other = {p: p.stat().st_mtime_ns for p in tiling_dir(tiny_cohort, 256, 0, 0.5).glob("*.h5")}
    assert before and other
    mri_before = {p: p.stat().st_mtime_ns for p in (tiny_cohort / "mri_processed").glob("*.nii.gz")}
    ensure_cohort(tiny_cohort, generate_if_missing=False, patch_size=64, workers=1, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in tiles.glob("*.h5")}
    assert mri_before == {p: p.stat().st_mtime_ns for p in (tiny_cohort / "mri_processed").glob("*.nii.gz")}
    assert "tiled" not in capsys.readouterr().out
    assert other == {p: p.stat().st_mtime_ns for p in tiling_dir(tiny_cohort, 256, 0, 0.5).glob("*.h5")}


def test_missing_cohort_without_generation_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m zoo.data.synthetic"):
        ensure_cohort(tmp_path / "none", generate_if_missing=False)
