"""Export one checkpoint: every part in one format, verified, parity-checked, with its manifest.

The export is built in a temp directory next to the target and moved into place with os.replace only when
complete, so a failed export never leaves a half-written `<output_dir>/<entry>`.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from export.formats import ExportError, ExportFormat
from export.geometry import probe_geometry
from export.manifest import build_manifest, part_record, preprocessing_constants, write_manifest
from export.parity import ParityReport, check_parity, real_cases
from export.parts import ParitySizes, PatchEncoderPart, parts_for
from export.quantize import QUANTIZED_PARTS, calibration_patches_from_cohort, quantize_int8
from export.source import Target, load_source
from zoo import spec
from zoo.atomic import durable_replace, make_temp_dir, remove_orphaned_temps
from zoo.hashing import sha256_file

DEFAULT_OPSET = 18


@dataclass
class ExportResult:
    entry: str
    directory: Path
    report: ParityReport

    @property
    def passed(self) -> bool:
        return self.report.passed


def refuse_existing(target_dir: Path, overwrite: bool) -> None:
    if target_dir.exists() and not overwrite:
        raise FileExistsError(f"{target_dir} already exists; pass --overwrite to replace it")


def commit_directory(staging: Path, target_dir: Path, overwrite: bool) -> None:
    """Move the finished `staging` dir onto `target_dir`; the old export is removed only after the move."""
    refuse_existing(target_dir, overwrite)
    retired = None
    if target_dir.exists():
        retired = make_temp_dir(target_dir.parent, f"{target_dir.name}.old")
        target_dir.rename(retired / target_dir.name)
    try:
        durable_replace(staging, target_dir)
    except BaseException:
        if retired is not None:
            (retired / target_dir.name).rename(target_dir)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def export_checkpoint(target: Target, fmt: ExportFormat, output_dir: Path, *, opset: int = DEFAULT_OPSET,
                      precision: str = "fp32", overwrite: bool = False, version: str | None = None,
                      sizes: ParitySizes = ParitySizes(), data_dir: Path | None = None, max_patients: int = 2,
                      progress: bool = True, calibration=None) -> ExportResult:
    """Export `target` into `output_dir/<entry>`; returns the parity result (the export is kept either way).

    precision="int8" quantizes the patch encoder with `calibration` (uint8 patches [N,3,P,P]) or, when that is
    None, with tissue patches of `data_dir`'s train split.
    """
    if precision not in fmt.precisions:
        raise ExportError(f"{fmt.name} export supports precision {list(fmt.precisions)}, not {precision!r}")
    source = load_source(target, version)
    if spec.KEY_PATHOLOGY in source.entry.modalities and getattr(source.model, "patch_encoder", None) is None:
        stored = source.config["data"]["modalities"]["pathology"]
        raise ExportError(f"{source.name} was trained on stored patch features ({stored.get('features_dir')}, encoder "
                          f"{stored.get('features_encoder') or 'unknown'}) and has no patch encoder to export; "
                          "exporting only its MIL, encoders and fusion head is not supported yet (serve the "
                          "features' own encoder, or train with a zoo patch encoder)")
    quantization = None
    if precision == "int8":
        if calibration is None and data_dir is None:
            raise ExportError("int8 export needs calibration patches: pass --data-dir with a tiled cohort "
                              "(its train split's tissue patches calibrate the activation ranges)")
        if spec.KEY_PATHOLOGY not in source.entry.modalities:
            raise ExportError(f"{source.name} has no patch encoder; int8 quantizes only {list(QUANTIZED_PARTS)}")
        if calibration is None:
            calibration = calibration_patches_from_cohort(data_dir, source.config)
    target_dir = output_dir / source.name
    refuse_existing(target_dir, overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(output_dir)  # staging dirs of a killed earlier export
    model, config = source.model, source.config
    geometry = probe_geometry(model, config)
    staging = make_temp_dir(output_dir, f"{source.name}.partial")  # 0777 & ~umask, as the moved export stays
    try:
        records, files = {}, {}
        for part_cls in tqdm(parts_for(geometry.modalities), desc=f"export {source.name} ({fmt.name})",
                             unit="part", disable=not progress, leave=False):
            module = part_cls(model, geometry).eval()
            signature = part_cls.signature(geometry)
            path = staging / f"{part_cls.name}{fmt.suffix}"
            try:
                with torch.no_grad():
                    info = fmt.export(module, part_cls.example_inputs(geometry), signature, path, opset)
                fmt.set_precision(path, precision)
                if precision == "int8" and part_cls is PatchEncoderPart:
                    quantization = {"parts": list(QUANTIZED_PARTS),
                                    **quantize_int8(path, calibration, signature.input_names[0])}
                fmt.verify(path, signature)
            except ExportError:
                raise
            except Exception as exc:
                detail = str(exc).splitlines()[0] if str(exc) else ""
                raise ExportError(f"{source.name}: {fmt.name} export of part {part_cls.name} failed "
                                  f"(opset {opset}, {precision}): {type(exc).__name__}: {detail}") from exc
            digests = {name: sha256_file(staging / name) for name in info["files"]}
            records[part_cls.name] = part_record(path.name, digests, signature, info["exporter"])
            files[part_cls.name] = path.name
        real = real_cases(data_dir, config, model, geometry, source.payload.get("preprocessing"), max_patients) \
            if data_dir is not None else None
        report = check_parity(staging, fmt, model, geometry, files, precision, sizes, real_cases=real,
                              progress=progress)
        manifest = build_manifest(
            fmt=fmt.name, entry=source.entry, version=source.version,
            class_names=list(source.payload.get("class_names") or spec.CLASS_NAMES), geometry=geometry, parts=records,
            preprocessing=preprocessing_constants(source.payload, model, geometry.modalities),
            checkpoint=source.checkpoint, checkpoint_sha256=source.checkpoint_sha256,
            opset=opset if fmt.name == "onnx" else None, precision=precision, parity=report.summary(),
            tolerance=report.tolerance, quantization=quantization,
        )
        write_manifest(staging, manifest)
        commit_directory(staging, target_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(source.name, target_dir, report)
