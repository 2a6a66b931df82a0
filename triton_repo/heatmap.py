"""Patch-attention heatmap: one panel per slide, each patch a square at its level-0 position."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.atomic import atomic_path


def write_heatmap(prediction, path: str | Path, patch_size: int | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    if prediction.patch_attention is None:
        raise ValueError("no pathology in this prediction: nothing to draw")
    coords, attention = prediction.coords, prediction.patch_attention
    slides = prediction.slide_ids
    fig, axes = plt.subplots(1, len(slides), figsize=(5 * len(slides), 5), squeeze=False)
    norm = matplotlib.colors.Normalize(vmin=0.0, vmax=float(attention.max()) or 1.0)
    for index, (ax, slide_id) in enumerate(zip(axes[0], slides)):
        rows = coords[:, 0] == index
        xy = coords[rows, 1:]
        step = patch_size or (int(np.min(np.diff(np.unique(xy[:, 0])))) if len(np.unique(xy[:, 0])) > 1 else 256)
        squares = PatchCollection([Rectangle((x, y), step, step) for x, y in xy], cmap="inferno", norm=norm)
        squares.set_array(attention[rows])
        ax.add_collection(squares)
        ax.set_xlim(xy[:, 0].min(), xy[:, 0].max() + step)
        ax.set_ylim(xy[:, 1].max() + step, xy[:, 1].min())
        ax.set_aspect("equal")
        ax.set_title(slide_id)
        fig.colorbar(squares, ax=ax, fraction=0.046, label="attention")
    fig.suptitle(f"{prediction.predicted_class} ({prediction.probabilities.max():.2f})")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
