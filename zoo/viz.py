"""python -m zoo.viz ...: the command line of `zoo.analysis.viz` (a thin entry point; `--help` lists the options)."""
import sys

from zoo.analysis.viz import main

if __name__ == "__main__":
    sys.exit(main())
