"""Tiling at a target magnification / mpp on real (small) SVS pyramids written by svs_writer: level choice, patch
geometry, the resize, missing resolution metadata, no upsampling, the CLI, and the readers that honour it."""
import h5py
import numpy as np
import openslide
import pandas as pd
import pytest
import torch
from PIL import Image

from zoo.data import patches, tile
from zoo.data.prepare import tiling_dir
from zoo.data.synthetic.svs_writer import write_svs


def _tissue(x, y, w, h):
    """A textured pink square (tissue) on white, a function of level-0 coordinates only."""
    yy, xx = np.mgrid[y : y + h, x : x + w]
    inside = (xx >= 200) & (xx < 1800) & (yy >= 200) & (yy < 1800)
    texture = (40 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.int16)
    rgb = np.empty((h, w, 3), np.int16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200 + texture // 2, 90 + texture, 160 - texture // 2
    rgb[~inside] = 255
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("mag_slides")
    made = {}
    for name, kwargs in {"s20x": dict(mpp=0.5, magnification=20),                 # levels: 1, 4
                         "s40x_2x": dict(mpp=0.25, magnification=40, level_factor=2),  # levels: 1, 2
                         "s40x_4x": dict(mpp=0.25, magnification=40),             # levels: 1, 4
                         "nompp": dict(mpp=None, magnification=None)}.items():
        folder = root / name
        folder.mkdir()
        made[name] = write_svs(folder / f"{name}.svs", 2048, 2048, _tissue, **kwargs)
    return made


def _expected_resized(path, coords, level, read_size, patch_size):
    """OpenSlide's region at `level`, resized to patch_size with PIL LANCZOS (the documented filter)."""
    out = []
    with openslide.OpenSlide(str(path)) as s:
        for x, y in coords:
            region = s.read_region((int(x), int(y)), level, (read_size, read_size)).convert("RGB")
            if read_size != patch_size:
                region = region.resize((patch_size, patch_size), Image.Resampling.LANCZOS)
            out.append(np.asarray(region).transpose(2, 0, 1))
    return np.stack(out)


def test_tiling_dir_names_distinguish_magnification_tilings():
    assert tile.tiling_dir_name(256, 0, 0.5) == "ps256_l0_t0.5"
    assert tile.tiling_dir_name(256, 0, 0.5, target_magnification=20) == "ps256_m20_t0.5"
    assert tile.tiling_dir_name(256, 0, 0.5, target_mpp=0.5) == "ps256_mpp0.5_t0.5"
    assert tiling_dir("/d", 256, 0, 0.5, target_magnification=10).name == "ps256_m10_t0.5"
    with pytest.raises(ValueError, match="not both"):
        tile.tiling_dir_name(256, 0, 0.5, target_magnification=20, target_mpp=0.5)
    assert tile.resolution_options({"target_magnification": 20, "target_mpp": None, "level": 0}) == {
        "target_magnification": 20.0}


def test_20x_slide_at_10x_reads_level0_squares_of_twice_the_patch_resized(slides, tmp_path):
    path = slides["s20x"]
    result = tile.tile_slide(path, tmp_path, 256, target_magnification=10, qc=False)
    assert result.status == "tiled", result.message
    coords, attrs = tile.load_coords(result.h5_path)
    assert attrs["level"] == 0 and attrs["patch_size"] == 256 and attrs["patch_size_level0"] == 512
    assert attrs["read_size"] == 512 and tile.patch_read_size(attrs) == 512
    assert attrs["target_magnification"] == 10 and attrs["level0_magnification"] == 20
    assert attrs["target_mpp"] == 1.0 and attrs["mpp"] == 0.5 and attrs["tiled_by"] == "magnification"
    assert len(coords) > 0 and (coords % 512 == 0).all()  # the grid steps by patch_size_level0
    expected = _expected_resized(path, coords, 0, 512, 256)
    with openslide.OpenSlide(str(path)) as s:
        np.testing.assert_array_equal(patches.read_patches(s, coords, 256, 0, read_size=512), expected)
    for threads in (0, 2):  # streamed by reader threads: the same pixels, never the direct JPEG path
        got = np.concatenate([p for _, p in patches.iter_patch_batches(path, coords, 256, 0, batch_size=2,
                                                                       threads=threads, read_size=512)])
        np.testing.assert_array_equal(got, expected)
    assert patches.PatchSource(path, 0, read_size=512).tiles is None
    assert patches.PatchSource(path, 0).tiles is not None  # a level-0 read without resize may decode directly
    # The same physical patch asked as an mpp: identical coordinates
    by_mpp = tile.tile_slide(path, tmp_path / "mpp", 256, target_mpp=1.0, qc=False)
    np.testing.assert_array_equal(tile.load_coords(by_mpp.h5_path)[0], coords)


def test_40x_slide_at_20x_reads_level1_where_the_pyramid_has_a_2x_level(slides, tmp_path):
    path = slides["s40x_2x"]
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_downsamples[1] == pytest.approx(2.0)
    result = tile.tile_slide(path, tmp_path, 256, target_magnification=20, qc=False)
    assert result.status == "tiled", result.message
    coords, attrs = tile.load_coords(result.h5_path)
    assert attrs["level"] == 1 and attrs["read_size"] == 256 and attrs["patch_size_level0"] == 512
    assert attrs["level0_magnification"] == 40 and attrs["downsample"] == pytest.approx(2.0)
    assert tile.patch_read_size(attrs) is None  # read as it is at level 1: no resize
    got = np.concatenate([p for _, p in patches.iter_patch_batches(path, coords, 256, 1, batch_size=4)])
    np.testing.assert_array_equal(got, _expected_resized(path, coords, 1, 256, 256))
    by_mpp = tile.tile_slide(path, tmp_path / "mpp", 256, target_mpp=0.5, qc=False)
    np.testing.assert_array_equal(tile.load_coords(by_mpp.h5_path)[0], coords)


def test_40x_slide_at_20x_without_a_2x_level_reads_level0_resized(slides, tmp_path):
    path = slides["s40x_4x"]
    result = tile.tile_slide(path, tmp_path, 256, target_magnification=20, qc=False)
    coords, attrs = tile.load_coords(result.h5_path)
    assert attrs["level"] == 0 and attrs["read_size"] == 512 and attrs["patch_size_level0"] == 512
    got = patches.PatchSource(path, attrs["level"], read_size=tile.patch_read_size(attrs)).read(coords[:4], 256)
    np.testing.assert_array_equal(got, _expected_resized(path, coords[:4], 0, 512, 256))
    # 10x on the same slide: target downsample 4 = level 1 exactly
    at10 = tile.load_coords(tile.tile_slide(path, tmp_path / "m10", 128, target_magnification=10, qc=False).h5_path)[1]
    assert (at10["level"], at10["read_size"], at10["patch_size_level0"]) == (1, 128, 512)


def test_a_slide_without_mpp_needs_assume_magnification(slides, tmp_path):
    path = slides["nompp"]
    with openslide.OpenSlide(str(path)) as s:
        assert openslide.PROPERTY_NAME_MPP_X not in s.properties
        assert openslide.PROPERTY_NAME_OBJECTIVE_POWER not in s.properties
    failed = tile.tile_slide(path, tmp_path, 256, target_magnification=10, qc=False)
    assert failed.status == "failed" and "nompp.svs" in failed.message
    assert "--assume-magnification" in failed.message and not (tmp_path / "nompp.h5").exists()
    assumed = tile.tile_slide(path, tmp_path, 256, target_magnification=10, assume_magnification=20, qc=False)
    assert assumed.status == "tiled" and any("assumed 20x" in w for w in assumed.warnings)
    attrs = tile.load_coords(assumed.h5_path)[1]
    assert attrs["mpp"] == 0.5 and attrs["magnification_assumed"] == 1 and attrs["patch_size_level0"] == 512
    # by level, the slide tiles as before (no resolution needed)
    assert tile.tile_slide(path, tmp_path / "by_level", 256, qc=False).status == "tiled"


def test_a_target_above_the_slide_magnification_is_an_error_not_an_upsampling(slides, tmp_path):
    result = tile.tile_slide(slides["s20x"], tmp_path, 256, target_magnification=40, qc=False)
    assert result.status == "failed" and "s20x.svs" in result.message and "never upsampled" in result.message
    assert tile.tile_slide(slides["s20x"], tmp_path, 256, target_mpp=0.25, qc=False).status == "failed"
    assert tile.tile_slide(slides["s20x"], tmp_path, 256, target_magnification=20, qc=False).status == "tiled"


def test_skipped_only_when_the_same_resolution_was_asked(slides, tmp_path):
    path = slides["s20x"]
    assert tile.tile_slide(path, tmp_path, 256, target_magnification=10, qc=False).status == "tiled"
    assert tile.tile_slide(path, tmp_path, 256, target_magnification=10, qc=False).status == "skipped"
    assert tile.tile_slide(path, tmp_path, 256, target_magnification=10, assume_magnification=20,
                           qc=False).status == "tiled"
    assert tile.tile_slide(path, tmp_path, 256, target_magnification=5, qc=False).status == "tiled"
    assert tile.tile_slide(path, tmp_path, 256, 0, qc=False).status == "tiled"  # by level: not the 5x file
    assert tile.tile_slide(path, tmp_path, 256, 0, qc=False).status == "skipped"


def test_cli_flags(slides, tmp_path, capsys):
    src = slides["s40x_2x"].parent
    out = tmp_path / "ps256_m20_t0.5"
    assert tile.main(["--input-dir", str(src), "--output-dir", str(out), "--target-magnification", "20",
                      "--workers", "1"]) == 0
    assert tile.load_coords(out / "s40x_2x.h5")[1]["level"] == 1
    assert tile.main(["--input-dir", str(slides["nompp"].parent), "--output-dir", str(tmp_path / "n"),
                      "--target-mpp", "1", "--workers", "1"]) == 1
    assert "--assume-magnification" in capsys.readouterr().out
    assert tile.main(["--input-dir", str(slides["nompp"].parent), "--output-dir", str(tmp_path / "n"),
                      "--target-mpp", "1", "--assume-magnification", "20", "--workers", "1"]) == 0
    assert tile.main(["--input-dir", str(slides["s20x"].parent), "--output-dir", str(tmp_path / "up"),
                      "--target-magnification", "40", "--workers", "1"]) == 1
    assert "never upsampled" in capsys.readouterr().out
    for bad in (["--level", "1", "--target-magnification", "20"], ["--target-magnification", "20", "--target-mpp",
                                                                    "0.5"], ["--assume-magnification", "20"],
                ["--target-magnification", "0"]):
        with pytest.raises(SystemExit) as exc:
            tile.main(["--input-dir", str(src), "--output-dir", str(tmp_path / "x"), *bad])
        assert exc.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        tile.main(["--help"])
    help_text = capsys.readouterr().out
    assert "--target-magnification" in help_text and "--target-mpp" in help_text
    assert "--assume-magnification" in help_text


def test_dataset_and_feature_cache_read_a_magnification_tiling(slides, tmp_path):
    """The dataset and the feature cache's reader take each slide's level and read size from its coords file."""
    from zoo.data import BreastCancerMultiModalDataset
    from zoo.training import feature_cache

    data_dir = tmp_path / "cohort"
    (data_dir / "wsi_raw").mkdir(parents=True)
    (data_dir / "wsi_raw" / "P001-0.svs").symlink_to(slides["s40x_4x"])
    (data_dir / "wsi_raw" / "P002-0.svs").symlink_to(slides["s40x_2x"])
    row = dict(age=50, tumor_size=2.0, lymph_nodes=0, er_status=1, pr_status=1, her2_status=0, molecular_subtype=0)
    pd.DataFrame([{"patient_id": "P001", **row}, {"patient_id": "P002", **row}]).to_csv(
        data_dir / "train_clinical.csv", index=False)
    out = tiling_dir(data_dir, 64, 0, 0.5, target_magnification=20)
    summary = tile.tile_slides(tile.find_slides(data_dir / "wsi_raw"), out, 64, target_magnification=20,
                               workers=1, progress=False)
    assert not summary.failed, summary.report()
    ds = BreastCancerMultiModalDataset(data_dir, "train", use_mri=False, use_clinical=False, max_patches=3,
                                       patch_size=64, target_magnification=20)
    seen = {}

    def reader(slide_path, coords, patch_size, level, **kwargs):
        seen.update(level=level, **kwargs)
        return feature_cache.default_reader(slide_path, coords, patch_size, level, **kwargs)

    class Encoder(torch.nn.Module):
        out_dim = 3

        def forward(self, x):
            return x.float().mean((2, 3))

    for index, (pid, level, read_size) in enumerate((("P001", 0, 128), ("P002", 1, 64))):
        coords, attrs = tile.load_coords(out / f"{pid}-0.h5")
        assert (attrs["level"], attrs["read_size"]) == (level, read_size)
        item = ds[index]
        xy = item["pathology_coords"][:, 1:].numpy()
        slide = data_dir / "wsi_raw" / f"{pid}-0.svs"
        np.testing.assert_array_equal(item["pathology"].numpy(), _expected_resized(slide, xy, level, read_size, 64))
        seen.clear()
        feats = feature_cache.encode_slide(Encoder(), coords, attrs, "cpu", reader)
        assert feats.shape == (len(coords), 3) and seen["level"] == level
        assert seen.get("read_size") == (read_size if read_size != 64 else None)
    with h5py.File(out / "P001-0.h5") as f:
        assert f.attrs["target_magnification"] == 20


def test_config_keys_select_the_magnification_tiling():
    from zoo.config import ConfigError, base_config, validate_config
    from zoo.training.pipeline import cohort_tiling_dir

    validate_config({"data": {"modalities": {"pathology": {"target_magnification": 20, "target_mpp": None,
                                                           "assume_magnification": 40.0}}}})
    with pytest.raises(ConfigError, match="target_mpp"):
        validate_config({"data": {"modalities": {"pathology": {"target_mpp": "0.5"}}}})
    cfg = base_config()
    assert cohort_tiling_dir(cfg).name == "ps256_l0_t0.5"  # null targets: tiled by level, as before
    cfg["data"]["modalities"]["pathology"]["target_magnification"] = 20
    assert cohort_tiling_dir(cfg).name == "ps256_m20_t0.5"


def test_triton_client_tiles_and_reads_with_the_manifests_magnification(slides, tmp_path):
    from types import SimpleNamespace

    from triton_repo import inputs

    pathology = {"patch_size": 256, "level": 0, "tissue_threshold": 0.5, "target_magnification": 10}
    manifest = SimpleNamespace(preprocessing={"pathology": pathology}, export_dir=tmp_path)
    bag = inputs.slide_bag(slides["s20x"], manifest, batch_size=4, tiling_dir=tmp_path / "cache", reader_threads=0)
    assert "ps256_m10_t0.5" in {p.name for p in (tmp_path / "cache").iterdir()}
    got = np.concatenate(list(bag.batches))
    np.testing.assert_array_equal(got, _expected_resized(slides["s20x"], bag.coords, 0, 512, 256))
