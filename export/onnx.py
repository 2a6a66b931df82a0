"""python -m export.onnx [ENTRY_OR_CHECKPOINT ...] [--output-dir exports] [--opset N] [--fp16] [--overwrite]

Runs as a module; `import onnx` elsewhere still finds the onnx package (absolute imports).
"""
import sys

from export.cli import main

if __name__ == "__main__":
    sys.exit(main("onnx"))
