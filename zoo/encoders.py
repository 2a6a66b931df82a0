"""`python -m zoo.encoders`: the patch-encoder registry, and whether each encoder's weights are on disk.

Looks at the env var (ZOO_WEIGHTS_<NAME>), the default local path and (torchvision backbones) the torch hub
cache; never downloads. Select an encoder with model.modalities.pathology.backbone (+ .weights).
"""
from __future__ import annotations

import argparse
import json
import sys

from zoo.cli_help import HelpFormatter
from zoo.models.encoders.registry import ENCODERS


def rows() -> list[dict]:
    from zoo.models.patch_encoders import find_weights

    table = []
    for record in ENCODERS.values():
        path, how = find_weights(record)
        found = path is not None and path.is_file()
        table.append({
            "name": record.name, "family": record.family, "architecture": record.architecture,
            "dim": record.embedding_dim, "input_size": record.input_size, "interpolation": record.interpolation,
            "crop_pct": record.crop_pct, "mean": list(record.mean), "std": list(record.std),
            "pooling": record.pooling, "licence": record.licence, "env": record.weights_env,
            "weights": f"{path} ({how})" if found else (f"missing: {path} ({how})" if path else how),
            "weights_found": found, "requires_weights": record.requires_weights, "source": record.source,
        })
    return table


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(str(v) for v in values) + ")"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.encoders", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the table as JSON (every field, sources too)")
    args = parser.parse_args(argv)
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for row in table:
        flag = "found" if row["weights_found"] else ("REQUIRED, not found" if row["requires_weights"] else "none")
        print(f"{row['name']:<15} {row['architecture']:<30} dim {row['dim']:<5} {row['input_size']}px "
              f"{row['interpolation']:<8} mean {_fmt(row['mean'])} std {_fmt(row['std'])}")
        print(f"{'':<15} licence: {row['licence']}")
        print(f"{'':<15} weights [{flag}]: {row['weights']}  (env {row['env']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
