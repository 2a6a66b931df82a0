"""Kept as an import path only: the implementation is `zoo.lookup` (torch-free, shared by every layer)."""
from zoo.lookup import did_you_mean, lookup  # noqa: F401

__all__ = ["did_you_mean", "lookup"]
