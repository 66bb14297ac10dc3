"""The width gain g of docs/definitions.md."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def gain(widths: Sequence[float], values: Sequence[float]) -> float:
    """g = 2^b, b the least-squares slope of log2(value) on log2(width).

    g > 2 means the quantity more than doubles when the width doubles.
    """
    w = np.asarray(widths, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if w.shape != v.shape or w.ndim != 1:
        raise ValueError("widths and values must be sequences of the same length")
    if len(w) < 2 or len(np.unique(w)) < 2:
        raise ValueError("the gain needs at least two distinct widths")
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(v))) or np.any(w <= 0) or np.any(v <= 0):
        raise ValueError("the gain needs positive, finite widths and values")
    x, y = np.log2(w), np.log2(v)
    slope = float(np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2))
    return float(2.0 ** slope)
