"""python -m zoo.train ...: the command line of `zoo.training.cli` (a thin entry point; `--help` lists the options)."""
import sys

from zoo.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
