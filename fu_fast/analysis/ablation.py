"""Ablation passes: the forward in which a layer's output is replaced by its masked copies,
agreement counting, and curves -> prunable fraction.

At a cut point the hook on the layer expands its output (B rows) into the K masked copies
(K*B rows): everything before the layer runs once, everything after it on K*B rows. A layer
that is not a cut point gets its copies earlier (layers.Layer.copies_from): the batch is copied
K times there (or the input is), and the hook on the layer masks copy k with mask k in place.
The copies are identical until the layer, so the layer's own module runs on the first copy only
and its output is expanded as at a cut point (not for an in-place module, which must act on
every copy of its input, as a skip connection may read it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .. import kernels
from ..hooks import forward_hooks
from .layers import Layer


@dataclass(frozen=True)
class Masks:
    """K masks of one layer: mask k zeroes the units ranked below thresholds[k], ranked by the keyed
    random permutation keys[k] or, for targeted ablation, by the rank table row ranks[k] (the
    thresholds then an int64 tensor on the device, made once: no copy inside a forward hook)."""
    thresholds: list[int] | torch.Tensor
    keys: list[int] | None = None
    ranks: torch.Tensor | None = None     # (K, n) int64

    def __len__(self) -> int:
        return len(self.thresholds)

    def expand(self, view: torch.Tensor, inner: int, buffer: ExpansionBuffer | None = None) -> torch.Tensor:
        if self.ranks is None:
            out = None if buffer is None else buffer.copies_of(view, len(self))
            return kernels.expand_masked(view, self.keys, self.thresholds, inner, out=out)
        return kernels.expand_ranked(view, self.ranks, self.thresholds, inner)

    def mask(self, view: torch.Tensor, inner: int) -> torch.Tensor:
        if self.ranks is None:
            return kernels.mask_rows(view, self.keys, self.thresholds, inner)
        return kernels.mask_rows_ranked(view, self.ranks, self.thresholds, inner)


class ExpansionBuffer:
    """One allocation that receives the copies of every batch of an analysis. On the CPU a fresh
    tensor of tens of megabytes per batch comes from the system each time (the C allocator maps
    blocks that large and unmaps them when freed), and its page faults cost more than writing
    the copies; reusing one tensor pays them once. The copies of one pass are used up before
    the next pass begins, so each pass may overwrite the last one's."""

    def __init__(self):
        # One allocation per dtype and device: under autocast, layers of one pass may differ in dtype.
        self._storage: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def copies_of(self, x: torch.Tensor, copies: int) -> torch.Tensor:
        """A (copies * B, ...) tensor in x's layout (channels_last for a channels_last 4-d x, as the
        kernels write it), a view of the buffer, which grows when it must."""
        numel = copies * x.numel()
        key = (x.dtype, x.device)
        storage = self._storage.get(key)
        if storage is None or storage.numel() < numel:
            self._storage.pop(key, None)   # released before the larger one is made
            storage = self._storage[key] = torch.empty(numel, dtype=x.dtype, device=x.device)
        shape = (copies * x.shape[0],) + tuple(x.shape[1:])
        if kernels.is_channels_last(x):
            n, c, h, w = shape
            return storage[:numel].view(n, h, w, c).permute(0, 3, 1, 2)
        return storage[:numel].view(shape)


def _masked_output(layer: Layer, masks: Masks, rows: int, buffer: ExpansionBuffer | None):
    """The hook on the layer: expand its output of ``rows`` rows into the masked copies (into
    ``buffer`` when given), or mask the K copies that arrive (copies made earlier, K*rows rows)."""
    def hook(_module, inputs, output):
        view, inner = layer.masked_view(output)
        if output.shape[0] == rows:
            return layer.from_masked_view(masks.expand(view, inner, buffer))
        if any(isinstance(i, torch.Tensor) and _shares_memory(i, output) for i in inputs):
            # An output that is its input (an in-place activation, Identity, Dropout in eval) may
            # also feed a skip connection: mask a copy, never the tensor the other path reads.
            view = view.clone(memory_format=torch.preserve_format)
        return layer.from_masked_view(masks.mask(view, inner))
    return hook


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _copies(count: int):
    def hook(_module, _inputs, output):
        return torch.cat([output] * count)
    return hook


def _first_copy(copies: int, rows: int):
    """A pre-hook giving the module the first of the identical copies of its inputs."""
    def first(value):
        return value[:rows] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == copies * rows \
            else value

    def hook(_module, args, kwargs):
        return tuple(first(a) for a in args), {k: first(v) for k, v in kwargs.items()}
    return hook


def masked_forward(forward: Callable[[torch.Tensor], torch.Tensor], layer: Layer, inputs: torch.Tensor,
                   masks: Masks, hooks: Iterable = (), buffer: ExpansionBuffer | None = None) -> torch.Tensor:
    """The logits of len(masks) masked copies of the batch (K*B rows, copy k masked by mask k at
    the layer), by one forward (a function from inputs to logits); ``hooks`` are other (module,
    hook) pairs held during that forward; ``buffer`` receives the copies made at the layer."""
    rows = inputs.shape[0]
    copies = len(masks)
    hooks = [layer.hook(_masked_output(layer, masks, rows, buffer)), *hooks]
    pre_hooks = []
    start = layer.copies_from
    if start is not None:
        if start.module is not None:
            hooks.insert(0, start.hook(_copies(copies)))
        else:
            inputs = torch.cat([inputs] * copies)
        if copies > 1 and not getattr(layer.module, "inplace", False):
            pre_hooks.append(layer.hook(_first_copy(copies, rows)))
    with forward_hooks(hooks, kwargs_pre_hooks=pre_hooks):
        return forward(inputs)


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
