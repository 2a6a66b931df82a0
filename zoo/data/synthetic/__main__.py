"""CLI: ``python -m zoo.data.synthetic --output-dir DIR --num-samples N``."""
from __future__ import annotations

import argparse
import json

from zoo.cli_help import HelpFormatter

from .cohort import COHORT_MANIFEST, DEFAULT_SIGNALS, generate_cohort
from .phenotype import Signals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.data.synthetic", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slide-size", type=int, default=1280,
                   help="longest slide side in px at level 0 (sides vary 80-100%%)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--missing-mri", type=float, default=0.04, help="fraction of patients without MRI")
    p.add_argument("--missing-wsi", type=float, default=0.04, help="fraction of patients without slides")
    for name in ("pathology", "mri", "clinical"):
        p.add_argument(f"--signal-{name}", type=float, default=getattr(DEFAULT_SIGNALS, name),
                       help=f"class separation of the {name} latent (noise units)")
    p.add_argument("--overwrite", action="store_true", help="replace a cohort generated with other parameters")
    a = p.parse_args(argv)
    out = generate_cohort(a.output_dir, a.num_samples, a.seed, slide_size=a.slide_size, workers=a.workers,
                          missing_mri=a.missing_mri, missing_wsi=a.missing_wsi, overwrite=a.overwrite,
                          signals=Signals(a.signal_pathology, a.signal_mri, a.signal_clinical))
    print(json.dumps(json.loads((out / COHORT_MANIFEST).read_text())["counts"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
