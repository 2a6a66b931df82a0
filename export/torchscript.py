"""python -m export.torchscript [ENTRY_OR_CHECKPOINT ...] [--output-dir exports_torchscript] [--overwrite]"""
import sys

from export.cli import main

if __name__ == "__main__":
    sys.exit(main("torchscript"))
