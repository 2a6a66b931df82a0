"""Metrics, atomic checkpoint I/O and the LR schedule."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from zoo.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from zoo.spec import CLASS_NAMES
from zoo.training.metrics import classification_metrics, format_results_table, macro_f1_interval
from zoo.training.trainer import inverse_frequency_weights, warmup_cosine_factor


def test_metrics_perfect_and_confused_predictions():
    labels = np.array([0, 1, 2, 3, 0, 1])
    perfect = np.eye(4)[labels]
    m = classification_metrics(labels, perfect)
    assert m["f1_macro"] == 1.0 and m["auc_macro_ovr"] == 1.0 and m["accuracy"] == 1.0
    assert np.trace(np.array(m["confusion_matrix"])) == 6
    swapped = np.eye(4)[[1, 0, 2, 3, 1, 0]]  # classes 0 and 1 always swapped
    m = classification_metrics(labels, swapped)
    assert m["per_class"][CLASS_NAMES[0]]["recall"] == 0.0
    assert m["per_class"][CLASS_NAMES[2]]["f1"] == 1.0
    assert m["confusion_matrix"][0][1] == 2
    table = format_results_table(m)
    assert "macro F1" in table and CLASS_NAMES[3] in table


def test_f1_interval_holds_the_score_and_narrows_with_more_patients():
    rng = np.random.default_rng(0)

    def noisy(n):  # 70 % right, the rest uniform over the classes
        labels = rng.integers(0, 4, n)
        return labels, np.where(rng.random(n) < 0.7, labels, rng.integers(0, 4, n))

    widths = {}
    for n in (36, 500):
        labels, predicted = noisy(n)
        m = classification_metrics(labels, np.eye(4)[predicted], f1_interval=True)
        low, high = m["f1_macro_ci95"]
        assert low < m["f1_macro"] < high
        widths[n] = high - low
        assert f"interval {low:.3f}-{high:.3f}" in format_results_table(m)
    assert widths[500] < widths[36] / 2  # the width shrinks about as 1/sqrt(n): 3.7x here
    labels = np.array([0, 1, 2, 3] * 5)
    assert macro_f1_interval(labels, labels, 4) == [1.0, 1.0]  # perfect on every resample
    assert "f1_macro_ci95" not in classification_metrics(labels, np.eye(4)[labels])  # per-epoch metrics skip it


def test_metrics_auc_ignores_classes_absent_from_labels_and_rejects_empty():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0, 0], [0.8, 0.2, 0, 0], [0.3, 0.7, 0, 0], [0.2, 0.8, 0, 0]])
    assert classification_metrics(labels, probs)["auc_macro_ovr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.zeros(0, int), np.zeros((0, 4)))


def test_checkpoint_roundtrip_is_weights_only_safe_and_atomic(tmp_path):
    path = tmp_path / "run" / "last.pt"
    state = {"w": torch.arange(4.0)}
    rng = capture_rng_state()
    save_checkpoint(path, {"entry": "e", "config": {"a": (1, 2), "p": tmp_path}, "state_dict": state,
                           "metrics": {"f1": np.float64(0.5)}, "rng": rng})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["a"] == [1, 2] and payload["config"]["p"] == str(tmp_path)
    assert torch.equal(payload["state_dict"]["w"], state["w"])
    expected = torch.rand(5)
    restore_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(5), expected)


def test_saved_checkpoint_is_readable_by_others(tmp_path):
    """best.pt / last.pt get 0666 & ~umask (a Triton server or colleague under another uid reads them)."""
    import stat

    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "best.pt", {"entry": "e", "config": {}, "state_dict": {}})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(tmp_path / "x.pt", {"entry": "e", "config": {}, "state_dict": {}, "bad": object()})
    assert not os.path.exists(tmp_path / "x.pt")


def test_warmup_then_cosine_schedule():
    factors = [warmup_cosine_factor(s, 10, warmup_epochs=2, total_epochs=10) for s in range(100)]
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:20], factors[1:20]))  # warmup rises
    assert all(a >= b for a, b in zip(factors[20:], factors[21:]))  # cosine falls
    assert factors[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_inverse_frequency_weights():
    w = inverse_frequency_weights([0, 0, 0, 1, 2, 2], 4)
    assert w.tolist() == pytest.approx([0.5, 1.5, 0.75, 0.0])
