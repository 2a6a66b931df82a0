"""Bad checkpoints, wrong entry/version, existing outputs, failed exports, tampered files, parity failures."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest
import torch

from export.cli import EXIT_ERROR, EXIT_OK, main
from export.formats import FORMATS, ExportError
from export.geometry import probe_geometry
from export.manifest import ManifestError, load_manifest
from export.parity import REPORT_JSON, check_parity
from export.pipeline import export_checkpoint
from export.source import SourceError, Target, load_source

LEGACY = dataclasses.replace(FORMATS["onnx"], exporter="legacy")
ENTRY = "clinical_only"  # the cheapest entry: these tests are about the error paths


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_missing_checkpoint_names_file_and_how_to_train(tmp_path):
    with pytest.raises(SourceError, match=r"does not exist.*zoo\.train"):
        load_source(Target(tmp_path / "outputs" / ENTRY / "best.pt", ENTRY))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=str(path)):
        load_source(Target(path))


def test_pickled_objects_are_refused(tmp_path):
    """weights_only loading: a checkpoint holding arbitrary Python objects is not unpickled."""
    path = tmp_path / "best.pt"
    torch.save({"entry": ENTRY, "config": {}, "state_dict": {}, "evil": argparse.Namespace(x=1)}, path)
    with pytest.raises(SourceError, match="could not be loaded safely|corrupt"):
        load_source(Target(path))


def test_checkpoint_of_another_entry(tiny_checkpoint):
    with pytest.raises(SourceError, match="belongs to entry 'clinical_only', not 'mri_only'"):
        load_source(Target(tiny_checkpoint(ENTRY), requested_entry="mri_only"))


def test_checkpoint_of_another_version(tiny_checkpoint):
    from zoo.registry import ZOO_VERSION

    with pytest.raises(SourceError, match=rf"version '{re.escape(ZOO_VERSION)}'.*version '9\.9' is asked"):
        load_source(Target(tiny_checkpoint(ENTRY), ENTRY), version="9.9")


def test_checkpoint_older_than_registry(tmp_path):
    from tests.export.conftest import write_tiny_checkpoint

    path = write_tiny_checkpoint(ENTRY, tmp_path / "best.pt", version="0.1")
    with pytest.raises(SourceError, match=r"version '0\.1'.*registry.*retrain"):
        load_source(Target(path))


def test_existing_output_refused_without_overwrite(tiny_checkpoint, sizes, tmp_path):
    export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, tmp_path, sizes=sizes, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / ENTRY).iterdir()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, tmp_path, sizes=sizes, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / ENTRY).iterdir()} == before
    result = export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, tmp_path, sizes=sizes,
                               overwrite=True, progress=False)
    assert result.passed and leftovers(tmp_path) == [ENTRY]


def test_failed_export_leaves_nothing_and_keeps_previous_export(tiny_checkpoint, sizes, tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(ExportError, match="part .* failed .opset 1"):
        export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, fresh, opset=1, sizes=sizes, progress=False)
    assert leftovers(fresh) == []  # no half-written <entry> dir, no staging dir
    kept = tmp_path / "kept"
    export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, kept, sizes=sizes, progress=False)
    with pytest.raises(ExportError, match="part .* failed .opset 1"):
        export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, kept, opset=1, overwrite=True,
                          sizes=sizes, progress=False)
    assert leftovers(kept) == [ENTRY]
    load_manifest(kept / ENTRY)  # the previous export is intact


def test_export_is_readable_by_others(tiny_checkpoint, sizes, tmp_path):
    """The export dir (a staging dir moved into place) is 0777 & ~umask, its files (manifest.json too) 0666 & ~umask."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        result = export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, tmp_path, sizes=sizes,
                                   progress=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(result.directory.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in result.directory.iterdir()}
    assert "manifest.json" in modes and modes == dict.fromkeys(modes, 0o644)


def test_tampered_or_missing_files_are_detected(tiny_checkpoint, sizes, tmp_path):
    result = export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, tmp_path, sizes=sizes, progress=False)
    graph = result.directory / "fusion_head.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="fusion_head.onnx has sha256"):
        load_manifest(result.directory)
    graph.unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(result.directory)
    manifest = json.loads((result.directory / "manifest.json").read_text())
    del manifest["parts"]["model"]
    (result.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="parts"):
        load_manifest(result.directory, verify_files=False)
    with pytest.raises(ManifestError, match="no export manifest"):
        load_manifest(tmp_path / "nowhere")


def test_parity_detects_a_different_model(tiny_checkpoint, sizes, tmp_path):
    """Graphs compared with a model of other weights must fail, and a failing export is refused downstream."""
    from tests.export.conftest import write_tiny_checkpoint

    result = export_checkpoint(Target(tiny_checkpoint(ENTRY), ENTRY), LEGACY, tmp_path, sizes=sizes, progress=False)
    other = load_source(Target(write_tiny_checkpoint(ENTRY, tmp_path / "other.pt", seed=1)))
    geometry = probe_geometry(other.model, other.config)
    files = {name: part["file"] for name, part in load_manifest(result.directory)["parts"].items()}
    report = check_parity(result.directory, LEGACY, other.model, geometry, files, sizes=sizes, progress=False)
    assert not report.passed
    assert json.loads((result.directory / REPORT_JSON).read_text())["passed"] is False
    manifest = json.loads((result.directory / "manifest.json").read_text())
    manifest["parity"]["passed"] = False
    (result.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="parity check did not pass"):
        load_manifest(result.directory)
    assert load_manifest(result.directory, require_parity=False)["entry"] == ENTRY


def test_cli_without_checkpoints_says_how_to_train(tmp_path, capsys):
    code = main("onnx", ["--checkpoint-root", str(tmp_path / "outputs"), "--output-dir", str(tmp_path / "exports")])
    assert code == EXIT_ERROR
    assert "zoo.train" in capsys.readouterr().err


def test_cli_unknown_entry(tmp_path, capsys):
    assert main("onnx", ["atention", "--checkpoint-root", str(tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "unknown zoo entry 'atention'" in err and "attention" in err


def test_cli_one_bad_checkpoint_does_not_lose_the_others(tiny_checkpoint, tmp_path, capsys):
    root = tmp_path / "outputs"
    (root / "mri_only").mkdir(parents=True)
    (root / "mri_only" / "best.pt").write_bytes(b"garbage")
    good = root / ENTRY / "best.pt"
    good.parent.mkdir(parents=True)
    good.write_bytes(tiny_checkpoint(ENTRY).read_bytes())
    exports = tmp_path / "exports"
    argv = ["--checkpoint-root", str(root), "--output-dir", str(exports), "--exporter", "legacy", "--no-progress",
            "--parity-patches", "1,4", "--parity-bags", "1,3000", "--parity-batches", "1,2"]
    assert main("onnx", argv) == EXIT_ERROR  # no targets: every outputs/*/best.pt
    err = capsys.readouterr().err
    assert "mri_only/best.pt" in err and "could not be loaded" in err and "1 of 2 export(s) failed" in err
    assert leftovers(exports) == [ENTRY]
    load_manifest(exports / ENTRY)
    assert main("onnx", [ENTRY, *argv]) == EXIT_ERROR  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    torchscript = tmp_path / "exports_torchscript"
    ts_argv = [a for a in argv if a not in ("--exporter", "legacy")]
    ts_argv[ts_argv.index(str(exports))] = str(torchscript)
    assert main("torchscript", [ENTRY, *ts_argv]) == EXIT_OK
    assert load_manifest(torchscript / ENTRY)["format"] == "torchscript"
