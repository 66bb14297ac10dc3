"""Image grids of visualised units (PNG), drawn on matplotlib.figure.Figure as the report's figures
are (no pyplot, no interactive backend), written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..atomic import atomic_file

COLUMNS = 8
DPI = 100


def draw_grid(images, units: Sequence[int], title: str, *, columns: int = COLUMNS) -> Figure:
    """One panel per image ((N, 3, H, W) in [0, 1]), titled with its unit, ``columns`` per row."""
    images = np.asarray(images, dtype=np.float32)
    count = max(1, len(images))
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, unit in zip(axes, images, units):
        ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1), interpolation="nearest")
        ax.set_title(f"unit {unit}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def write_grid(path: str | Path, images, units: Sequence[int], title: str) -> Path:
    path = Path(path)
    with atomic_file(path) as f:
        draw_grid(images, units, title).savefig(f, format="png", dpi=DPI)
    return path
