import numpy as np
import pytest

from zoo.data.augment import MacenkoNormalizer, MRIAugment, PathologyAugment, build_augmentation
from zoo.data.synthetic.he_render import SlideRenderer, StainStyle, TumourStyle, make_layout


def _patch(stain_seed):
    layout_rng = np.random.default_rng(0)
    layout = make_layout(layout_rng, 512, 512)
    layout.tissue[:] = 1.0
    stain = StainStyle.sample(np.random.default_rng(stain_seed))
    return SlideRenderer(layout, TumourStyle.from_latent(np.zeros(3)), stain, (0,)).render(128, 128, 128, 128)


def test_macenko_reduces_stain_differences():
    ref, other = _patch(1), _patch(2)
    norm = MacenkoNormalizer().fit(ref)
    before = np.abs(other.astype(float).mean((0, 1)) - ref.astype(float).mean((0, 1))).sum()
    after = np.abs(norm(other).astype(float).mean((0, 1)) - norm(ref).astype(float).mean((0, 1))).sum()
    assert after < 0.5 * before
    chw = norm(other.transpose(2, 0, 1))
    assert chw.shape == (3, 128, 128) and chw.dtype == np.uint8
    blank = np.full((32, 32, 3), 250, np.uint8)
    assert norm(blank) is blank
    with pytest.raises(ValueError, match="too little tissue"):
        MacenkoNormalizer().fit(blank)


def test_geometric_augment_keeps_pixels_and_is_seeded():
    bag = np.random.default_rng(0).integers(0, 255, (3, 3, 16, 16), dtype=np.uint8)
    aug = PathologyAugment(random_flip=True, random_rotation=90, color_jitter=0.0)
    out = aug(bag, np.random.default_rng(5))
    assert out.shape == bag.shape and out.dtype == np.uint8
    for a, b in zip(out, bag):
        assert np.array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
    np.testing.assert_array_equal(out, aug(bag, np.random.default_rng(5)))
    moved = [any(not np.array_equal(a, b) for a, b in zip(aug(bag, np.random.default_rng(s)), bag)) for s in range(8)]
    assert any(moved)
    jitter = PathologyAugment(False, 0, 0.2)(bag, np.random.default_rng(1))
    assert not np.array_equal(jitter, bag)


def test_mri_augment_and_config():
    vol = np.zeros((1, 8, 8, 4), np.float32)
    vol[0, 0, 0, 0] = 5
    np.testing.assert_array_equal(MRIAugment(False, 0.0)(vol, np.random.default_rng(0)), vol)
    corners = set()
    for seed in range(16):
        out = MRIAugment(random_flip=True, random_noise=0.01)(vol, np.random.default_rng(seed))
        assert out.shape == vol.shape and out.dtype == np.float32
        peak = np.unravel_index(out.argmax(), out.shape)
        assert peak[3] == 0 and peak[1] in (0, 7) and peak[2] in (0, 7)  # flipped in-plane only, never across slices
        corners.add(peak[1:3])
        flipped = np.flip(vol, [axis for axis in (1, 2) if peak[axis] == 7])
        assert 0.008 < (out - flipped).std() < 0.012  # the noise: std 0.01 on top of the flip
    assert corners == {(0, 0), (0, 7), (7, 0), (7, 7)}
    aug = build_augmentation({"pathology": {"random_flip": True, "random_rotation": 90, "color_jitter": True,
                                            "stain_normalization": "macenko"},
                                            "mri": {"random_flip": True, "random_noise": 0.01}})
    assert isinstance(aug.pathology.stain_normalizer, MacenkoNormalizer) and aug.mri.random_noise == 0.01
    with pytest.raises(ValueError, match="stain_normalization"):
        build_augmentation({"pathology": {"stain_normalization": "reinhard2"}})
