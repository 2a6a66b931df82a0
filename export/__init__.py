"""Export trained zoo models as served parts (ONNX or TorchScript) with a manifest and a parity report.

    python -m export.onnx [ENTRY_OR_CHECKPOINT ...]        # exports/<entry>/
    python -m export.torchscript [ENTRY_OR_CHECKPOINT ...] # exports_torchscript/<entry>/
    python -m export.parity EXPORT_DIR [--data-dir DIR]

`export.manifest.load_manifest(dir)` reads and validates an export for downstream users.
"""
