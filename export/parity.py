"""Parity of exported parts against the PyTorch model they came from.

Every part (and the whole-model graph) is run through the export format's runtime (onnxruntime on the CPU
provider, or TorchScript) and through the PyTorch wrapper in fp32, on random inputs at small, middle and large
dynamic sizes, every presence pattern of the model's modalities, and real cohort inputs when a data dir is given.

Pass rule per output: max |exported - pytorch| <= tolerance * scale, where scale = 1 for outputs bounded in
[0, 1] (probabilities, patch and fusion attention) and max(1, max |pytorch|) for unbounded features/embeddings.
Default tolerance: 1e-4 for fp32 exports, 1e-2 for fp16; int8 exports allow 1e-1 (of the output scale) on the
quantized patch encoder and 1e-4 on their fp32 parts, and with real patients (--data-dir) check what
quantization does to each patient's probabilities (int8 encoder -> fp32 MIL + fusion head vs all-fp32; 1e-1).
Non-finite outputs and shape mismatches fail.

    python -m export.parity EXPORT_DIR [--checkpoint PATH] [--data-dir DIR] [--max-patients N]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from export import names
from export.formats import ExportFormat
from export.geometry import Geometry
from export.parts import PARTS_BY_NAME, Case, ParitySizes, Part
from export.signature import Signature
from zoo.cli_help import HelpFormatter

TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}


def part_tolerance(precision: str, part: str) -> float:
    """int8 quantizes only export.quantize.QUANTIZED_PARTS; the other parts of an int8 export are fp32 graphs."""
    from export.quantize import QUANTIZED_PARTS

    return TOLERANCES["fp32"] if precision == "int8" and part not in QUANTIZED_PARTS else TOLERANCES[precision]
BOUNDED_OUTPUTS = frozenset({names.PROBABILITIES, names.PATCH_ATTENTION, names.FUSION_ATTENTION})
REPORT_JSON = "parity_report.json"
REPORT_MD = "parity_report.md"


@dataclass
class OutputCheck:
    part: str
    case: str
    output: str
    shape: list[int]
    max_abs_diff: float
    allowed: float
    passed: bool
    error: str = ""


@dataclass
class ParityReport:
    format: str
    precision: str
    tolerance: float
    sizes: dict[str, list[int]]
    checks: list[OutputCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def worst(self, output: str | None = None) -> float:
        diffs = [c.max_abs_diff for c in self.checks if output is None or c.output == output]
        return float(max(diffs)) if diffs else float("nan")

    def summary(self) -> dict[str, Any]:
        failed = [c for c in self.checks if not c.passed]
        return {
            "passed": self.passed,
            "checks": len(self.checks),
            "failed": len(failed),
            "max_abs_diff_probabilities": self.worst(names.PROBABILITIES),
            "max_abs_diff": self.worst(),
            "report": REPORT_JSON,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "format": self.format, "precision": self.precision, "tolerance": self.tolerance,
                "sizes": self.sizes, "seconds": round(self.seconds, 2), "cases": [asdict(c) for c in self.checks]}

    def to_markdown(self) -> str:
        lines = [
            f"# Parity report: {self.format} ({self.precision}) vs PyTorch fp32",
            "",
            f"**{'PASSED' if self.passed else 'FAILED'}**: {len(self.checks)} output checks, "
            f"{sum(not c.passed for c in self.checks)} failed; tolerance {self.tolerance:g} "
            "(x max(1, max|ref|) for unbounded outputs); sizes " +
            ", ".join(f"{k} {v}" for k, v in self.sizes.items()) + f"; {self.seconds:.1f} s.",
            "",
            "| part | output | cases | worst max abs diff | passed |",
            "|---|---|---|---|---|",
        ]
        groups: dict[tuple[str, str], list[OutputCheck]] = {}
        for c in self.checks:
            groups.setdefault((c.part, c.output), []).append(c)
        for (part, output), checks in groups.items():
            worst = max(c.max_abs_diff for c in checks)
            ok = all(c.passed for c in checks)
            lines.append(f"| {part} | {output} | {len(checks)} | {worst:.3g} | {'yes' if ok else 'NO'} |")
        failed = [c for c in self.checks if not c.passed]
        if failed:
            lines += ["", "## Failures", ""]
            lines += [f"- {c.part} / {c.case} / {c.output}: diff {c.max_abs_diff:.3g} > {c.allowed:.3g} {c.error}"
                      for c in failed]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> None:
        from zoo.atomic import atomic_write_json, atomic_write_text

        atomic_write_json(directory / REPORT_JSON, self.to_json())
        atomic_write_text(directory / REPORT_MD, self.to_markdown())


def compare_output(part: str, case: str, name: str, ref: np.ndarray, got: np.ndarray | None, tolerance: float,
                   expected_shape: tuple[int, ...]) -> OutputCheck:
    scale = 1.0 if name in BOUNDED_OUTPUTS else max(1.0, float(np.abs(ref).max(initial=0.0)))
    allowed = tolerance * scale
    if got is None:
        return OutputCheck(part, case, name, list(ref.shape), float("inf"), allowed, False, "output missing")
    if tuple(got.shape) != tuple(ref.shape) or tuple(got.shape) != expected_shape:
        return OutputCheck(part, case, name, list(got.shape), float("inf"), allowed, False,
                           f"shape {tuple(got.shape)}, pytorch {tuple(ref.shape)}, declared {expected_shape}")
    if not (np.isfinite(got).all() and np.isfinite(ref).all()):
        return OutputCheck(part, case, name, list(got.shape), float("inf"), allowed, False, "non-finite values")
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
    return OutputCheck(part, case, name, list(got.shape), diff, allowed, diff <= allowed)


def check_part(part_cls: type[Part], reference: Part, runner, signature: Signature, cases: list[Case],
               tolerance: float) -> list[OutputCheck]:
    checks = []
    for case in cases:
        sizes = dict(zip(signature.symbols, [0] * len(signature.symbols)))
        for t in signature.inputs:
            sizes.update({sym: case.inputs[t.name].shape[axis] for axis, sym in t.dynamic_axes.items()})
        with torch.no_grad():
            refs = [r.numpy() for r in reference(*(case.inputs[n] for n in signature.input_names))]
        try:
            got = runner({n: case.inputs[n].numpy() for n in signature.input_names})
        except Exception as exc:  # one failing case is reported, the others still run
            checks += [OutputCheck(part_cls.name, case.label, o, [], float("inf"), tolerance, False,
                                   f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                       for o in signature.output_names]
            continue
        for spec_, ref in zip(signature.outputs, refs):
            checks.append(compare_output(part_cls.name, case.label, spec_.name, ref, got.get(spec_.name), tolerance,
                                         spec_.concrete_shape(sizes)))
    return checks


INT8_PROBABILITY_TOLERANCE = 1e-1
INT8_CHAIN = "int8 patch_encoder -> probabilities"


def check_int8_chain(directory: Path, fmt: ExportFormat, model: torch.nn.Module, geometry: Geometry,
                     part_files: dict[str, str], real_cases: dict[str, list[Case]],
                     tolerance: float = INT8_PROBABILITY_TOLERANCE) -> list[OutputCheck]:
    """What quantization does to a patient's prediction: the real patients' patches through the exported int8
    patch_encoder, then the (separately verified) fp32 MIL pooling and fusion head, against the all-fp32 model."""
    encoder_cls, mil_cls, head_cls = (PARTS_BY_NAME[n] for n in (names.PATCH_ENCODER, names.MIL_POOL,
                                                                  names.FUSION_HEAD))
    run_encoder = fmt.runner(directory / part_files[names.PATCH_ENCODER], encoder_cls.signature(geometry))
    mil, head = (cls(model, geometry).eval() for cls in (mil_cls, head_cls))
    head_inputs = head_cls.signature(geometry).input_names
    heads = {c.label: c.inputs for c in real_cases.get(names.FUSION_HEAD, [])}
    fp32_features = {c.label: c.inputs[names.PATCH_FEATURES] for c in real_cases.get(names.MIL_POOL, [])}
    checks = []
    for case in real_cases.get(names.PATCH_ENCODER, []):
        if case.label not in heads or case.label not in fp32_features:
            continue
        patches = case.inputs[names.PATCHES]
        quantized = torch.from_numpy(run_encoder({names.PATCHES: patches.numpy()})[names.PATCH_FEATURES])
        with torch.no_grad():
            probabilities = []
            for features in (fp32_features[case.label], quantized):  # real_cases already encoded them in fp32
                inputs = {**heads[case.label], names.embedding("pathology"): mil(features)[0]}
                probabilities.append(head(*(inputs[n] for n in head_inputs))[0].numpy())
        reference, got = probabilities
        checks.append(compare_output(INT8_CHAIN, case.label, names.PROBABILITIES, reference, got, tolerance,
                                     tuple(reference.shape)))
    return checks


def check_parity(directory: Path, fmt: ExportFormat, model: torch.nn.Module, geometry: Geometry,
                 part_files: dict[str, str], precision: str = "fp32", sizes: ParitySizes = ParitySizes(),
                 tolerance: float | None = None, real_cases: dict[str, list[Case]] | None = None,
                 seed: int = 0, progress: bool = True) -> ParityReport:
    """Compare every exported part in `directory` (part name -> file) with `model`; write the reports there."""
    override = tolerance
    tolerance = TOLERANCES[precision] if tolerance is None else float(tolerance)
    report = ParityReport(fmt.name, precision, tolerance,
                          {"patches": list(sizes.patches), "bag": list(sizes.bag), "batch": list(sizes.batch)})
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    for name in tqdm(list(part_files), desc=f"parity {directory.name}", unit="part", disable=not progress,
                     leave=False):
        part_cls = PARTS_BY_NAME[name]
        reference = part_cls(model, geometry).eval()
        signature = part_cls.signature(geometry)
        cases = part_cls.cases(geometry, sizes, generator) + list((real_cases or {}).get(name, []))
        try:
            runner = fmt.runner(directory / part_files[name], signature)
        except Exception as exc:
            report.checks += [OutputCheck(name, "load", o, [], float("inf"), tolerance, False,
                                          f"could not load: {type(exc).__name__}: {exc}")
                              for o in signature.output_names]
            continue
        allowed = part_tolerance(precision, name) if override is None else float(override)
        report.checks += check_part(part_cls, reference, runner, signature, cases, allowed)
    if precision == "int8" and real_cases and names.PATCH_ENCODER in part_files:
        report.checks += check_int8_chain(directory, fmt, model, geometry, part_files, real_cases)
    report.seconds = time.perf_counter() - start
    report.write(directory)
    return report


# ----------------------------------------------------------------------------------------- real cohort inputs
@torch.no_grad()
def real_cases(data_dir: Path, config: dict[str, Any], model: torch.nn.Module, geometry: Geometry,
               preprocessing: dict[str, Any] | None = None, max_patients: int = 2,
               split: str = "test") -> dict[str, list[Case]]:
    """Parity cases built from real cohort patients (per part), with the model's own intermediate tensors.

    Clinical values are encoded with the checkpoint's fitted preprocessor when it recorded one.
    """
    from zoo import spec
    from zoo.data import BreastCancerMultiModalDataset
    from zoo.data.clinical import ClinicalPreprocessor

    recorded = (preprocessing or {}).get(spec.KEY_CLINICAL)
    extra = {"clinical_preprocessor": ClinicalPreprocessor.from_dict(recorded)} \
        if recorded and spec.KEY_CLINICAL in geometry.modalities else {}
    dataset = BreastCancerMultiModalDataset.from_config(config, split, data_dir=data_dir, **extra)
    cases: dict[str, list[Case]] = {}
    add = lambda part, label, inputs: cases.setdefault(part, []).append(Case(label, inputs))  # noqa: E731
    for index in range(min(max_patients, len(dataset))):
        item = dataset[index]
        label = f"patient {item.get(spec.KEY_PATIENT_ID, index)}"
        presence_full = item[spec.KEY_PRESENCE].bool()
        presence = presence_full[[spec.MODALITIES.index(m) for m in geometry.modalities]].unsqueeze(0)
        embeddings, whole = {}, {}
        if spec.KEY_PATHOLOGY in geometry.modalities:
            patches = item[spec.KEY_PATHOLOGY]
            mask = item[spec.KEY_PATHOLOGY_MASK].bool()
            kept = patches[mask] if mask.any() else patches[:1]
            add(names.PATCH_ENCODER, label, {names.PATCHES: kept.contiguous()})
            features = model.patch_encoder(kept)
            add(names.MIL_POOL, label, {names.PATCH_FEATURES: features.contiguous()})
            embeddings[spec.KEY_PATHOLOGY], _ = model.mil(features.unsqueeze(0),
                                                          torch.ones(1, len(kept), dtype=torch.bool))
            whole.update({names.PATCHES: patches.unsqueeze(0), names.PATCH_MASK: mask.unsqueeze(0)})
        for modality, part, key in ((spec.KEY_MRI, names.MRI_ENCODER, names.MRI),
                                    (spec.KEY_CLINICAL, names.CLINICAL_ENCODER, names.CLINICAL)):
            if modality in geometry.modalities:
                x = item[modality].float().unsqueeze(0)
                add(part, label, {key: x})
                embeddings[modality] = getattr(model, part)(x)
                whole[key] = x
        add(names.FUSION_HEAD, label, {**{names.embedding(m): embeddings[m] for m in geometry.modalities},
                                   names.PRESENCE: presence})
        add(names.WHOLE_MODEL, label, {**whole, names.PRESENCE: presence})
    return cases


# ------------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    from export.formats import FORMATS
    from export.geometry import probe_geometry
    from export.manifest import ManifestError, load_manifest
    from export.source import SourceError, Target, load_source

    parser = argparse.ArgumentParser(prog="python -m export.parity", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("export_dir", type=Path, help="an export directory (exports/<entry>)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="PyTorch checkpoint to compare with (default: the manifest's source checkpoint)")
    parser.add_argument("--data-dir", type=Path, default=None, help="cohort directory for real-input cases")
    parser.add_argument("--max-patients", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=None, help="override the precision's tolerance")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    try:
        manifest = load_manifest(args.export_dir, require_parity=False)
        checkpoint = args.checkpoint or Path(manifest["source_checkpoint"]["path"])
        source = load_source(Target(checkpoint, requested_entry=manifest["entry"]), version=manifest["version"])
        if source.checkpoint_sha256 != manifest["source_checkpoint"]["sha256"]:
            print(f"warning: {checkpoint} differs from the checkpoint this export was made from "
                  f"(sha256 {manifest['source_checkpoint']['sha256'][:12]}...)", file=sys.stderr)
        geometry = probe_geometry(source.model, source.config)
        real = real_cases(args.data_dir, source.config, source.model, geometry,
                          source.payload.get("preprocessing"), args.max_patients) \
            if args.data_dir else None
        report = check_parity(args.export_dir, FORMATS[manifest["format"]], source.model, geometry,
                              {n: p["file"] for n, p in manifest["parts"].items()}, manifest["precision"],
                              tolerance=args.tolerance, real_cases=real)
    except (ManifestError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.to_markdown())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
