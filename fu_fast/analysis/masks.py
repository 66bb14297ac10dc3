"""Ablation masks of docs/definitions.md: keys per (seed, layer, repeat), thresholds per level.

A mask is the pair (key, threshold): the units with rank_key(u) < threshold are ablated
(rank is the keyed permutation of csrc/permutation.h). Masks are never drawn or stored
per batch, so every backend and every batch size ablates the same sets.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass

# p * n is rounded to this many decimals before the floor, so that decimal fractions that
# are not exact in binary (0.35 * 20 = 6.999999999999999) count the units a user expects.
_THRESHOLD_DECIMALS = 9


def mask_key(seed: int, layer: str, repeat: int) -> int:
    """The 64-bit key of repeat r's permutation of layer's units.

    The first 8 bytes (little endian) of BLAKE2b of "fu-fast/mask/{seed}/{layer}/{repeat}".
    """
    digest = hashlib.blake2b(f"fu-fast/mask/{seed}/{layer}/{repeat}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def sampling_seed(seed: int, layer: str) -> int:
    """Seed of the position sample of a layer's redundancy (independent of the masks)."""
    digest = hashlib.blake2b(f"fu-fast/positions/{seed}/{layer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def level_grid(levels) -> list[float]:
    """The ablation fractions: an int L gives 0, 1/(L-1), ..., 1; a sequence is checked."""
    if isinstance(levels, numbers.Integral):
        levels = int(levels)
        if levels < 2:
            raise ValueError("levels must be at least 2 (the grid includes 0 and 1)")
        return [i / (levels - 1) for i in range(levels)]
    grid = [float(p) for p in levels]
    if len(grid) < 2 or grid[0] != 0.0 or any(b <= a for a, b in zip(grid, grid[1:])) or grid[-1] > 1.0:
        raise ValueError("levels must increase strictly from 0 and stay within [0, 1]")
    return grid


def threshold(fraction: float, units: int) -> int:
    """floor(p * n): how many units are ablated at fraction p."""
    return int(math.floor(round(fraction * units, _THRESHOLD_DECIMALS)))


@dataclass(frozen=True)
class MaskPlan:
    """The distinct masks one layer's ablation curves need, and where each curve point reads.

    Points that ablate nothing (threshold 0) need no pass: the labels are y0 by definition.
    Points that ablate everything are the same mask for every repeat and run once.
    """

    units: int
    grid: tuple[float, ...]
    keys: tuple[int, ...]          # per distinct mask
    thresholds: tuple[int, ...]    # per distinct mask
    lookup: tuple[tuple[int, ...], ...]  # [repeat][level] -> mask index, -1 for "nothing ablated"

    @classmethod
    def build(cls, layer: str, units: int, grid: list[float], repeats: int, seed: int) -> "MaskPlan":
        index: dict[tuple[int, int], int] = {}
        lookup = []
        for r in range(repeats):
            key = mask_key(seed, layer, r)
            row = []
            for p in grid:
                t = threshold(p, units)
                if t == 0:
                    row.append(-1)
                    continue
                mask = (0, units) if t >= units else (key, t)
                row.append(index.setdefault(mask, len(index)))
            lookup.append(tuple(row))
        masks = sorted(index, key=index.get)
        return cls(units, tuple(grid), tuple(m[0] for m in masks), tuple(m[1] for m in masks), tuple(lookup))

    @property
    def num_masks(self) -> int:
        return len(self.keys)

    def curves(self, counts, examples: int) -> list[list[float]]:
        """a_r(p) for every repeat from the per-mask agreement counts."""
        return [[1.0 if m < 0 else float(counts[m]) / examples for m in row] for row in self.lookup]
