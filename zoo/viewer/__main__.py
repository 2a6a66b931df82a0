"""python -m zoo.viewer ...: the command line of `zoo.viewer.cli` (`--help` lists the options)."""
import sys

from zoo.viewer.cli import main

if __name__ == "__main__":
    sys.exit(main())
