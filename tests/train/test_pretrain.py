"""Label-free patch-encoder pretraining (zoo.training.pretrain): runs, is cached, is invalidated when an input
changes, never needs labels, and its encoder trains, is recorded in the checkpoint and exports with parity."""
from __future__ import annotations

import dataclasses
import shutil

import h5py
import pytest
import torch

from zoo.checkpoint import load_checkpoint
from zoo.training.pipeline import run_training
from zoo.training.pretrain import (
    WEIGHTS_FILE,
    PretrainRecipe,
    artifact_key,
    ensure_pretrained,
    inputs_record,
)

TILING = "ps64_l0_t0.5"
INPUT_SIZE = 32
TINY = PretrainRecipe(epochs=2, batch_size=32, patches_per_slide=4, max_patches=128, lr=0.003,
                      weight_decay=1e-4, temperature=0.2, min_crop_scale=0.35, projection_dim=16, seed=0)
QUIET = dict(progress=False, log=lambda _m: None)
# one epoch of training on the frozen cnn_ssl encoder, pretrained with TINY, features cached
SSL_TRAINING = ["model.modalities.pathology.backbone=cnn_ssl", f"model.modalities.pathology.input_size={INPUT_SIZE}",
                "model.modalities.pathology.freeze=true", "training.feature_cache=true",
                "data.modalities.pathology.patch_size=64", "training.epochs=1",
                *(f"model.modalities.pathology.pretraining.{k}={v}" for k, v in dataclasses.asdict(TINY).items())]


@pytest.fixture()
def cohort_copy(tiny_cohort, tmp_path):
    """A writable copy of the session's tiny cohort (artifacts are written into the cohort folder)."""
    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, root, ignore=shutil.ignore_patterns("features", "pretrained"))
    return root


def test_pretraining_runs_is_cached_and_learns(cohort_copy):
    first = ensure_pretrained(cohort_copy, cohort_copy / "wsi_patches" / TILING, "cnn_ssl", INPUT_SIZE, TINY, **QUIET)
    assert not first.reused and first.weights.is_file()
    provenance = first.provenance
    assert provenance["labels_used"] is False and provenance["encoder"] == "cnn_ssl"
    assert provenance["tiling"] == TILING and provenance["recipe"] == dataclasses.asdict(TINY)
    assert provenance["num_patches"] == min(TINY.max_patches, 4 * provenance["num_slides"])
    assert len(provenance["loss_history"]) == TINY.epochs
    mtime = first.weights.stat().st_mtime_ns

    again = ensure_pretrained(cohort_copy, cohort_copy / "wsi_patches" / TILING, "cnn_ssl", INPUT_SIZE, TINY,
                              **QUIET)
    assert again.reused and again.directory == first.directory and again.weights.stat().st_mtime_ns == mtime


def test_artifact_key_changes_with_every_input(cohort_copy):
    tiling = cohort_copy / "wsi_patches" / TILING
    base = artifact_key(inputs_record(tiling, "cnn_ssl", INPUT_SIZE, TINY))
    assert artifact_key(inputs_record(tiling, "cnn_ssl", INPUT_SIZE, TINY)) == base
    assert artifact_key(inputs_record(tiling, "cnn_ssl", INPUT_SIZE, dataclasses.replace(TINY, seed=1))) != base
    assert artifact_key(inputs_record(tiling, "cnn_ssl", 48, TINY)) != base
    assert artifact_key(inputs_record(tiling, "cnn_tiny", INPUT_SIZE, TINY)) != base
    h5 = sorted(tiling.glob("*.h5"))[0]
    with h5py.File(h5, "r+") as fh:  # one slide re-tiled with one patch fewer
        coords = fh["coords"][()]
        attrs = dict(fh["coords"].attrs)
        del fh["coords"]
        fh.create_dataset("coords", data=coords[:-1])
        fh["coords"].attrs.update(attrs)
    assert artifact_key(inputs_record(tiling, "cnn_ssl", INPUT_SIZE, TINY)) != base


def test_pretraining_reads_no_labels(cohort_copy, tmp_path):
    """A folder holding only the tiling files (no clinical tables, no cohort manifest, no MRI) pretrains the same
    weights as the full cohort: nothing but patches reaches the encoder."""
    full = ensure_pretrained(cohort_copy, cohort_copy / "wsi_patches" / TILING, "cnn_ssl", INPUT_SIZE, TINY, **QUIET)
    bare = tmp_path / "patches_only"
    shutil.copytree(cohort_copy / "wsi_patches" / TILING, bare / "wsi_patches" / TILING)
    assert not list(bare.rglob("*.csv")) and not (bare / "cohort.json").exists()
    alone = ensure_pretrained(bare, bare / "wsi_patches" / TILING, "cnn_ssl", INPUT_SIZE, TINY, **QUIET)
    assert alone.provenance["weights_sha256"] == full.provenance["weights_sha256"]


def test_weights_depend_only_on_the_recorded_inputs(cohort_copy, tmp_path):
    """The artifact is a function of its key's inputs: the caller's random state (a training seed, an earlier
    model) changes nothing in the weights, and pretraining leaves the caller's random state as it found it, so a
    run that builds the artifact initialises its model as a run that reuses it does."""
    tiling = cohort_copy / "wsi_patches" / TILING
    other = tmp_path / "other_copy"
    shutil.copytree(tiling, other / "wsi_patches" / TILING)
    torch.manual_seed(1)
    first = ensure_pretrained(cohort_copy, tiling, "cnn_ssl", INPUT_SIZE, TINY, **QUIET)
    after_first = torch.rand(4)
    torch.manual_seed(123)
    torch.rand(17)  # a different caller state, also part-way through its stream
    state = torch.get_rng_state()
    second = ensure_pretrained(other, other / "wsi_patches" / TILING, "cnn_ssl", INPUT_SIZE, TINY, **QUIET)
    assert not second.reused
    assert second.provenance["weights_sha256"] == first.provenance["weights_sha256"]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(4), after_first)


def test_a_run_that_builds_the_caches_equals_one_that_reuses_them(cohort_copy, tmp_path):
    """The same command twice on one cohort: the first run pretrains the encoder and fills the feature cache, the
    second finds both. Their predictions must be the same (the quickstart on a fresh clone is the first kind)."""
    import pandas as pd

    runs = [tmp_path / "builds", tmp_path / "reuses"]
    for run in runs:
        run_training("attention", recipe="tiny", data_dir=cohort_copy, output_dir=run, overrides=SSL_TRAINING, **QUIET)
    assert len(list((cohort_copy / "pretrained").iterdir())) == 1
    first, second = (pd.read_csv(run / "test_predictions.csv") for run in runs)
    pd.testing.assert_frame_equal(first, second)


def test_training_makes_the_encoder_records_it_and_exports(cohort_copy, tmp_path):
    from export.formats import FORMATS
    from export.manifest import load_manifest
    from export.parts import ParitySizes
    from export.pipeline import export_checkpoint
    from export.source import Target

    result = run_training("pathology_only", recipe="tiny", data_dir=cohort_copy, output_dir=tmp_path / "run",
                          overrides=SSL_TRAINING, **QUIET)
    assert result["epochs_run"] == 1
    [artifact] = (cohort_copy / "pretrained").iterdir()
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    pathology = state["preprocessing"]["pathology"]
    provenance = pathology["weights_provenance"]
    assert provenance["labels_used"] is False and provenance["key"] in artifact.name
    assert pathology["weights_sha256"] == provenance["weights_sha256"]
    assert state["config"]["model"]["modalities"]["pathology"]["weights"] == str(artifact / WEIGHTS_FILE)
    # the frozen trunk in the checkpoint is the artifact's (pretraining changed it from a random init)
    from safetensors.torch import load_file

    stored = load_file(str(artifact / WEIGHTS_FILE))
    trunk = {k[len("patch_encoder.trunk."):]: v for k, v in state["state_dict"].items()
             if k.startswith("patch_encoder.trunk.")}
    assert stored.keys() == trunk.keys() and all(torch.equal(stored[k], trunk[k]) for k in stored)

    export = export_checkpoint(Target(tmp_path / "run" / "best.pt", "pathology_only"), FORMATS["onnx"],
                               tmp_path / "exports", sizes=ParitySizes(patches=(1, 3), bag=(1, 5), batch=(1,)),
                               progress=False)
    assert export.passed, export.report.to_markdown()
    manifest = load_manifest(tmp_path / "exports" / "pathology_only")
    assert manifest["preprocessing"]["pathology"]["weights_provenance"]["key"] == provenance["key"]
