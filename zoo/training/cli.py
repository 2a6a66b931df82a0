"""Train one zoo entry end to end.

    python -m zoo.train <entry> [--config FILE] [--data-dir DIR] [--recipe gpu|cpu|tiny] [--output-dir DIR]
                        [--resume] [key=value ...]

Resolves the entry's config, makes sure the cohort exists (generating the quickstart synthetic cohort on a
fresh clone), caches frozen patch-encoder features, trains, evaluates the best checkpoint on the test split
and prints the results table. `torchrun --nproc_per_node N -m zoo.train <entry>` trains with DDP.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from zoo.cli_help import HelpFormatter
from zoo.spec import RECIPES
from zoo.training import distributed as ddp
from zoo.training.pipeline import TrainingSetupError, run_training


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zoo.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("entry", help="zoo entry name, e.g. attention, gated-path_mri, pathology_only")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. training.epochs=5")
    parser.add_argument("--config", default=None, help="YAML file of config overrides applied over the entry")
    parser.add_argument("--data-dir", default=None, help="cohort directory (default: data.data_dir of the config)")
    parser.add_argument("--recipe", choices=RECIPES, default=None,
                        help="default: gpu when CUDA is available, else cpu")
    parser.add_argument("--output-dir", default=None, help="default: outputs/<entry>")
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/last.pt")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from zoo.config import ConfigError

    args = parse_args(argv)
    ddp.init_from_env()
    try:
        run_training(args.entry, config_file=args.config, data_dir=args.data_dir, recipe=args.recipe,
                     output_dir=args.output_dir, resume=args.resume, overrides=args.overrides)
    except (TrainingSetupError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        ddp.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
