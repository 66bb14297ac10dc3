"""Robustness to activation noise (docs/definitions.md, "Robustness to activation noise").

Copy (r, l) of a batch gets, at the layer, Gaussian noise of standard deviation levels[l] x the
unit's standard deviation on the data added to every element; the noise is keyed by (seed, layer,
repeat, level) and drawn per (example, element) by the kernels (fu_fast.kernels.expand_noise), so
every backend and batch size adds the same values. The curves are label agreement against the
level, per repeat; the tolerance level is where the interpolated curve first falls to 1 - t
(the largest of the repeats), like the prunable fraction.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass

import torch

from .. import kernels
from ..errors import FuFastError
from .ablation import ExpansionBuffer


def noise_key(seed: int, layer: str, repeat: int, level: int) -> int:
    """The 64-bit key of one noise copy: the first 8 bytes (little endian) of BLAKE2b of
    "fu-fast/noise/{seed}/{layer}/{repeat}/{level}"."""
    digest = hashlib.blake2b(f"fu-fast/noise/{seed}/{layer}/{repeat}/{level}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def check_levels(levels) -> tuple[float, ...] | None:
    """None (no noise curves), or the levels: finite numbers from 0, strictly increasing."""
    if levels is None:
        return None
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise FuFastError(f"noise_levels must be a list of numbers from 0, got {levels!r}")
    values = list(levels)
    if len(values) < 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
                              for v in values):
        raise FuFastError(f"noise_levels must be at least two finite numbers, got {levels!r}")
    values = [float(v) for v in values]
    if values[0] != 0.0 or any(b <= a for a, b in zip(values, values[1:])):
        raise FuFastError("noise_levels must start at 0 and increase strictly")
    return tuple(values)


class NoiseCopies:
    """K noise copies of a layer output, with the masks' interface (ablation.Masks): copy k adds
    scales[k] x unit_std x normal(keys[k], example, element)."""

    def __init__(self, keys: list[int], scales: list[float], unit_std: torch.Tensor, first_example: int):
        self.keys, self.scales, self.unit_std, self.first_example = keys, scales, unit_std, first_example

    def __len__(self) -> int:
        return len(self.keys)

    def expand(self, view: torch.Tensor, inner: int, buffer: ExpansionBuffer | None = None) -> torch.Tensor:
        out = None if buffer is None else buffer.copies_of(view, len(self))
        return kernels.expand_noise(view, self.keys, self.scales, self.unit_std, inner, self.first_example, out=out)

    def mask(self, view: torch.Tensor, inner: int) -> torch.Tensor:
        return kernels.noise_rows(view, self.keys, self.scales, self.unit_std, inner, self.first_example)


@dataclass
class NoisePlan:
    """A layer's noise copies (every repeat and level above 0), their agreement counts, and the
    units' standard deviations once the first pass has measured them."""
    layer: str
    levels: tuple[float, ...]
    repeats: int
    seed: int
    counts: torch.Tensor                 # (repeats * levels) agreement counts
    unit_std: torch.Tensor | None = None  # per ablation unit, float64 on the device
    _copies: tuple | None = None          # copies(), once made

    @classmethod
    def build(cls, layer: str, levels: tuple[float, ...] | None, repeats: int, seed: int, device) -> "NoisePlan | None":
        if levels is None:
            return None
        return cls(layer, levels, repeats, seed, torch.zeros(repeats * len(levels), dtype=torch.int64, device=device))

    def copies(self) -> tuple[list[int], list[float], torch.Tensor]:
        """(keys, scales, count index on the counts' device) of the copies that need a pass (level 0
        needs none); made once, so no batch pays for it."""
        if self._copies is None:
            keys, scales, where = [], [], []
            for r in range(self.repeats):
                for index, level in enumerate(self.levels):
                    if level > 0:
                        keys.append(noise_key(self.seed, self.layer, r, index))
                        scales.append(level)
                        where.append(r * len(self.levels) + index)
            self._copies = keys, scales, torch.tensor(where, dtype=torch.int64, device=self.counts.device)
        return self._copies

    def curves(self, predictions: int) -> list[list[float]]:
        counts = self.counts.cpu().numpy().reshape(self.repeats, len(self.levels))
        return [[1.0 if level == 0 else float(c) / predictions for c, level in zip(row, self.levels)]
                for row in counts]


def tolerance_level(levels: tuple[float, ...], curve: list[float], tolerance: float) -> float:
    """The first level where the linearly interpolated curve falls to 1 - tolerance; the largest
    level when it never does."""
    floor = 1.0 - tolerance
    for i in range(1, len(levels)):
        if curve[i] <= floor:
            a0, a1 = curve[i - 1], curve[i]
            return levels[i - 1] + (a0 - floor) / (a0 - a1) * (levels[i] - levels[i - 1])
    return levels[-1]
