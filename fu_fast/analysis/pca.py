"""PCA redundancy and |r| correlations from an accumulated covariance (docs/definitions.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HISTOGRAM_BINS = 50   # |r| histogram on [0, 1]: what a violin plot of a layer's correlations needs


SIMILAR_ABS_R = 0.5      # a unit is "similar" to another when |r| >= this (the authors' similarity count)
REPORTED_SHARE = 0.8     # components_80: the components for this share, reported beside the 1 - t_pca count


@dataclass(frozen=True)
class Redundancy:
    components: int
    redundant_units: int
    explained_variance_ratio: list[float]

    def components_for(self, share: float) -> int:
        """The fewest components explaining ``share`` of the variance (0 when nothing varies)."""
        return _components(np.asarray(self.explained_variance_ratio), share)


def _components(ratios: np.ndarray, share: float) -> int:
    cumulative = np.cumsum(ratios)
    if not len(ratios) or cumulative[-1] <= 0.0:
        return 0
    # The smallest k with cumulative[k-1] >= share; rounding may leave the full sum a hair
    # below 1, which must still count as "all of the variance".
    target = min(share, float(cumulative[-1]))
    return int(np.searchsorted(cumulative, target, side="left")) + 1


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
    components = _components(ratios, 1.0 - pca_tolerance)
    return Redundancy(components, channels - components, [float(r) for r in ratios])


@dataclass(frozen=True)
class Correlation:
    mean_abs_r: float | None
    abs_r_quantiles: dict[str, float] | None
    abs_r_histogram: list[int] | None = None
    similar_units: int | None = None   # units with |r| >= SIMILAR_ABS_R to some other unit


def _abs_r(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the units that vary, their |r| matrix clipped to [0, 1])."""
    std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    live = np.flatnonzero(std > 0.0)
    if len(live) < len(std):
        covariance, std = covariance[np.ix_(live, live)], std[live]
    sub = np.abs(covariance / np.outer(std, std))
    np.clip(sub, 0.0, 1.0, out=sub)
    return live, sub


def correlation(covariance: np.ndarray) -> Correlation:
    """|r| over all pairs of units that vary (a constant unit has no correlation)."""
    live, sub = _abs_r(covariance)
    if len(live) < 2:
        return Correlation(None, None)
    upper = sub[np.triu(np.ones(sub.shape, dtype=bool), k=1)]   # row by row, as triu_indices orders them
    values = np.quantile(upper, QUANTILES)
    histogram = np.histogram(upper, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
    np.fill_diagonal(sub, 0.0)
    similar = int((sub.max(axis=1) >= SIMILAR_ABS_R).sum())
    return Correlation(float(upper.mean()), {str(q): float(v) for q, v in zip(QUANTILES, values)},
                       [int(c) for c in histogram], similar)


def mean_abs_r_per_unit(covariance: np.ndarray) -> np.ndarray:
    """Each unit's mean |r| to the other units that vary; NaN for a unit that does not vary."""
    live, r = _abs_r(covariance)
    result = np.full(covariance.shape[0], np.nan)
    if len(live) < 2:
        return result
    np.fill_diagonal(r, 0.0)
    result[live] = r.sum(axis=1) / (len(live) - 1)
    return result


@dataclass(frozen=True)
class Selectivity:
    """Class selectivity of a layer's units: (mu_max - mu_rest) / (mu_max + mu_rest), with mu_max the
    largest class mean of a unit's activation and mu_rest the mean of its other class means
    (Morcos et al.), for units whose class means are all >= 0 and not all 0."""
    units: int                               # units for which it is defined
    mean: float | None
    quantiles: dict[str, float] | None
    values: list[float | None]               # per unit (None where it is not defined)


def selectivity(class_sums: np.ndarray, class_counts: np.ndarray) -> Selectivity | None:
    """From per-class sums (classes, C) of each example's unit activations (spatial mean for conv
    and token layers) and per-class example counts; None with fewer than two classes seen."""
    seen = class_counts > 0
    if seen.sum() < 2:
        return None
    means = class_sums[seen] / class_counts[seen, None]                     # (classes seen, C)
    top = means.max(axis=0)
    rest = (means.sum(axis=0) - top) / (means.shape[0] - 1)
    defined = (means.min(axis=0) >= 0.0) & (top + rest > 0.0)
    values = np.where(defined, (top - rest) / np.where(defined, top + rest, 1.0), np.nan)
    kept = values[defined]
    if not len(kept):
        return Selectivity(0, None, None, [None] * len(values))
    return Selectivity(int(len(kept)), float(kept.mean()),
                       {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(kept, QUANTILES))},
                       [None if np.isnan(v) else float(v) for v in values])
