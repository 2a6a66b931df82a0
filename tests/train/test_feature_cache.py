"""The frozen-encoder feature cache: computed once, reused, recomputed when any input changes, served to training."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from zoo.models.patch_encoders import PatchEncoder
from zoo.registry import get_entry
from zoo.training.feature_cache import ensure_features, load_features
from zoo.training.pipeline import cohort_tiling_dir, run_training


@pytest.fixture()
def tiling(easy_cohort, tmp_path):
    """A private copy of two slides' tilings (so this test may edit them) and the tiny recipe's encoder."""
    cfg = get_entry("attention").config("tiny", overrides=[("data.data_dir", str(easy_cohort))])
    source = cohort_tiling_dir(cfg)
    target = tmp_path / "wsi_patches" / source.name
    target.mkdir(parents=True)
    slides = sorted(p.name for p in source.glob("*.h5"))[:2]
    for name in slides:
        (target / name).write_bytes((source / name).read_bytes())
    torch.manual_seed(0)
    encoder = PatchEncoder("cnn_tiny", pretrained=False, freeze=True, input_size=32)
    return tmp_path, target, [s[:-3] for s in slides], encoder


def test_cache_is_computed_once_then_reused(tiling):
    data_dir, tiles, slides, encoder = tiling
    first = ensure_features(data_dir, encoder, tiling_dir=tiles, progress=False)
    assert sorted(first.computed) == slides and not first.reused
    feats, coords = load_features(first.directory / f"{slides[0]}.h5")
    with h5py.File(tiles / f"{slides[0]}.h5") as fh:
        assert np.array_equal(coords, fh["coords"][()])
    assert feats.shape == (len(coords), encoder.out_dim) and np.isfinite(feats).all()
    second = ensure_features(data_dir, encoder, tiling_dir=tiles, progress=False)
    assert sorted(second.reused) == slides and not second.computed
    assert not [p for p in first.directory.iterdir() if p.suffix != ".h5"]  # no temp files left


def test_changed_tiling_or_weights_invalidate_the_cache(tiling):
    data_dir, tiles, slides, encoder = tiling
    first = ensure_features(data_dir, encoder, tiling_dir=tiles, progress=False)
    with h5py.File(tiles / f"{slides[0]}.h5", "a") as fh:  # re-tile: drop the last patch
        coords = fh["coords"][()][:-1]
        del fh["coords"]
        fh["coords"] = coords
    again = ensure_features(data_dir, encoder, tiling_dir=tiles, progress=False)
    assert again.computed == [slides[0]] and again.reused == [slides[1]]
    assert load_features(again.directory / f"{slides[0]}.h5")[0].shape[0] == len(coords)
    with torch.no_grad():
        next(encoder.parameters()).add_(0.1)  # different weights -> a different cache key, nothing reused
    changed = ensure_features(data_dir, encoder, tiling_dir=tiles, progress=False)
    assert changed.directory != first.directory and sorted(changed.computed) == slides


def test_a_truncated_cache_file_is_recomputed_and_bad_slides_do_not_lose_others(tiling):
    data_dir, tiles, slides, encoder = tiling
    report = ensure_features(data_dir, encoder, tiling_dir=tiles, progress=False)
    target = report.directory / f"{slides[0]}.h5"
    target.write_bytes(target.read_bytes()[:200])  # as if a non-atomic writer had been killed
    (tiles / "broken-1.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="broken-1"):
        ensure_features(data_dir, encoder, tiling_dir=tiles, progress=False)
    assert load_features(target)[0].shape[1] == encoder.out_dim  # repaired despite the other failure
    os.remove(tiles / "broken-1.h5")


def test_training_with_a_frozen_encoder_serves_cached_features(easy_cohort, tmp_path):
    overrides = ["training.epochs=1", "model.modalities.pathology.freeze=true", "training.feature_cache=true"]
    seen = []
    from zoo.training import trainer as trainer_mod

    original = trainer_mod.model_inputs

    def spy(batch):
        seen.append(sorted(batch))
        return original(batch)

    trainer_mod.model_inputs = spy
    try:
        run_training("pathology_only", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "a",
                     overrides=overrides, progress=False, log=lambda _m: None)
    finally:
        trainer_mod.model_inputs = original
    assert seen and all("pathology_features" in keys and "pathology" not in keys for keys in seen)
    cache_dirs = list((easy_cohort / "features").iterdir())
    stamps = {p: p.stat().st_mtime_ns for d in cache_dirs for p in d.glob("*.h5")}
    logs = []
    run_training("attention-path_clin", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "b",
                 overrides=overrides, progress=False, log=logs.append)
    assert any(" 0 slide(s) computed" in line for line in logs), logs  # another entry reuses the same cache
    assert {p: p.stat().st_mtime_ns for d in cache_dirs for p in d.glob("*.h5")} == stamps


def test_mil_input_standardization_is_fitted_on_the_train_split_only(easy_cohort, tmp_path):
    from zoo.checkpoint import load_checkpoint
    from zoo.data import BreastCancerMultiModalDataset
    from zoo.training.feature_cache import feature_statistics

    overrides = ["training.epochs=1", "model.modalities.pathology.freeze=true", "training.feature_cache=true"]
    run_training("pathology_only", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "run",
                 overrides=overrides, progress=False, log=lambda _m: None)
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    cfg = get_entry("pathology_only").config("tiny", overrides=[*overrides, ("data.data_dir", str(easy_cohort))])
    feature_dir = next((easy_cohort / "features").iterdir())
    splits = {s: BreastCancerMultiModalDataset.from_config(cfg, s, feature_dir=feature_dir) for s in ("train", "test")}
    train_mean, train_std, _ = feature_statistics(splits["train"].feature_paths())
    all_mean, _, _ = feature_statistics([*splits["train"].feature_paths(), *splits["test"].feature_paths()])
    np.testing.assert_allclose(state["state_dict"]["mil.input_mean"].numpy(), train_mean, rtol=1e-6)
    np.testing.assert_allclose(state["state_dict"]["mil.input_std"].numpy(), np.maximum(train_std, 1e-6), rtol=1e-6)
    assert not np.allclose(train_mean, all_mean)  # the test split's patches did not take part
    assert state["preprocessing"]["feature_standardization"]["fitted_on"] == "train"

    # The attention views of a frozen-encoder checkpoint read the feature cache, never the slides' patches.
    import zoo.data.dataset as dataset_mod
    from zoo.analysis.viz import main as viz_main

    def no_slide_reads(*_args, **_kwargs):
        raise AssertionError("viz read patches from a slide although the features are cached")

    original, dataset_mod.PatchSource = dataset_mod.PatchSource, no_slide_reads
    try:
        code = viz_main(["attention-score", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "test",
                         "--data-dir", str(easy_cohort), "--output-dir", str(tmp_path / "figures")])
    finally:
        dataset_mod.PatchSource = original
    assert code == 0
    score = json.loads((tmp_path / "attention_score_test.json").read_text())
    assert score["num_slides"] > 0

    run_training("pathology_only", recipe="tiny", data_dir=easy_cohort, output_dir=tmp_path / "off",
                 overrides=[*overrides, "training.feature_standardization=false"], progress=False, log=lambda _m: None)
    off = load_checkpoint(tmp_path / "off" / "best.pt")["state_dict"]
    assert (off["mil.input_mean"] == 0).all() and (off["mil.input_std"] == 1).all()


def test_progress_counts_patches_as_well_as_slides(tiling, monkeypatch, capsys):
    from zoo.data.tile import load_coords
    from zoo.training import feature_cache

    data_dir, tiles, slides, encoder = tiling
    coords, attrs = load_coords(tiles / f"{slides[0]}.h5")
    counted = []
    feats = feature_cache.encode_slide(encoder, coords, attrs, torch.device("cpu"), on_patches=counted.append)
    assert sum(counted) == len(coords) == len(feats) and len(counted) >= 1
    bars = []

    def recorded(enabled):
        bars.append(real_bar(enabled))
        return bars[-1]

    real_bar = feature_cache.patch_bar
    monkeypatch.setattr(feature_cache, "patch_bar", recorded)
    ensure_features(data_dir, encoder, tiling_dir=tiles, progress=True)
    total = sum(len(load_coords(tiles / f"{s}.h5")[0]) for s in slides)
    assert len(bars) == 1 and bars[0].n == total  # every patch counted once
    assert "feature cache" in capsys.readouterr().err
