"""Output checks run before an engine is timed: it must agree with the eager fp32 PyTorch reference."""
from __future__ import annotations

import numpy as np


def max_abs_diff(got: np.ndarray, ref: np.ndarray, what: str) -> float:
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    return float(np.max(np.abs(got.astype(np.float64) - ref))) if got.size else 0.0


def assert_features_close(got: np.ndarray, ref: np.ndarray, rel_tol: float, engine: str) -> float:
    scale = max(1.0, float(np.max(np.abs(ref))))
    diff = max_abs_diff(got, ref, f"{engine} features")
    assert diff <= rel_tol * scale, f"{engine}: features differ from eager fp32 by {diff:.3g} (> {rel_tol * scale:.3g})"
    return diff


def assert_probabilities_close(got: np.ndarray, ref: np.ndarray, tol: float, engine: str) -> float:
    diff = max_abs_diff(got, ref, f"{engine} probabilities")
    assert abs(float(np.sum(got)) - 1.0) < 1e-3, f"{engine}: probabilities sum to {np.sum(got)}"
    assert diff <= tol, f"{engine}: probabilities differ from eager fp32 by {diff:.3g} (> {tol:.3g})"
    return diff
