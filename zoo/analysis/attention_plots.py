"""Attention figures: top-k patches (seed 9.1), whole-slide heatmap over the thumbnail (CLAM-style), fusion bars
(9.2)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from zoo.analysis.plots import bar_chart, grouped_bar_chart, plt, save_figure


def percentile_scores(attention: np.ndarray) -> np.ndarray:
    """Rank-normalise attention to [0, 1] within a slide, as CLAM's heatmaps do (robust to the softmax's scale)."""
    attention = np.asarray(attention, dtype=np.float64)
    if attention.size <= 1:
        return np.ones_like(attention)
    ranks = attention.argsort(kind="stable").argsort(kind="stable")
    return ranks / (attention.size - 1)


def top_k_figure(patches: np.ndarray, weights: Sequence[float], titles: Sequence[str], path: str | os.PathLike,
                 suptitle: str = "") -> Path:
    """Grid of uint8 [k,3,H,W] patches, titled with their attention weights."""
    k = len(patches)
    cols = min(5, max(k, 1))
    rows = max(1, -(-k // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, patch, weight, title in zip(axes.flat, patches, weights, titles):
        ax.imshow(np.asarray(patch).transpose(1, 2, 0))
        ax.set_title(f"{title}\nattention {weight:.4f}", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return save_figure(fig, path)


def heatmap_figure(thumbnail: np.ndarray, scale: float, coords: np.ndarray, patch_size_level0: float,
                   attention: np.ndarray, path: str | os.PathLike, title: str = "",
                   tumour_mask: np.ndarray | None = None) -> Path:
    """Thumbnail with each patch's rank-normalised attention painted over its footprint (scale = thumb px /
    level-0 px)."""
    h, w = thumbnail.shape[:2]
    canvas = np.full((h, w), np.nan)
    side = max(int(round(patch_size_level0 * scale)), 1)
    for (x, y), score in zip(np.asarray(coords), percentile_scores(attention)):
        x0, y0 = int(x * scale), int(y * scale)
        canvas[y0:y0 + side, x0:x0 + side] = score
    panels = 3 if tumour_mask is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5 * h / max(w, 1) + 0.8))
    axes[0].imshow(thumbnail)
    axes[0].set_title("slide")
    axes[1].imshow(thumbnail)
    overlay = axes[1].imshow(np.ma.masked_invalid(canvas), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[1].set_title("attention (percentile within slide)")
    fig.colorbar(overlay, ax=axes[1], fraction=0.046, pad=0.04)
    if tumour_mask is not None:
        axes[2].imshow(thumbnail)
        axes[2].imshow(np.ma.masked_where(~tumour_mask, tumour_mask), cmap="autumn", alpha=0.45,
                       extent=(0, w, h, 0))
        axes[2].set_title("ground-truth tumour")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def fusion_bar_figure(modalities: Sequence[str], weights: Sequence[float], path: str | os.PathLike, title: str) -> Path:
    return bar_chart(list(modalities), list(weights), path, ylabel="fusion attention weight", title=title,
                     colors=["#FF6B6B", "#4ECDC4", "#45B7D1"][: len(modalities)])


def fusion_by_class_figure(class_names: Sequence[str], modalities: Sequence[str], mean_weights: np.ndarray,
                           path: str | os.PathLike, title: str) -> Path:
    """mean_weights [K, M]: average fusion attention per true class."""
    series = {m: mean_weights[:, j].tolist() for j, m in enumerate(modalities)}
    return grouped_bar_chart(list(class_names), series, path, ylabel="mean fusion attention weight", title=title)
