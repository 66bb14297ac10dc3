"""Streaming covariance of a layer's units: the position sample and the accumulator.

For a conv layer, every (example, h, w) position is a sample of the C channel units.
At most ``sample_cap`` positions are drawn uniformly without replacement over the whole
evaluation set before the pass; each batch then contributes the drawn positions that
fall inside it. The activation matrix is never held: each batch is merged into float64
running moments (count, mean, centred co-moment), kept on the analysis device, and dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import kernels


class PositionSample:
    """The positions (global flattened index example * spatial + s) sampled for one layer."""

    def __init__(self, examples: int, spatial: int, cap: int | None, seed: int,
                 device: torch.device | str = "cpu"):
        total = examples * spatial
        if cap is None or cap >= total:
            self.positions = np.arange(total, dtype=np.int64)
        else:
            rng = np.random.default_rng(seed)
            self.positions = np.sort(rng.choice(total, size=cap, replace=False).astype(np.int64))
        self.spatial = spatial
        # The sample lives where the activations are: a batch's rows are then a slice of it,
        # found on the host (searchsorted) and cut on the device without a transfer.
        self._on_device = torch.from_numpy(self.positions).to(device)

    def __len__(self) -> int:
        return len(self.positions)

    def rows_in_batch(self, first_example: int, batch: int) -> torch.Tensor:
        """The sampled positions inside examples [first, first + batch), relative to the batch."""
        start = first_example * self.spatial
        stop = (first_example + batch) * self.spatial
        lo, hi = np.searchsorted(self.positions, [start, stop])
        return self._on_device[lo:hi] - start


class CovarianceAccumulator:
    """float64 running moments of C units, merged batch by batch (Chan et al.)."""

    def __init__(self, channels: int, device: torch.device | str = "cpu"):
        self.count = torch.zeros(1, dtype=torch.float64, device=device)
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.comoment = torch.zeros(channels, channels, dtype=torch.float64, device=device)

    @property
    def samples(self) -> int:
        return int(self.count.item())

    def update(self, activation: torch.Tensor, rows: torch.Tensor) -> None:
        kernels.covariance_accumulate(activation, rows, self.count, self.mean, self.comoment)

    def merge(self, count: torch.Tensor, mean: torch.Tensor, comoment: torch.Tensor) -> None:
        """Fold in another accumulator's moments (Chan et al.'s pairwise update)."""
        n_a, n_b = float(self.count), float(count)
        if n_b == 0:
            return
        n = n_a + n_b
        delta = mean - self.mean
        self.mean += delta * (n_b / n)
        self.comoment += comoment + torch.outer(delta, delta) * (n_a * n_b / n)
        self.count += n_b

    def state(self) -> torch.Tensor:
        """count, mean and co-moment in one float64 vector (for collective communication)."""
        return torch.cat([self.count, self.mean, self.comoment.flatten()])

    def merge_state(self, state: torch.Tensor) -> None:
        c = self.mean.numel()
        self.merge(state[:1], state[1:1 + c], state[1 + c:].view(c, c))

    def finite(self) -> bool:
        """Whether every sample merged so far was finite: a NaN or infinity in any of them reaches
        the mean and stays there. (Finite samples too large for float64 squares overflow the
        co-moment only; the PCA says so.)"""
        return bool(torch.isfinite(self.mean).all())

    def covariance(self) -> np.ndarray:
        """The sample covariance (ddof = 1; zeros with fewer than two samples)."""
        n = self.samples
        if n < 2:
            return np.zeros(tuple(self.comoment.shape))
        return (self.comoment / (n - 1)).cpu().numpy()
