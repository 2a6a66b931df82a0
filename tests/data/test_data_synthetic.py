import json

import nibabel as nib
import numpy as np
import openslide
import pandas as pd
from PIL import Image
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import f1_score
from sklearn.model_selection import cross_val_predict

from zoo import spec
from zoo.data.synthetic import PREVALENCE, QUICKSTART
from zoo.data.synthetic.clinical_table import clinical_row
from zoo.data.synthetic.cohort import DEFAULT_SIGNALS
from zoo.data.synthetic.he_render import SlideRenderer, StainStyle, TumourStyle, make_layout
from zoo.data.synthetic.phenotype import sample_phenotype


def test_slides_open_with_openslide_metadata(tiny_cohort):
    slides = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))
    assert len(slides) >= 24
    for path in slides[:6]:
        with openslide.OpenSlide(str(path)) as s:
            assert s.properties["openslide.vendor"] == "aperio"
            assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.5
            assert s.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
            w, h = s.dimensions
            assert 400 <= w <= 512 and 400 <= h <= 512
            mask = np.asarray(Image.open(tiny_cohort / "wsi_masks" / f"{path.stem}.png"))
            ds = json.loads((tiny_cohort / "wsi_masks" / f"{path.stem}.json").read_text())["downsample"]
            assert mask.shape == (-(-h // ds), -(-w // ds)) and set(np.unique(mask)) <= {0, 255}


def test_tumour_morphology_only_inside_tumour_mask(tiny_cohort):
    """Tumour pixels are nucleus-dense (haematoxylin-dark); background outside tissue is bright and unsaturated."""
    path = max((tiny_cohort / "wsi_raw").glob("*.svs"), key=lambda p: np.asarray(
        Image.open(tiny_cohort / "wsi_masks" / f"{p.stem}.png")).mean())
    mask = np.asarray(Image.open(tiny_cohort / "wsi_masks" / f"{path.stem}.png")) > 0
    with openslide.OpenSlide(str(path)) as s:
        rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB")).astype(float)
    ds = 16
    small = rgb[: mask.shape[0] * ds, : mask.shape[1] * ds]
    small = np.pad(small, ((0, mask.shape[0] * ds - small.shape[0]), (0, mask.shape[1] * ds - small.shape[1]), (0, 0)),
                   mode="edge")
    dark = (small.min(axis=2) < 120).reshape(mask.shape[0], ds, mask.shape[1], ds).mean(axis=(1, 3))
    assert dark[mask].mean() > 3 * dark[~mask].mean()
    corner = rgb[:8, :8]
    assert corner.mean() > 220 and (corner.max(axis=2) - corner.min(axis=2)).mean() < 20


def test_mri_volumes_have_anisotropic_affine(tiny_cohort):
    folders = sorted((tiny_cohort / "mri_raw").iterdir())
    assert folders
    img = nib.load(folders[0] / "T1.nii.gz")
    assert img.shape == (96, 96, 24)
    assert np.allclose(img.header.get_zooms(), (0.7, 0.7, 3.0), atol=1e-5)
    assert np.allclose(np.sqrt((img.affine[:3, :3] ** 2).sum(0)), (0.7, 0.7, 3.0), atol=1e-5)
    assert (folders[0] / "T2.nii.gz").is_file()


def test_clinical_splits_are_disjoint_and_complete(tiny_cohort):
    tables = {s: pd.read_csv(tiny_cohort / f"{s}_clinical.csv") for s in ("train", "val", "test")}
    ids = [set(t[spec.CLINICAL_ID]) for t in tables.values()]
    assert sum(map(len, ids)) == 24 and len(set.union(*ids)) == 24
    for t in tables.values():
        assert {spec.CLINICAL_ID, *spec.CLINICAL_FEATURES, spec.CLINICAL_LABEL} <= set(t.columns)
        assert t[spec.CLINICAL_LABEL].between(0, 3).all()
    manifest = json.loads((tiny_cohort / "cohort.json").read_text())
    assert manifest["complete"] and manifest["counts"]["patients_without_mri"] >= 1


def test_rendering_is_deterministic_and_seamless():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    style = TumourStyle.from_latent(np.array([1.0, 0.5, 0.0]))
    a = SlideRenderer(make_layout(rng_a, 600, 600), style, StainStyle.sample(rng_a), (1, 2, 3))
    b = SlideRenderer(make_layout(rng_b, 600, 600), style, StainStyle.sample(rng_b), (1, 2, 3))
    whole = a.render(0, 0, 512, 512)
    np.testing.assert_array_equal(whole, b.render(0, 0, 512, 512))
    # A window rendered alone equals the same region of a larger window (no tile seams); pixel noise differs,
    # so compare 8x8 block means.
    def blocks(img):
        return img.astype(float).reshape(32, 8, 32, 8, 3).mean(axis=(1, 3))

    part = b.render(256, 256, 256, 256)
    assert np.abs(blocks(part) - blocks(whole[256:, 256:])).mean() < 1.5


def test_svs_rendered_in_worker_processes_is_the_same_file(tmp_path):
    from zoo.data.synthetic.svs_writer import write_svs

    rng = np.random.default_rng(4)
    renderer = SlideRenderer(make_layout(rng, 900, 700), TumourStyle.from_latent(np.zeros(3)), StainStyle.sample(rng),
                             (4,))
    (tmp_path / "serial").mkdir()
    (tmp_path / "pool").mkdir()
    serial = write_svs(tmp_path / "serial" / "s.svs", 900, 700, renderer.render)  # partial tiles at both edges
    pooled = write_svs(tmp_path / "pool" / "s.svs", 900, 700, renderer.render, workers=2)
    assert serial.read_bytes() == pooled.read_bytes()


def test_prevalence_and_modality_complementarity():
    """Latent class structure: prevalence near TCGA-BRCA, each modality alone is imperfect, fusion helps."""
    n = 1200
    phs = [sample_phenotype(0, i, DEFAULT_SIGNALS, 0.0, 0.0) for i in range(n)]
    y = np.array([p.label for p in phs])
    assert np.allclose(np.bincount(y, minlength=4) / n, PREVALENCE, atol=0.04)
    rows = pd.DataFrame([clinical_row(p, 0) for p in phs])
    clin = rows[list(spec.CLINICAL_FEATURES)].to_numpy(float)
    clin = np.concatenate([np.nan_to_num(clin - np.nanmean(clin, 0)), np.isnan(clin)], 1)
    feats = {"pathology": np.stack([p.pathology for p in phs]), "mri": np.stack([p.mri for p in phs]), "clinical": clin}

    def f1(*mods):
        x = np.concatenate([feats[m] for m in mods], 1)
        pred = cross_val_predict(LinearDiscriminantAnalysis(), x, y, cv=3)
        return f1_score(y, pred, average="macro")

    single = {m: f1(m) for m in feats}
    assert all(0.45 < v < 0.8 for v in single.values()), single
    everything = f1("pathology", "mri", "clinical")
    for pair in (("pathology", "mri"), ("pathology", "clinical"), ("mri", "clinical")):
        assert max(single[m] for m in pair) < f1(*pair) < everything


def test_quickstart_preset_shape():
    assert 200 <= QUICKSTART["num_samples"] <= 300 and 1024 <= QUICKSTART["slide_size"] <= 1536
