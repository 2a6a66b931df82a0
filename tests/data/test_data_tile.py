import shutil
import threading

import h5py
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from zoo.data import patches, tile
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
            pixels = patches.read_patches(s, coords, 64, 0)
            corner = patches.read_patches(s, np.array([[0, 0]]), 64, 0)
        assert (pixels.reshape(len(pixels), -1).mean(1) < 235).all(), "a kept patch is background"
        assert corner.mean() > 225 and not any((c == [0, 0]).all() for c in coords)
    assert covered / total > 0.85


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_read_patches_and_streaming_agree(tiny_cohort, threads):
    path = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    coords, _ = _coords(tiny_cohort, path.stem)
    with openslide.OpenSlide(str(path)) as s:
        direct = patches.read_patches(s, coords, 64, 0)
        ref = np.asarray(s.read_region(tuple(int(v) for v in coords[0]), 0, (64, 64)).convert("RGB"))
    assert direct.dtype == np.uint8 and direct.shape == (len(coords), 3, 64, 64)
    np.testing.assert_array_equal(direct[0].transpose(1, 2, 0), ref)
    batches = list(patches.iter_patch_batches(path, coords, 64, 0, batch_size=3, threads=threads))
    assert all(len(c) <= 3 for c, _ in batches) and len(batches) == -(-len(coords) // 3)
    np.testing.assert_array_equal(np.concatenate([p for _, p in batches]), direct)
    np.testing.assert_array_equal(np.concatenate([c for c, _ in batches]), coords)


def test_pixels_outside_the_slide_read_white(tmp_path):
    path = write_svs(tmp_path / "s.svs", 300, 300, _red)
    with openslide.OpenSlide(str(path)) as s:
        patch = patches.read_patches(s, np.array([[268, 0]]), 64, 0)[0]  # 32 px inside, 32 px past the right edge
    assert (patch[:, :, 32:] == 255).all()
    assert (patch[0, :, :32] > 200).all() and (patch[1:, :, :32] < 60).all()


def test_reader_threads_stop_cleanly_when_the_consumer_stops(tiny_cohort):
    path = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    coords, _ = _coords(tiny_cohort, path.stem)
    batches = patches.iter_patch_batches(path, coords, 64, 0, batch_size=1, threads=2)
    first_coords, first = next(batches)
    batches.close()  # the reads queued ahead are dropped and the handles closed; no thread is left behind
    assert first.shape == (1, 3, 64, 64) and (first_coords == coords[:1]).all()
    assert not [t for t in threading.enumerate() if t.name.startswith("patch-reader")]


@pytest.mark.parametrize("threads", [0, 2])
def test_a_corrupt_tile_fails_naming_the_slide_after_the_good_batches(tmp_path, threads):
    path = write_svs(tmp_path / "corrupt.svs", 512, 512, _red)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]  # the last level-0 tile
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * count)
    coords = np.array([[0, 0], [256, 0], [0, 256], [256, 256]])
    batches = patches.iter_patch_batches(path, coords, 256, 0, batch_size=1, threads=threads)
    good = [next(batches) for _ in range(3)]
    assert [tuple(c[0]) for c, _ in good] == [(0, 0), (256, 0), (0, 256)]
    assert all((p[:, 0] > 200).all() for _, p in good)
    with pytest.raises(tile.TilingError, match=r"corrupt\.svs: cannot read the 1 patches from level-0 \(256, 256\)"):
        next(batches)


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


def _red(x, y, w, h):
    return np.broadcast_to(np.array([230, 20, 30], np.uint8), (h, w, 3)).copy()


def _noise(x, y, w, h):
    rng = np.random.default_rng([x, y])
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("photometric", ["ycbcr", "rgb"])
def test_direct_jpeg_tiles_match_openslide_across_tiles_and_edges(tmp_path, photometric):
    if photometric == "ycbcr":  # an Aperio SVS as the cohort writes it, 300 px: the last tiles are partly outside
        path = write_svs(tmp_path / "s.svs", 300, 300, _noise)
    else:  # a generic tiled TIFF whose JPEG tiles are RGB
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, _noise(0, 0, 300, 300), tile=(128, 128), photometric="rgb", compression="jpeg")
    rng = np.random.default_rng(0)
    coords = np.concatenate([rng.integers(-40, 300, (60, 2)), [[0, 0], [236, 236], [250, 10], [128, 128]]])
    with openslide.OpenSlide(str(path)) as s:
        expected = patches.read_patches(s, coords, 64, 0)
    source = patches.PatchSource(path, 0)
    try:
        assert source.tiles is not None
        np.testing.assert_array_equal(source.verify(coords, 64), expected)
        assert source.direct, "the tiles decoded directly differ from OpenSlide's pixels"
        np.testing.assert_array_equal(source.read(coords, 64), expected)
    finally:
        source.close()


def test_openslide_reads_the_slide_when_direct_decoding_disagrees(tiny_cohort, monkeypatch):
    from zoo.data import jpeg_tiles
    path = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    coords, _ = _coords(tiny_cohort, path.stem)
    with openslide.OpenSlide(str(path)) as s:
        expected = patches.read_patches(s, coords, 64, 0)
    decode = jpeg_tiles.JpegTiles.read
    monkeypatch.setattr(jpeg_tiles.JpegTiles, "read", lambda self, c, p: decode(self, c, p) ^ 1)  # off by one bit
    batches = list(patches.iter_patch_batches(path, coords, 64, 0, batch_size=4, threads=2))
    np.testing.assert_array_equal(np.concatenate([p for _, p in batches]), expected)


def test_levels_above_zero_and_other_compressions_read_through_openslide(tmp_path):
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, _noise(0, 0, 256, 256), tile=(128, 128), photometric="rgb", compression="zlib")
    assert patches.PatchSource(path, 0).tiles is None
    svs = write_svs(tmp_path / "s.svs", 2048, 2048, _noise)
    with openslide.OpenSlide(str(svs)) as s:
        assert s.level_count > 1
        expected = patches.read_patches(s, np.array([[0, 0], [512, 512]]), 64, 1)
    assert patches.PatchSource(svs, 1).tiles is None
    got = next(patches.iter_patch_batches(svs, np.array([[0, 0], [512, 512]]), 64, 1, batch_size=2))[1]
    np.testing.assert_array_equal(got, expected)


@pytest.fixture
def direct_small_thumbnails(monkeypatch):
    """These slides' thumbnail levels are below the size where decoding directly pays off: decode them anyway."""
    monkeypatch.setattr(tile, "DIRECT_THUMBNAIL_MIN_PX", 0)


def _thumbnail_slides(tiny_cohort, tmp_path):
    generic = tmp_path / "g.tif"
    tifffile.imwrite(generic, _noise(0, 0, 700, 500), tile=(128, 128), photometric="rgb", compression="jpeg")
    return {"cohort": sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0],  # pyramidal: a level above 0 is shrunk
            "svs_partial_tiles": write_svs(tmp_path / "s.svs", 2100, 1500, _noise),
            "generic_tiff": generic}


@pytest.mark.parametrize("kind", ["cohort", "svs_partial_tiles", "generic_tiff"])
def test_thumbnail_decoded_directly_is_openslides(tiny_cohort, tmp_path, monkeypatch, kind, direct_small_thumbnails):
    path = _thumbnail_slides(tiny_cohort, tmp_path)[kind]
    with openslide.OpenSlide(str(path)) as s:
        expected = np.asarray(s.get_thumbnail((300, 300)).convert("RGB"))
        monkeypatch.setattr(openslide.OpenSlide, "get_thumbnail", lambda *a: pytest.fail("read through OpenSlide"))
        np.testing.assert_array_equal(tile.read_thumbnail(s, path, 300), expected)


def test_thumbnail_falls_back_to_openslide_when_the_decode_disagrees(tiny_cohort, tmp_path, monkeypatch,
                                                                     direct_small_thumbnails):
    from zoo.data import jpeg_tiles
    path = _thumbnail_slides(tiny_cohort, tmp_path)["svs_partial_tiles"]
    region = jpeg_tiles.JpegTiles.region

    def off_by_one_inside(self, x, y, w, h):  # the corner window still matches: the centre one must catch it
        pixels = region(self, x, y, w, h)
        pixels[h // 2, w // 2] ^= 1
        return pixels

    monkeypatch.setattr(jpeg_tiles.JpegTiles, "region", off_by_one_inside)
    with openslide.OpenSlide(str(path)) as s:
        expected = np.asarray(s.get_thumbnail((300, 300)).convert("RGB"))
        calls, get_thumbnail = [], openslide.OpenSlide.get_thumbnail
        monkeypatch.setattr(openslide.OpenSlide, "get_thumbnail", lambda *a: calls.append(a) or get_thumbnail(*a))
        np.testing.assert_array_equal(tile.read_thumbnail(s, path, 300), expected)
    assert len(calls) == 1, "the disagreeing decode was used"


def test_a_moved_cohort_reads_its_slides_from_its_own_wsi_raw(tiny_cohort, tmp_path):
    """Tiling files record absolute slide paths; a cohort folder moved or copied elsewhere must still work."""
    slide = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))[0]
    moved = tmp_path / "moved_cohort"
    (moved / "wsi_raw").mkdir(parents=True)
    shutil.copy2(slide, moved / "wsi_raw" / slide.name)
    source = tiling_dir(tiny_cohort, 64, 0, 0.5) / f"{slide.stem}.h5"
    target = tiling_dir(moved, 64, 0, 0.5) / source.name
    target.parent.mkdir(parents=True)
    shutil.copy2(source, target)
    with h5py.File(target, "a") as f:  # as if the original folder were gone
        f.attrs["slide_path"] = str(tmp_path / "gone" / "wsi_raw" / slide.name)
    coords, attrs = tile.load_coords(target)
    assert attrs["slide_path"] == str(moved / "wsi_raw" / slide.name)
    np.testing.assert_array_equal(coords, tile.load_coords(source)[0])
    # Outside the cohort layout nothing is guessed: the recorded path comes back (and fails where it is opened).
    loose = tmp_path / "loose.h5"
    shutil.copy2(target, loose)
    assert tile.load_coords(loose)[1]["slide_path"] == str(tmp_path / "gone" / "wsi_raw" / slide.name)
