"""Pretrain the self-supervised patch encoder of a recipe on a cohort's own patches, without labels.

    python -m zoo.pretrain [--data-dir DIR] [--recipe cpu] [--entry pathology_only] [key=value ...]

Makes sure the cohort is tiled as the recipe tiles it, then reuses or trains the artifact
DIR/pretrained/<backbone>-in<size>-<tiling>-<key>/ (model.safetensors + provenance.json) and prints its path.
Training (python -m zoo.train) does the same on its own when the artifact is absent; this command makes it
ahead of time (e.g. once, before a sweep's parallel runs). Overrides are the entry's config keys, e.g.
model.modalities.pathology.pretraining.epochs=2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from zoo.cli_help import HelpFormatter
from zoo.spec import RECIPES


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zoo.pretrain", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    parser.add_argument("--data-dir", default=None,
                        help="cohort directory (default: data.data_dir of the config, generated when absent)")
    parser.add_argument("--recipe", choices=RECIPES, default="cpu", help="recipe whose pathology encoder is made")
    parser.add_argument("--entry", default="pathology_only", help="entry whose config (under --recipe) is used")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from zoo.config import ConfigError
    from zoo.training.pipeline import (
        TrainingSetupError,
        ensure_data,
        prepare_pretrained_encoder,
        resolve_entry_config,
    )

    args = parse_args(argv)
    try:
        _entry, config = resolve_entry_config(args.entry, args.recipe, None, args.overrides)
        if args.data_dir is not None:
            config["data"]["data_dir"] = str(args.data_dir)
        ensure_data(config, generate_if_missing=args.data_dir is None, progress=True, log=print)
        provenance = prepare_pretrained_encoder(config, progress=True, log=print)
    except (TrainingSetupError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if provenance is None:
        backbone = config["model"]["modalities"].get("pathology", {}).get("backbone")
        print(f"error: the {args.recipe} recipe's patch encoder ({backbone}) is not a self-supervised one (or it "
              "is given a weights file): nothing to pretrain; set model.modalities.pathology.backbone=cnn_ssl",
              file=sys.stderr)
        return 2
    print(json.dumps({"weights": config["model"]["modalities"]["pathology"]["weights"], **provenance}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
