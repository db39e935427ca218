"""Pictures of importance, rates and results, as PNG files made with matplotlib.

Used by the importance stage (paper Fig. 2 style unit heatmap, layer bar chart) and by the
report. Only the non-interactive Agg backend is used, so it works on headless machines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_unit_heatmap(
    unit_scores: Sequence[Sequence[float]],
    layers: Sequence[int],
    unit_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "Unit importance (|w * dL/dw|, normalised per unit type)",
) -> Path:
    """Layers x units heatmap; each column is min-max normalised so unit types are comparable."""
    import numpy as np

    plt = _pyplot()
    data = np.array([[math.nan if v is None else v for v in row] for row in unit_scores], dtype=float)
    lo = np.nanmin(data, axis=0, keepdims=True)
    hi = np.nanmax(data, axis=0, keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    norm = (data - lo) / span
    short = [name.removesuffix(".weight").replace("self_attn.", "attn.") for name in unit_names]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(short) + 2), max(3, 0.35 * len(layers) + 1.5)))
    image = ax.imshow(norm, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(short)), short, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=8)
    ax.set_xlabel("unit")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_layer_bars(
    scores: dict[str, Sequence[float]], layers: Sequence[int], path: str | os.PathLike, highlight: Sequence[int] = ()
) -> Path:
    """One bar panel per metric; highlighted layers (e.g. the ones chosen for expansion) in orange."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(scores), 1, figsize=(max(6, 0.35 * len(layers) + 2), 2.2 * len(scores)), squeeze=False)
    for ax, (metric, values) in zip(axes[:, 0], scores.items()):
        colors = ["tab:orange" if layer in highlight else "tab:blue" for layer in layers]
        ax.bar([str(i) for i in layers], values, color=colors)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("layer")
    axes[0, 0].set_title("Layer importance for general competence", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
