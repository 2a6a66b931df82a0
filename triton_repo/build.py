"""Render a Triton model repository from export manifests.

    python -m triton_repo.build --export-dir exports/<entry> [--export-dir ...] [--output model_repository]
                                [--flavor gpu|embedded] [--tensorrt-fp16] [--max-patch-batch 1024] [--overwrite]

Each entry becomes `<entry>_<part>` models plus the ensembles `<entry>` and `<entry>_slide`; several entries can
share one repository. The `<entry>` ensemble's config.pbtxt carries the export manifest (string parameter
`export_manifest` + its `export_manifest_sha256`) for clients that know only the server's address. Every served ONNX
file is checked against the manifest's sha256 (the build refuses on a mismatch). Each model directory is staged next
to its final place and moved in with os.replace.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from triton_repo import config as cfg_mod
from triton_repo import manifest as mf
from triton_repo.discovery import manifest_parameters
from triton_repo.plan import FLAVORS, BuildOptions, model_configs
from zoo.atomic import durable_replace, make_temp_dir, remove_orphaned_temps, temp_prefix
from zoo.cli_help import HelpFormatter

PYTHON_MODEL_SOURCE = Path(__file__).with_name("python_model") / "model.py"
REPO_MANIFEST_NAME = "manifest.json"  # copy of the export manifest inside the `<entry>` ensemble directory


class BuildError(RuntimeError):
    """The repository cannot be built from the given exports."""


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_model(stage: Path, config: cfg_mod.ModelConfig, part: mf.PartSpec | None, flavor: str) -> None:
    version_dir = stage / "1"
    version_dir.mkdir(parents=True)
    (stage / "config.pbtxt").write_text(cfg_mod.render(config))
    if part is None:
        return
    # The graph keeps its exported name: external weight files refer to each other by name.
    for name, _ in part.all_files:
        _link_or_copy(part.path.parent / name, version_dir / name)
    mf.verify_part(part, version_dir)  # a served file must be the exported one, byte for byte
    if FLAVORS[flavor].runs_python_model:
        shutil.copyfile(PYTHON_MODEL_SOURCE, version_dir / "model.py")


def _retire(final: Path) -> None:
    """Take a model directory out of the repository (renamed to a pid-tagged temp first, then deleted)."""
    if final.exists():
        trash = final.with_name(f"{temp_prefix(final.name + '.old')}{secrets.token_hex(4)}")
        os.replace(final, trash)
        shutil.rmtree(trash)


def _install(stage: Path, final: Path, overwrite: bool) -> None:
    if final.exists() and not overwrite:
        raise BuildError(f"{final} already exists; pass --overwrite to replace it")
    _retire(final)
    durable_replace(stage, final)


def build_entry(manifest: mf.ExportManifest, output: Path, options: BuildOptions, overwrite: bool) -> list[str]:
    """Write one entry's models into `output`; returns the model names. The `<entry>` ensemble's config carries
    the export manifest (triton_repo.discovery), so a client needs only the server's address."""
    manifest_path = manifest.export_dir / mf.MANIFEST_NAME
    manifest_text = manifest_path.read_text(encoding="utf-8")
    embedded = manifest_parameters(manifest_text, str(manifest_path))
    configs = [dataclasses.replace(c, parameters={**c.parameters, **embedded}) if c.name == manifest.entry else c
               for c in model_configs(manifest, options)]
    for config in configs:
        final = output / config.name
        if final.exists() and not overwrite:
            raise BuildError(f"{final} already exists; pass --overwrite to replace it")
    parts = {cfg.parameters.get("part"): manifest.part(cfg.parameters["part"]) for cfg in configs if not cfg.steps}
    for part in parts.values():
        mf.verify_part(part)
    staging = make_temp_dir(output, "staging")
    try:
        for config in tqdm(configs, desc=f"models of {manifest.entry}", unit="model", leave=False):
            stage = staging / config.name
            part = parts.get(config.parameters.get("part")) if not config.steps else None
            _write_model(stage, config, part, options.flavor)
            if config.name == manifest.entry:
                (stage / REPO_MANIFEST_NAME).write_text(manifest_text, encoding="utf-8")
        # Everything is staged before anything is installed. The `<entry>` model (what clients discover and call)
        # leaves first and comes back last: a build stopped midway leaves the entry unserved, never served by parts
        # of two exports.
        _retire(output / manifest.entry)
        for config in sorted(configs, key=lambda c: c.name == manifest.entry):
            _install(staging / config.name, output / config.name, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [c.name for c in configs]


def build_repository(export_dirs: list[str | Path], output: str | Path = "model_repository",
                     options: BuildOptions = BuildOptions(), overwrite: bool = False) -> dict[str, list[str]]:
    """Build (or extend) a model repository from one or more exports; returns {entry: model names}."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(output)  # staging and retired model folders of a build that was killed
    manifests = [mf.load(d) for d in export_dirs]
    entries = [m.entry for m in manifests]
    if len(set(entries)) != len(entries):
        raise BuildError(f"the same entry is given twice: {entries}")
    return {m.entry: build_entry(m, output, options, overwrite) for m in manifests}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triton_repo.build", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--export-dir", action="append", required=True,
                        help="exports/<entry> directory holding manifest.json (repeat for several entries)")
    parser.add_argument("--output", default="model_repository", help="model repository directory")
    parser.add_argument("--flavor", choices=sorted(FLAVORS), default="embedded",
                        help="gpu: onnxruntime backend (NGC container); embedded: python backend + onnxruntime "
                             "(runs with the tritonserver shipped in nvidia-pytriton)")
    parser.add_argument("--tensorrt-fp16", action="store_true", help="gpu flavor: TensorRT fp16 accelerator")
    parser.add_argument("--max-patch-batch", type=int, default=BuildOptions.max_patch_batch,
                        help="largest patch chunk the patch encoder accepts (dynamic batching limit)")
    parser.add_argument("--instances", type=int, default=1, help="instances per part model")
    parser.add_argument("--overwrite", action="store_true", help="replace models that already exist")
    args = parser.parse_args(argv)
    options = BuildOptions(flavor=args.flavor, max_patch_batch=args.max_patch_batch,
                           tensorrt_fp16=args.tensorrt_fp16, instance_count=args.instances)
    try:
        built = build_repository(args.export_dir, args.output, options, args.overwrite)
    except (mf.ManifestError, BuildError, cfg_mod.ModelConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for entry, names in built.items():
        print(f"{entry}: {', '.join(names)}")
    print(json.dumps({"model_repository": str(Path(args.output).resolve()), "flavor": args.flavor}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
