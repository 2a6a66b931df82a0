"""python -m zoo.pretrain ...: label-free patch-encoder pretraining (a thin entry point; `--help` lists the options)."""
import sys

from zoo.training.pretrain_cli import main

if __name__ == "__main__":
    sys.exit(main())
