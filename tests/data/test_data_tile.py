import shutil

import h5py
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from zoo.data import tile
from zoo.data.prepare import tiling_dir
from zoo.data.synthetic.svs_writer import write_svs


def _coords(tiny_cohort, slide_id, ps=64):
    return tile.load_coords(tiling_dir(tiny_cohort, ps, 0, 0.5) / f"{slide_id}.h5")


def test_tiling_attrs_and_ground_truth_coverage(tiny_cohort):
    slides = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[:8]
    covered, total = 0, 0
    for path in slides:
        coords, attrs = _coords(tiny_cohort, path.stem)
        assert coords.dtype == np.int64 and coords.shape[1] == 2 and len(coords) > 0
        for key in ("slide_path", "slide_id", "width", "height", "mpp", "level", "patch_size", "patch_size_level0",
                    "downsample", "tissue_threshold", "version"):
            assert key in attrs
        assert attrs["mpp"] == 0.5 and attrs["patch_size"] == 64 and attrs["slide_id"] == path.stem
        mask = np.asarray(Image.open(tiny_cohort / "wsi_masks" / f"{path.stem}.png")) > 0
        kept = np.zeros_like(mask)
        for x, y in coords:
            kept[y // 16 : (y + 64) // 16, x // 16 : (x + 64) // 16] = True
        # Interior tumour (away from the patch-grid remainder at the right/bottom edge) is covered by kept patches.
        grid = mask[: (attrs["height"] // 64) * 4, : (attrs["width"] // 64) * 4]
        covered += (grid & kept[: grid.shape[0], : grid.shape[1]]).sum()
        total += grid.sum()
        with openslide.OpenSlide(str(path)) as s:
            patches = tile.read_patches(s, coords, 64, 0)
            corner = tile.read_patches(s, np.array([[0, 0]]), 64, 0)
        assert (patches.reshape(len(patches), -1).mean(1) < 235).all(), "a kept patch is background"
        assert corner.mean() > 225 and not any((c == [0, 0]).all() for c in coords)
    assert covered / total > 0.85


def test_read_patches_and_streaming_agree(tiny_cohort):
    path = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    coords, _ = _coords(tiny_cohort, path.stem)
    with openslide.OpenSlide(str(path)) as s:
        direct = tile.read_patches(s, coords, 64, 0)
        ref = np.asarray(s.read_region(tuple(int(v) for v in coords[0]), 0, (64, 64)).convert("RGB"))
    assert direct.dtype == np.uint8 and direct.shape == (len(coords), 3, 64, 64)
    np.testing.assert_array_equal(direct[0].transpose(1, 2, 0), ref)
    batches = list(tile.iter_patch_batches(path, coords, 64, 0, batch_size=3))
    assert all(len(c) <= 3 for c, _ in batches)
    np.testing.assert_array_equal(np.concatenate([p for _, p in batches]), direct)
    np.testing.assert_array_equal(np.concatenate([c for c, _ in batches]), coords)


def test_idempotent_and_overwrite(tiny_cohort, tmp_path):
    path = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    first = tile.tile_slide(path, tmp_path, 64, 0, 0.5)
    assert first.status == "tiled" and (tmp_path / "qc" / f"{path.stem}.png").is_file()
    assert tile.tile_slide(path, tmp_path, 64, 0, 0.5).status == "skipped"
    assert tile.tile_slide(path, tmp_path, 64, 0, 0.5, overwrite=True).status == "tiled"
    assert tile.tile_slide(path, tmp_path, 32, 0, 0.5).status == "tiled"  # other parameters: redone
    assert not list(tmp_path.glob(".*tmp*"))


def test_without_qc_same_coords_and_no_overlay(tiny_cohort, tmp_path):
    path = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    with_qc = tile.tile_slide(path, tmp_path / "a", 64, 0, 0.5)
    without = tile.tile_slide(path, tmp_path / "b", 64, 0, 0.5, qc=False)
    assert without.status == "tiled" and not (tmp_path / "b" / "qc").exists()
    np.testing.assert_array_equal(tile.load_coords(without.h5_path)[0], tile.load_coords(with_qc.h5_path)[0])


def test_saturation_is_skimage_hsv_bit_for_bit():
    from skimage import color
    levels = np.arange(256)
    red, green = np.meshgrid(levels, levels)
    blue = np.arange(0, 256, 3)  # every (r, g) pair against a third of the blue levels: 2.2 M colours
    rgb = np.stack([np.broadcast_to(red, (len(blue), 256, 256)), np.broadcast_to(green, (len(blue), 256, 256)),
                    np.broadcast_to(blue[:, None, None], (len(blue), 256, 256))], -1).astype(np.uint8)
    expected = color.rgb2hsv(rgb)[..., 1]
    np.testing.assert_array_equal(tile.hsv_saturation(rgb), expected)
    np.testing.assert_allclose(tile.hsv_saturation(rgb[:4] / 255.0), expected[:4], atol=1e-12)  # float input too


def _white(x, y, w, h):
    return np.full((h, w, 3), 245, np.uint8)


def test_bad_inputs_fail_clearly_and_others_survive(tiny_cohort, tmp_path, capsys):
    good = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(good, src / "good.svs")
    (src / "notaslide.svs").write_text("hello")
    data = good.read_bytes()
    (src / "truncated.svs").write_bytes(data[: len(data) // 3])
    write_svs(src / "blank.svs", 300, 300, _white)
    write_svs(src / "tiny.svs", 40, 40, _white)
    # A generic tiled TIFF: OpenSlide reads it, but it has no microns-per-pixel.
    rgb = np.asarray(openslide.OpenSlide(str(good)).read_region((0, 0), 0, (256, 256)).convert("RGB"))
    tifffile.imwrite(src / "nompp.tif", rgb, tile=(128, 128), photometric="rgb", compression="jpeg")

    out = tmp_path / "out"
    summary = tile.tile_slides(tile.find_slides(src), out, 64, 0, 0.25, workers=2, progress=False)
    by_name = {r.slide_path.name: r for r in summary.results}
    assert by_name["good.svs"].status == "tiled" and (out / "good.h5").is_file()
    assert "not a whole-slide image" in by_name["notaslide.svs"].message
    assert not by_name["truncated.svs"].ok and "truncated.svs" in by_name["truncated.svs"].message
    assert "no tissue" in by_name["blank.svs"].message
    assert "smaller than one patch" in by_name["tiny.svs"].message
    nompp = by_name["nompp.tif"]
    assert nompp.status == "tiled" and any("mpp" in w for w in nompp.warnings)
    with h5py.File(out / "nompp.h5") as f:
        assert np.isnan(f.attrs["mpp"])
    assert len(summary.failed) == 4
    assert tile.main(["--input-dir", str(src), "--output-dir", str(out), "--patch-size", "64",
                      "--tissue-threshold", "0.25", "--workers", "1"]) == 1
    report = capsys.readouterr().out
    assert "4 failed" in report and "blank.svs" in report


def test_load_coords_errors(tmp_path):
    with pytest.raises(tile.TilingError, match="unreadable"):
        (tmp_path / "x.h5").write_text("nope")
        tile.load_coords(tmp_path / "x.h5")
