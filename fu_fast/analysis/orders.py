"""Targeted ablation: curves where a layer's units are removed in a given order instead of a keyed
random one (docs/definitions.md, "Targeted ablation").

An order ranks the n ablation units (rank 0 goes first); ablating a fraction p removes the units of
rank < floor(p * n), as for random ablation, so larger ablations contain the smaller ones. The
orders and what they sort by, smallest first unless said:

  activation    the unit's mean activation on the data
  weight_norm   the L1 norm of its outgoing weights (the usual pruning criterion), read from the
                linear or conv layer that takes the layer's output as its input
  redundancy    its mean |r| to the other units of the layer, largest first (most redundant first;
                units that never vary come first of all)
  selectivity   its class selectivity (least selective first; units without one come first)

and "<order>_reverse" for each, the same ranking turned around. Scores of whole channels apply to
each of a channel's positions (unit="position"); ties go to the lower unit index. The orders that
read the data take their statistics from a first pass; the ablation pass then runs every order's
masks beside the random ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import FuFastError
from ..hooks import forward_hooks
from . import masks

BASE_ORDERS = ("activation", "weight_norm", "redundancy", "selectivity")
ORDERS = ("random",) + BASE_ORDERS + tuple(f"{o}_reverse" for o in BASE_ORDERS)
DATA_ORDERS = ("activation", "redundancy", "selectivity")   # need a first pass over the data


def check_orders(orders) -> tuple[str, ...]:
    """The orders as a tuple of known names, "random" among them (the prunable fraction is random
    ablation's), none twice; FuFastError otherwise."""
    if isinstance(orders, str) or not hasattr(orders, "__iter__"):
        raise FuFastError(f"orders must be a list of order names, got {orders!r}")
    orders = tuple(orders)
    unknown = [o for o in orders if o not in ORDERS]
    if unknown:
        raise FuFastError(f"unknown order {unknown[0]!r}; the orders are {', '.join(ORDERS)}")
    if "random" not in orders:
        raise FuFastError("orders must include 'random': a layer's prunable fraction is random ablation's")
    if len(set(orders)) != len(orders):
        raise FuFastError("an order is named more than once")
    return orders


def needs_data(orders: tuple[str, ...]) -> bool:
    return any(o.removesuffix("_reverse") in DATA_ORDERS for o in orders)


@dataclass
class OrderedMasks:
    """The masks of a layer's targeted orders: per mask the rank table row and the threshold."""
    orders: tuple[str, ...]          # the targeted orders, "random" left out
    thresholds: tuple[int, ...]      # per level
    ranks: torch.Tensor | None = None  # (len(orders), n) int64 once known
    counts: torch.Tensor | None = None  # examples whose label survived each (order, level) mask
    _table: tuple | None = None          # mask_table(), once made

    @classmethod
    def build(cls, orders: tuple[str, ...], units: int, grid: list[float], device) -> "OrderedMasks | None":
        targeted = tuple(o for o in orders if o != "random")
        if not targeted:
            return None
        thresholds = tuple(masks.threshold(p, units) for p in grid)
        counts = torch.zeros(len(targeted) * len(grid), dtype=torch.int64, device=device)
        return cls(targeted, thresholds, None, counts)

    def mask_table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rank rows, thresholds, count index), one row per mask that needs a pass (nothing ablated
        needs none: the labels are the base labels), all on the counts' device; made once, after the
        ranks are known, so no batch pays for it."""
        if self._table is None:
            rows, thresholds, where = [], [], []
            for o in range(len(self.orders)):
                for level, threshold in enumerate(self.thresholds):
                    if threshold > 0:
                        rows.append(o)
                        thresholds.append(threshold)
                        where.append(o * len(self.thresholds) + level)
            device = self.counts.device
            self._table = (self.ranks[rows], torch.tensor(thresholds, dtype=torch.int64, device=device),
                           torch.tensor(where, dtype=torch.int64, device=device))
        return self._table

    def curves(self, examples: int) -> dict[str, list[float]]:
        counts = self.counts.cpu().numpy().reshape(len(self.orders), len(self.thresholds))
        return {order: [1.0 if t <= 0 else float(c) / examples for c, t in zip(row, self.thresholds)]
                for order, row in zip(self.orders, counts)}


def ranks_from_scores(scores: np.ndarray, descending: bool) -> np.ndarray:
    """Rank of each unit (0 = ablated first) sorting ``scores`` (NaN first), ties by unit index."""
    key = -scores if descending else scores
    key = np.where(np.isnan(key), -np.inf, key)
    order = np.argsort(key, kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


# Per base order: the statistic it sorts by (one score per channel or feature), the finer one per
# ablation unit that replaces it with unit="position" when known, and whether larger goes first.
_SCORES = {"activation": ("channel_mean", "element_mean", False), "weight_norm": ("weight_norm",
           "element_weight_norm", False), "redundancy": ("mean_abs_r", None, True),
           "selectivity": ("selectivity", None, False)}


def unit_scores(order: str, layer, statistics: dict) -> tuple[np.ndarray, bool]:
    """(score per ablation unit, whether larger goes first) of a base order."""
    coarse, fine, descending = _SCORES[order]
    if fine is not None and layer.unit == "position" and layer.kind != "linear" \
            and statistics.get(fine) is not None:
        return np.asarray(statistics[fine], dtype=np.float64), descending
    if statistics.get(coarse) is None:
        raise FuFastError(f"layer '{layer.name}': no statistics for the {order} order")
    return per_ablation_unit(np.asarray(statistics[coarse], dtype=np.float64), layer), descending


def per_ablation_unit(channel_scores: np.ndarray, layer) -> np.ndarray:
    """Scores of the C units (features, channels) for the n ablation units: each element of a
    channel (conv, unit=position: u = c*H*W + s) or of a feature at each token (token, position:
    u = t*D + d) takes its channel's score."""
    if layer.ablation_units == layer.units:
        return channel_scores
    if layer.kind == "token":
        return np.tile(channel_scores, layer.spatial)
    return np.repeat(channel_scores, layer.spatial)


def rank_table(orders: tuple[str, ...], layer, statistics: dict, device) -> torch.Tensor:
    """(len(orders), n) ranks of the ablation units; a reverse order is its base order turned around."""
    rows = []
    for order in orders:
        base = order.removesuffix("_reverse")
        ranks = ranks_from_scores(*unit_scores(base, layer, statistics))
        rows.append(ranks if base == order else len(ranks) - 1 - ranks)
    return torch.from_numpy(np.stack(rows)).to(device)


def outgoing_weight_norms(model: nn.Module, layer, forward, probe: torch.Tensor
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """L1 norms of the outgoing weights of the layer's C units, and of its n ablation units when
    they are finer (a linear layer reading a flattened conv output weighs each position), found
    by the linear or conv module whose input is the layer's output (the same memory)."""
    captured, consumers = {}, []

    def output_hook(_m, _i, output):
        captured["output"] = output

    def input_hook(name):
        def hook(module, inputs):
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            out = captured.get("output")
            if x is not None and out is not None and x.numel() == out.numel() \
                    and x.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
                consumers.append(module)
        return hook

    readers = [(m, input_hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.inference_mode(), forward_hooks([layer.hook(output_hook)], pre_hooks=readers):
        forward(probe)
    if not consumers:
        raise FuFastError(f"layer '{layer.name}': no linear or conv layer reads its output directly, so its units "
                          "have no outgoing weights (the weight_norm order)")
    weight = consumers[0].weight.detach().abs().double().cpu()
    if isinstance(consumers[0], nn.Conv2d):
        if weight.shape[1] != layer.units:
            raise FuFastError(f"layer '{layer.name}': the conv reading it takes {weight.shape[1]} channels, "
                              f"not its {layer.units}")
        return weight.sum(dim=(0, 2, 3)).numpy(), None
    columns = weight.sum(dim=0).numpy()                         # one norm per input feature of the linear
    if layer.kind == "token" and len(columns) == layer.units:   # applied to each token's features
        return columns, None
    if len(columns) == layer.units:
        return columns, None
    if len(columns) == layer.units * layer.spatial and layer.kind == "conv":   # a flattened (C, H, W) output
        return columns.reshape(layer.units, layer.spatial).sum(axis=1), columns
    raise FuFastError(f"layer '{layer.name}': the linear reading it takes {len(columns)} features, not its "
                      f"{layer.units} (or {layer.units * layer.spatial})")
