"""python -m zoo.crossval ...: the command line of `zoo.analysis.crossval` (a thin entry point; `--help` lists the
options)."""
import sys

from zoo.analysis.crossval import main

if __name__ == "__main__":
    sys.exit(main())
