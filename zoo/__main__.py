"""`python -m zoo`: list the zoo's entries; print an entry's resolved config; validate a config file.

    python -m zoo                                   # table of every entry
    python -m zoo list --include 'attention*' --exclude '*-mri_clin'
    python -m zoo config attention-path_mri --recipe tiny --set training.epochs=5
    python -m zoo validate configs/breast_cancer_config.yaml --set model.fusion.type=gated
"""
from __future__ import annotations

import argparse
import sys

from zoo.cli_help import HelpFormatter
from zoo.config import ConfigError, dump_config, load_config, save_config
from zoo.registry import RECIPES, get_entry, list_entries


def count_parameters(name: str, recipe: str) -> int:
    """Parameter count of the entry's model, built on the meta device (no memory, no weights loaded)."""
    import torch

    from zoo.models.builder import build_model_from_config

    config = get_entry(name).config(recipe)
    with torch.device("meta"):  # shapes only: no pretrained weights are looked for (cnn_ssl's are made per cohort)
        model = build_model_from_config(config["model"], load_pretrained=False)
    return sum(p.numel() for p in model.parameters())


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_list(args) -> int:
    rows = []
    for name in list_entries(args.include, args.exclude):
        entry = get_entry(name)
        rows.append([name, "+".join(entry.modalities), entry.fusion, f"{count_parameters(name, args.recipe):,}",
                     ",".join(entry.recipes), entry.version])
    print(format_table(rows, ["name", "modalities", "fusion", f"params ({args.recipe})", "recipes", "version"]))
    return 0


def cmd_config(args) -> int:
    config = get_entry(args.name).config(args.recipe, args.set)
    if args.output:
        print(f"wrote {save_config(config, args.output)}")
    else:
        print(dump_config(config), end="")
    return 0


def cmd_validate(args) -> int:
    load_config(args.path, args.set)
    print(f"{args.path}: valid")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zoo", description="Breast-cancer multimodal fusion model zoo",
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command")
    ls = sub.add_parser("list", formatter_class=HelpFormatter, help="table of entries (default command)")
    ls.add_argument("--include", nargs="*", default=None, help="fnmatch patterns of names to keep")
    ls.add_argument("--exclude", nargs="*", default=None, help="fnmatch patterns of names to drop")
    ls.add_argument("--recipe", default="cpu", choices=RECIPES, help="recipe whose models are counted")
    ls.set_defaults(func=cmd_list)
    cfg = sub.add_parser("config", formatter_class=HelpFormatter,
                         help="print (or --output) an entry's resolved config")
    cfg.add_argument("name")
    cfg.add_argument("--recipe", default="cpu", choices=RECIPES)
    cfg.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. training.epochs=5")
    cfg.add_argument("--output", help="write the YAML here (atomically) instead of stdout")
    cfg.set_defaults(func=cmd_config)
    val = sub.add_parser("validate", formatter_class=HelpFormatter, help="check a config file against the schema")
    val.add_argument("path")
    val.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    val.set_defaults(func=cmd_validate)
    p.set_defaults(func=cmd_list, include=None, exclude=None, recipe="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, KeyError, ValueError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
