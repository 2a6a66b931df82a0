"""Masked reductions shared by MIL pooling and fusion (export-friendly: no data-dependent Python branches)."""
from __future__ import annotations

import torch


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1,
                   empty_uniform: bool = False) -> torch.Tensor:
    """Softmax over entries where `mask` is True; masked entries get exactly 0.

    A slice with no valid entry gets all zeros, or (empty_uniform=True) uniform weights over every entry.
    """
    mask = mask.bool()
    filled = torch.where(mask, scores, torch.full_like(scores, torch.finfo(scores.dtype).min))
    weights = torch.softmax(filled, dim=dim) * mask
    total = weights.sum(dim=dim, keepdim=True)
    weights = weights / total.clamp_min(torch.finfo(scores.dtype).tiny)
    if empty_uniform:
        uniform = torch.full_like(weights, 1.0) / weights.shape[dim]
        weights = torch.where(mask.any(dim=dim, keepdim=True), weights, uniform)
    return weights


def presence_weights(presence: torch.Tensor) -> torch.Tensor:
    """Uniform weights over present entries [B,M] (uniform over all when none is present)."""
    return masked_softmax(torch.zeros_like(presence, dtype=torch.float32), presence, empty_uniform=True)
