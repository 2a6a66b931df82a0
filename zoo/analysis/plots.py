"""Matplotlib figure helpers (Agg backend, atomic PNG writes) shared by zoo.analysis.sweep and zoo.analysis.viz."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from zoo.atomic import atomic_write  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | os.PathLike, dpi: int = 120) -> Path:
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"), suffix=".png")
    finally:
        plt.close(fig)
    return Path(path)


def bar_chart(labels: Sequence[str], values: Sequence[float], path: str | os.PathLike, *,
              errors: Sequence[float] | None = None,
              ylabel: str = "", title: str = "", ylim: tuple[float, float] | None = (0.0, 1.0),
              colors: Sequence[str] | None = None) -> Path:
    """One bar per label with value annotations (and error bars when given)."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 2), 4.5))
    values = np.nan_to_num(np.asarray(values, dtype=float))
    bars = ax.bar(range(len(labels)), values, yerr=errors, capsize=4 if errors is not None else 0, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0,
                  ha="right" if len(labels) > 3 else "center")
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value:.3f}", ha="center", va="bottom",
                fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def grouped_bar_chart(groups: Sequence[str], series: dict[str, Sequence[float]], path: str | os.PathLike, *,
                      ylabel: str = "", title: str = "", ylim: tuple[float, float] | None = (0.0, 1.0),
                      errors: dict[str, Sequence[float]] | None = None, annotate: bool = False) -> Path:
    """Bars grouped by `groups` (x axis), one colour per key of `series` (error bars from `errors[key]`)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(groups) + 2), 4.5))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        raw = np.asarray(values, float)
        values = np.nan_to_num(raw)
        err = (errors or {}).get(name)
        bars = ax.bar(np.arange(len(groups)) + i * width - 0.4 + width / 2, values, width, label=name,
                      yerr=None if err is None else np.nan_to_num(np.asarray(err, float)),
                      capsize=3 if err is not None else 0)
        if annotate:  # a missing value (a late-fusion row has no validation score) gets no bar label
            for bar, value, known in zip(bars, values, ~np.isnan(raw)):
                if known:
                    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value:.2f}", ha="center",
                            va="bottom", fontsize=7)
    rotate = len(groups) > 4
    ax.set_xticks(range(len(groups)), groups, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
