"""python -m zoo.sweep ...: the command line of `zoo.analysis.sweep` (a thin entry point; `--help` lists the
options)."""
import sys

from zoo.analysis.sweep import main

if __name__ == "__main__":
    sys.exit(main())
