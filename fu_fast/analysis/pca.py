"""PCA redundancy and |r| correlations from an accumulated covariance (docs/definitions.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HISTOGRAM_BINS = 50   # |r| histogram on [0, 1]: what a violin plot of a layer's correlations needs


@dataclass(frozen=True)
class Redundancy:
    components: int
    redundant_units: int
    explained_variance_ratio: list[float]


def redundancy(covariance: np.ndarray, pca_tolerance: float) -> Redundancy:
    """k = the fewest components explaining (1 - t_pca) of the variance; redundant = C - k.

    Eigenvalues come from float64 eigh; the tiny negative ones that rounding gives a
    singular covariance are zero variance. Dead or constant units carry no variance and
    so count as redundant; zero total variance gives k = 0.
    """
    channels = covariance.shape[0]
    if not np.isfinite(covariance).all():
        raise ValueError("its activations are too large for float64 sums of squares (the covariance overflows)")
    # The explained-variance ratios do not depend on the covariance's scale; dividing by its
    # largest variance keeps LAPACK's iterations away from overflow for very large activations.
    scale = float(np.abs(np.diag(covariance)).max()) if channels else 0.0
    if scale == 0.0:
        return Redundancy(0, channels, [0.0] * channels)
    # torch's LAPACK, not NumPy's: a second BLAS thread pool beside torch's oversubscribes
    # the cores and can make this 100x slower on a busy machine.
    eigenvalues = torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(covariance / scale))).numpy()
    eigenvalues = np.clip(eigenvalues[::-1], 0.0, None)
    total = float(eigenvalues.sum())
    if total <= 0.0:
        return Redundancy(0, channels, [0.0] * channels)
    ratios = eigenvalues / total
    cumulative = np.cumsum(ratios)
    # The smallest k with cumulative[k-1] >= 1 - t; rounding may leave the full sum a hair
    # below 1, which must still count as "all of the variance".
    target = min(1.0 - pca_tolerance, float(cumulative[-1]))
    components = int(np.searchsorted(cumulative, target, side="left")) + 1
    return Redundancy(components, channels - components, [float(r) for r in ratios])


@dataclass(frozen=True)
class Correlation:
    mean_abs_r: float | None
    abs_r_quantiles: dict[str, float] | None
    abs_r_histogram: list[int] | None = None


def correlation(covariance: np.ndarray) -> Correlation:
    """|r| over all pairs of units that vary (a constant unit has no correlation)."""
    std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    live = np.flatnonzero(std > 0.0)
    if len(live) < 2:
        return Correlation(None, None)
    sub = covariance[np.ix_(live, live)] / np.outer(std[live], std[live])
    upper = np.abs(sub[np.triu_indices(len(live), k=1)])
    np.clip(upper, 0.0, 1.0, out=upper)
    values = np.quantile(upper, QUANTILES)
    histogram = np.histogram(upper, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
    return Correlation(float(upper.mean()), {str(q): float(v) for q, v in zip(QUANTILES, values)},
                       [int(c) for c in histogram])
