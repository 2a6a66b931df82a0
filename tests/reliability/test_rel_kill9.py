"""kill -9 in the middle of tiling, feature caching, training and export, then the same command again.

Each job runs as a real subprocess, is SIGKILLed once a first unit of work is on disk (so later units are in
progress), and is rerun. The rerun must finish the job, leave no corrupt or temp file, and redo no finished unit.
"""
from __future__ import annotations

import re
import shutil
import sys

import h5py
import numpy as np
import pandas as pd
import torch

from tests.reliability.faultkit import hidden_leftovers, kill_when, mtimes, run

PY = sys.executable


def _visible_h5(directory):
    # pathlib's glob also matches dot-names (a writer's temp files): the outputs are the visible ones.
    return sorted(p for p in directory.glob("*.h5") if not p.name.startswith(".")) if directory.is_dir() else []


def test_kill_during_tiling_then_rerun_tiles_only_the_rest(tiny_cohort, tmp_path):
    src, out = tmp_path / "slides", tmp_path / "tiles"
    src.mkdir()
    slides = sorted((tiny_cohort / "wsi_raw").glob("*.svs"))
    for copy in range(1):
        for slide in slides:
            (src / f"{slide.stem}-c{copy}.svs").symlink_to(slide)
    total = len(slides)
    cmd = [PY, "-m", "zoo.data.tile", "--input-dir", src, "--output-dir", out, "--patch-size", 64, "--workers", 1]

    kill_when(cmd, lambda: len(_visible_h5(out)) >= 3)
    done = _visible_h5(out)
    assert 3 <= len(done) < total
    for path in done:  # atomic writes: every visible file is complete
        with h5py.File(path, "r") as f:
            assert f["coords"].shape[0] > 0 and f.attrs["patch_size"] == 64
    before = mtimes(done)

    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{total - len(done)} tiled, {len(done)} already done, 0 failed" in rerun.stdout
    assert len(_visible_h5(out)) == total
    assert {k: v for k, v in mtimes(_visible_h5(out)).items() if k in before} == before  # not redone
    assert hidden_leftovers(out, out / "qc") == []


FEATURE_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from zoo.training.feature_cache import ensure_features
from zoo.registry import get_entry
torch.manual_seed(0)
model = get_entry("pathology_only").build_model("tiny")
report = ensure_features(sys.argv[1], model.patch_encoder, tiling_dir=sys.argv[2], progress=False)
print(f"computed={len(report.computed)} reused={len(report.reused)} dir={report.directory}")
"""


def test_kill_during_feature_caching_then_rerun_computes_only_the_rest(tiny_cohort, tmp_path):
    tiles, data_dir = tmp_path / "tiles", tmp_path / "cohort"
    tiles.mkdir()
    source = sorted((tiny_cohort / "wsi_patches" / "ps64_l0_t0.5").glob("*.h5"))
    for copy in range(2):  # more slides than the cohort has, so the kill lands well before the end
        for h5 in source:
            (tiles / f"{h5.stem}-c{copy}.h5").symlink_to(h5)
    total = 2 * len(source)
    cmd = [PY, "-c", FEATURE_SCRIPT, data_dir, tiles]
    cache_files = lambda: [p for d in (data_dir / "features").glob("*") for p in _visible_h5(d)]  # noqa: E731

    kill_when(cmd, lambda: len(cache_files()) >= 2)
    done = cache_files()
    assert 2 <= len(done) < total
    cache_dir = done[0].parent
    before = mtimes(done)

    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"computed={total - len(done)} reused={len(done)}" in rerun.stdout
    assert {k: v for k, v in mtimes(_visible_h5(cache_dir)).items() if k in before} == before
    for path in _visible_h5(cache_dir):
        with h5py.File(path, "r") as f, h5py.File(tiles / path.name, "r") as t:
            assert f["features"].shape == (t["coords"].shape[0], f.attrs["feature_dim"])
            assert np.isfinite(f["features"][()]).all()
    assert len(_visible_h5(cache_dir)) == total and hidden_leftovers(cache_dir) == []


def test_kill_during_training_then_resume_redoes_at_most_one_epoch(tiny_cohort, tmp_path):
    data_dir, out = tmp_path / "cohort", tmp_path / "run"
    data_dir.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(tiny_cohort / f"{split}_clinical.csv", data_dir)
    epochs = 12
    cmd = [PY, "-m", "zoo.train", "clinical_only", "--recipe", "tiny", "--data-dir", data_dir, "--output-dir", out,
           f"training.epochs={epochs}", f"training.scheduler.T_max={epochs}", "training.early_stopping.patience=0"]

    kill_when(cmd, lambda: (out / "last.pt").is_file())
    last = torch.load(out / "last.pt", weights_only=True)  # complete and safe to load despite the kill
    finished = int(last["epoch"])
    assert finished < epochs - 1
    torch.load(out / "best.pt", weights_only=True)

    rerun = run([*cmd, "--resume"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"continuing at epoch {finished + 2}/{epochs}" in rerun.stdout
    ran = [int(m) for m in re.findall(rf"^epoch (\d+)/{epochs}\s", rerun.stdout, re.M)]
    assert ran == list(range(finished + 2, epochs + 1))  # epochs finished before the kill were not redone
    final = torch.load(out / "last.pt", weights_only=True)
    assert final["epoch"] == epochs - 1 and [h["epoch"] for h in final["trainer"]["history"]] == list(range(epochs))
    assert (out / "metrics.json").is_file() and hidden_leftovers(out) == []


def _checkpoint(name, path):
    from zoo.checkpoint import checkpoint_payload, preprocessing_record, save_checkpoint
    from zoo.data.clinical import ClinicalPreprocessor
    from zoo.registry import get_entry

    entry = get_entry(name)
    overrides = ["data.modalities.mri.output_shape=[8,8,4]"]
    torch.manual_seed(0)
    model = entry.build_model("tiny", overrides)
    table = pd.DataFrame({f: [1.0, 2.0, 4.0] for f in entry.clinical_features})
    config = entry.config("tiny", overrides)
    clinical = ClinicalPreprocessor(entry.clinical_features).fit(table).to_dict()
    return save_checkpoint(path, checkpoint_payload(entry, config, model,
                                                    preprocessing_record(config, model, clinical=clinical)))


def test_kill_during_export_then_rerun_finishes_the_unfinished_entry(tmp_path):
    from export.manifest import load_manifest

    first, second = "clinical_only", "mri_only"
    ckpts = [_checkpoint(name, tmp_path / "outputs" / name / "best.pt") for name in (first, second)]
    exports = tmp_path / "exports"
    cmd = [PY, "-m", "export.onnx", *ckpts, "--output-dir", exports, "--exporter", "legacy", "--no-progress",
           "--parity-patches", "1", "--parity-bags", "1", "--parity-batches", "1,2"]

    def second_in_progress():
        return (exports / first / "manifest.json").is_file() and any(exports.glob(f".{second}.*partial*/*.onnx"))

    kill_when(cmd, second_in_progress)
    assert not (exports / second).exists()  # the interrupted export never shows up half-written
    assert hidden_leftovers(exports)  # its staging dir is what the kill left behind
    load_manifest(exports / first)
    before = mtimes((exports / first).iterdir())

    rerun = run(cmd)
    # The finished entry is refused (exports are never silently replaced) and kept; the other one is exported.
    assert rerun.returncode == 2 and f"{exports / first} already exists" in rerun.stderr, rerun.stderr
    assert mtimes((exports / first).iterdir()) == before
    manifest = load_manifest(exports / second)  # schema, every file's sha256, parity passed
    assert manifest["entry"] == second
    assert hidden_leftovers(exports) == []
