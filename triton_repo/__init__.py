"""Serve exported zoo entries with NVIDIA Triton: repository builder, server launcher, gRPC client.

Reads export manifests (`exports/<entry>/manifest.json`); never builds a PyTorch model to serve.
"""
