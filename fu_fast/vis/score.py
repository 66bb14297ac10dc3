"""Total variation of visualised images, in pixel and in frequency space (the paper's Table 2; docs/definitions.md).

Pixel space, for an image x of shape (C, H, W) with values in [0, 1]:

    TV(x) = sum_c [ sum_{i<H-1, j} |x[c,i+1,j] - x[c,i,j]| + sum_{i, j<W-1} |x[c,i,j+1] - x[c,i,j]| ]

(anisotropic, summed over channels; the paper's formula read as a sum of absolute differences,
not the absolute value of a telescoping sum, see docs/definitions.md).

Frequency space: the same TV of the magnitude spectrum M, per channel
M[c] = |fftshift(fft2(x[c]))| with the orthonormal DFT (so ||M[c]||_2 = ||x[c]||_2) and fftshift
putting the zero frequency in the centre, so neighbouring entries are neighbouring frequencies
(in fft2's own order the highest positive and the most negative frequency would be neighbours
across the wrap). A smooth image concentrates its spectrum in a peak around the centre.

Both are computed in float64 and are sums, not means: thin and wide models are compared at the
same image size, as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(images) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.dim() < 3:
        raise ValueError(f"images must have shape (..., C, H, W), got {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float64)


def total_variation(images) -> np.ndarray:
    """Pixel-space TV of each image of a (..., C, H, W) array; shape (...)."""
    x = _as_tensor(images)
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().sum(dim=(-3, -2, -1))
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().sum(dim=(-3, -2, -1))
    return (vertical + horizontal).numpy()


def magnitude_spectrum(images) -> torch.Tensor:
    """|fftshift(fft2(x))| per channel, orthonormal DFT; same shape as the images."""
    x = _as_tensor(images)
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho").abs(), dim=(-2, -1))


def frequency_total_variation(images) -> np.ndarray:
    """TV of each image's magnitude spectrum (see the module docstring); shape (...)."""
    return total_variation(magnitude_spectrum(images))
