"""python -m zoo.features extract ...: the command line of `zoo.training.extract` (a thin entry point)."""
import sys

from zoo.training.extract import main

if __name__ == "__main__":
    sys.exit(main())
