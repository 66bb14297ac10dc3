"""Ablation passes: the hook that expands a layer's output into its masked copies,
agreement counting, and curves -> prunable fraction."""

from __future__ import annotations

from typing import Callable

import torch

from .. import kernels
from ..hooks import forward_hooks


class MaskedExpansion:
    """Forward hook replacing a layer's output (B rows) by its K masked copies (K*B rows).

    Everything before the layer runs once on B rows; everything after it on K*B rows.
    """

    def __init__(self, keys: list[int], thresholds: list[int], inner: int):
        self.keys, self.thresholds, self.inner = keys, thresholds, inner

    def __call__(self, _module, _inputs, output):
        return kernels.expand_masked(output, self.keys, self.thresholds, self.inner)


def prunable_fraction(grid: list[float], curve: list[float], tolerance: float) -> float:
    """First fraction where the linearly interpolated curve falls to 1 - tolerance (1.0 if never)."""
    floor = 1.0 - tolerance
    if curve[0] <= floor:
        return grid[0]
    for i in range(1, len(grid)):
        if curve[i] <= floor:
            a0, a1 = curve[i - 1], curve[i]
            return grid[i - 1] + (a0 - floor) / (a0 - a1) * (grid[i] - grid[i - 1])
    return 1.0


def count_agreement(forward: Callable[[torch.Tensor], torch.Tensor], hook_on_layer: Callable, inputs: torch.Tensor,
                    base_labels: torch.Tensor, keys: list[int], thresholds: list[int],
                    inner: int) -> torch.Tensor:
    """One forward (a function from inputs to the model's logits) with the layer expanded to
    len(keys) masked copies; agreement per mask. ``hook_on_layer(hook)`` gives the (module, hook)
    pair that applies a hook to the layer's output (Layer.hook)."""
    with forward_hooks([hook_on_layer(MaskedExpansion(keys, thresholds, inner))]):
        logits = forward(inputs)
    return kernels.label_agreement(logits, base_labels, len(keys))
