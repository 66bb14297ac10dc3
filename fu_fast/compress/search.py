"""Label agreement of candidate rewrites of one layer, and the pruning searches.

Everything here evaluates the network from the consumer of a layer onwards, on the layer's
recorded activations: the consumer is linear in its input, so dropping units, or folding them
into others, only changes the consumer's weight, and removing unit u from the current
consumer output subtracts exactly u's contribution. The head of the network is never rerun.
"""

from __future__ import annotations

import torch

from ..analysis.masks import mask_key
from ..kernels import permutation_ranks
from .chain import Stage, apply_consumer, consumer_view, contributions, run

# Rows x output elements handled at once when many candidates are scored together.
_CHUNK_ELEMENTS = 1 << 22


class Evaluator:
    """Agreement with the wide model's labels of the network from one layer's consumer on."""

    def __init__(self, children, stage: Stage, activations: torch.Tensor, base_labels: torch.Tensor,
                 batch_size: int):
        self.children, self.stage, self.base_labels = children, stage, base_labels
        self.batch_size = batch_size
        with torch.no_grad():
            self.x_mid = run(children, stage.index + 1, stage.consumer, activations)
            weight, _ = consumer_view(children, stage)
            self.weight = weight.detach()
            bias = children[stage.consumer][1].bias
            self.bias = None if bias is None else bias.detach()

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from consumer outputs."""
        return run(self.children, self.stage.consumer + 1, len(self.children), z)

    @torch.no_grad()
    def agreement(self, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
        """Examples whose label equals the wide model's with this consumer weight and bias."""
        agree = 0
        for start in range(0, self.x_mid.shape[0], self.batch_size):
            z = apply_consumer(self.children, self.stage, self.x_mid[start:start + self.batch_size], weight, bias)
            labels = self.tail(z).argmax(1)
            agree += int((labels == self.base_labels[start:start + self.batch_size]).sum())
        return agree

    def masked(self, dropped: torch.Tensor) -> torch.Tensor:
        """The consumer weight with the columns of ``dropped`` zeroed (the units ablated)."""
        weight = self.weight.clone()
        weight[:, dropped.to(weight.device)] = 0
        return weight


@torch.no_grad()
def greedy(ev: Evaluator, need: int) -> list[int]:
    """Units to drop: repeatedly the one whose removal keeps the most labels (ties: the one that
    moves the logits least), while agreement stays at least ``need``. Costs units^2/2 scorings
    of the tail; every candidate of a step is scored in one batched pass."""
    z = apply_consumer(ev.children, ev.stage, ev.x_mid, ev.weight, ev.bias)
    logits = ev.tail(z)
    units = ev.weight.shape[1]
    alive = list(range(units))
    dropped: list[int] = []
    per_candidate = max(1, z[0].numel() * z.shape[0])
    chunk = max(1, _CHUNK_ELEMENTS // per_candidate)
    while len(alive) > 1:
        best = None   # (agree, -change, unit)
        for start in range(0, len(alive), chunk):
            group = alive[start:start + chunk]
            moved = z.unsqueeze(0) - contributions(ev.children, ev.stage, ev.x_mid, ev.weight, group)
            out = ev.tail(moved.flatten(0, 1)).reshape(len(group), z.shape[0], -1)
            agree = (out.argmax(-1) == ev.base_labels).sum(1)
            change = (out - logits).pow(2).flatten(1).sum(1)
            for unit, a, c in zip(group, agree.tolist(), change.tolist()):
                key = (a, -c, -unit)
                if best is None or key > best[0]:
                    best = (key, unit)
        (agree_best, _, _), unit = best
        if agree_best < need:
            break
        z = z - contributions(ev.children, ev.stage, ev.x_mid, ev.weight, [unit])[0]
        logits = ev.tail(z)
        alive.remove(unit)
        dropped.append(unit)
    return dropped


@torch.no_grad()
def random_ablation(ev: Evaluator, need: int, *, layer: str, repeats: int, seed: int) -> list[int]:
    """Units to drop: for each repeat, the keyed random order of the analysis (docs/definitions.md,
    fu_fast.analysis.masks) and the longest prefix of it whose ablation keeps agreement at least
    ``need`` (bisection over the nested prefixes); the repeat that drops the most wins."""
    units = ev.weight.shape[1]
    best: list[int] = []
    for r in range(repeats):
        ranks = permutation_ranks(mask_key(seed, layer, r), units)
        order = torch.argsort(ranks)
        lo, hi = 0, units - 1   # at least one unit stays
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ev.agreement(ev.masked(order[:mid]), ev.bias) >= need:
                lo = mid
            else:
                hi = mid - 1
        if lo > len(best):
            best = order[:lo].tolist()
    return best
