"""The shared command line of `python -m export.onnx` and `python -m export.torchscript`."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from export.formats import FORMATS, ONNX_EXPORTERS, ExportError
from export.manifest import ManifestError
from export.parts import ParitySizes
from export.pipeline import DEFAULT_OPSET, export_checkpoint
from export.source import CHECKPOINT_NAME, DEFAULT_CHECKPOINT_ROOT, SourceError, resolve_targets
from zoo.cli_help import HelpFormatter

EXIT_OK, EXIT_PARITY_FAILED, EXIT_ERROR = 0, 1, 2
EXPECTED_ERRORS = (SourceError, ExportError, ManifestError, FileExistsError, KeyError, ValueError)


def sizes_arg(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return values


def parse_args(fmt_name: str, argv: Sequence[str] | None) -> argparse.Namespace:
    fmt = FORMATS[fmt_name]
    defaults = ParitySizes()
    parser = argparse.ArgumentParser(
        prog=f"python -m export.{fmt_name}", formatter_class=HelpFormatter,
        description=f"Export trained zoo checkpoints as {fmt_name} parts + manifest.json, checked for parity.")
    parser.add_argument("targets", nargs="*", metavar="ENTRY_OR_CHECKPOINT",
                        help=f"entry names ({DEFAULT_CHECKPOINT_ROOT}/<entry>/{CHECKPOINT_NAME}) or checkpoint "
                             "paths; "
                             f"default: every {DEFAULT_CHECKPOINT_ROOT}/*/{CHECKPOINT_NAME}")
    parser.add_argument("--output-dir", type=Path, default=Path(fmt.default_output_dir),
                        help=f"exports go to OUTPUT_DIR/<entry> (default {fmt.default_output_dir})")
    parser.add_argument("--checkpoint-root", type=Path, default=DEFAULT_CHECKPOINT_ROOT,
                        help="where entry names are looked up (default outputs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR/<entry>")
    parser.add_argument("--version", default=None,
                        help="entry version the checkpoint must have (default: the registry's current version)")
    if fmt_name == "onnx":
        parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
        parser.add_argument("--exporter", choices=ONNX_EXPORTERS, default="dynamo",
                            help="dynamo: torch.export-based (default; falls back to legacy per part on failure); "
                                 "legacy: the TorchScript-based dynamo=False exporter (much faster)")
        precision = parser.add_mutually_exclusive_group()
        precision.add_argument("--fp16", action="store_true",
                               help="fp16 weights and compute (inputs/outputs stay float32); parity tolerance 1e-2")
        precision.add_argument("--int8", action="store_true",
                               help="int8 patch encoder (static quantization calibrated on --data-dir's train-split "
                                    "tissue patches; other parts fp32); parity tolerance 1e-1 on it")
    parser.add_argument("--data-dir", type=Path, default=None, help="also check parity on real cohort patients")
    parser.add_argument("--max-patients", type=int, default=2, help="real patients per parity run (default 2)")
    parser.add_argument("--parity-patches", type=sizes_arg, default=defaults.patches,
                        help="patch counts through the patch encoder / whole model (default %(default)s)")
    parser.add_argument("--parity-bags", type=sizes_arg, default=defaults.bag,
                        help="bag sizes through mil_pool (default %(default)s)")
    parser.add_argument("--parity-batches", type=sizes_arg, default=defaults.batch,
                        help="batch sizes through the batched encoders (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(fmt_name: str, argv: Sequence[str] | None = None) -> int:
    args = parse_args(fmt_name, argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        targets = resolve_targets(args.targets, args.checkpoint_root)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    sizes = ParitySizes(args.parity_patches, args.parity_bags, args.parity_batches)
    fmt = FORMATS[fmt_name]
    if hasattr(args, "exporter"):
        fmt = dataclasses.replace(fmt, exporter=args.exporter)
    precision = "fp16" if getattr(args, "fp16", False) else "int8" if getattr(args, "int8", False) else "fp32"
    failures: list[str] = []
    parity_failures: list[str] = []
    for target in tqdm(targets, desc=f"export ({fmt_name})", unit="entry",
                       disable=args.no_progress or len(targets) < 2):
        try:
            result = export_checkpoint(
                target, fmt, args.output_dir, opset=getattr(args, "opset", DEFAULT_OPSET),
                precision=precision, overwrite=args.overwrite, version=args.version, sizes=sizes,
                data_dir=args.data_dir, max_patients=args.max_patients, progress=not args.no_progress)
        except EXPECTED_ERRORS as exc:
            failures.append(target.label)
            print(f"error: {target.label}: {exc}", file=sys.stderr)
            continue
        summary = result.report.summary()
        status = "parity ok" if result.passed else "PARITY FAILED"
        print(f"{result.entry}: {result.directory} ({status}: {summary['checks']} checks, max |diff| on "
              f"probabilities {summary['max_abs_diff_probabilities']:.2g}, tolerance {result.report.tolerance:g}; "
              f"see {result.directory / 'parity_report.md'})")
        if not result.passed:
            parity_failures.append(result.entry)
    if failures:
        print(f"{len(failures)} of {len(targets)} export(s) failed: {', '.join(failures)}", file=sys.stderr)
        return EXIT_ERROR
    if parity_failures:
        print(f"parity failed for {', '.join(parity_failures)}; these exports must not be served", file=sys.stderr)
        return EXIT_PARITY_FAILED
    return EXIT_OK
