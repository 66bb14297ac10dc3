"""compress(): a thinner network that computes (almost) the same labels, and its report."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..analysis.inputs import Batches
from ..analysis.masks import sampling_seed
from ..analysis.pca import redundancy
from ..errors import FuFastError, integer_setting
from . import chain, refactor, search

SCHEMA = "fu-fast/compress/1"
METHODS = ("refactor", "prune", "both")
SEARCHES = ("auto", "greedy", "random")

NOTES = {
    "lrn": "channels removed before a cross-channel LocalResponseNorm change their neighbours' "
           "normalisation windows: approximate",
    "padding": "refactor bias correction of a zero-padded conv is exact only away from the borders",
}


@dataclass
class CompressResult:
    model: nn.Module          # the thinner network (a new module; the wide one is untouched)
    report: dict              # the compress.json document

    def to_dict(self) -> dict:
        return self.report


def compress(model: nn.Module, data, *, eval_data=None, layers=None, method: str = "both",
             tolerance: float = 0.02, pca_tolerance: float = 0.05, search_method: str = "auto",
             repeats: int = 3, seed: int = 0, sample_cap: int = 50_000, device=None,
             batch_size: int = 512, progress=None) -> CompressResult:
    """Thin a sequential model layer by layer, from the output backwards.

    ``data`` is the fit set (activations, coefficients, searches); ``eval_data`` (default:
    ``data``) is where the report's agreement and accuracy are measured. Per layer:

    * refactor: keep the m' pivots of a column-pivoted QR of the centred activations, m' the
      layer's PCA components at ``pca_tolerance`` (docs/definitions.md), raised along the pivot
      order only if the labels would otherwise leave the tolerance; fold the other units into
      the consumer (fu_fast.compress.refactor);
    * prune: drop the units a search finds removable, with ``search_method`` "greedy", "random"
      (the analysis' keyed ablation orders, ``repeats`` of them) or "auto" (greedy where the
      consumer is the output layer, so a candidate costs one small product; random elsewhere).

    ``tolerance`` bounds the loss of label agreement with the wide model on the fit set for the
    whole network: every step keeps agreement >= 1 - tolerance (1: no constraint). FuFastError for a model with skip
    connections or branches, a layer that cannot be thinned, or bad settings.
    """
    _check_settings(method, tolerance, pca_tolerance, search_method, repeats, sample_cap, batch_size)
    started = time.perf_counter()
    children = chain.check_sequential(model)
    if not children or not any(p.numel() for p in model.parameters()):
        raise FuFastError("the model has no parameters to compress")
    if any(not torch.isfinite(p).all() for p in model.parameters()):
        raise FuFastError("the model has non-finite (NaN or infinite) weights")
    first = next(model.parameters())
    device = torch.device(device) if device is not None else first.device
    dtype = first.dtype
    thin = copy.deepcopy(model).to(device).eval()
    children = list(thin.named_children())
    plan = chain.stages(thin, children, layers)

    x_fit, labels_fit = _gather(data, device, dtype)
    x_eval, labels_eval = (x_fit, labels_fit) if eval_data is None else _gather(eval_data, device, dtype)
    wide_fit, wide_eval = _labels(thin, x_fit, batch_size), _labels(thin, x_eval, batch_size)
    need = math.ceil((1.0 - tolerance) * x_fit.shape[0] - 1e-9)
    modules_before = _module_parameters(thin)
    before = {s.layer: chain.units_of(children, s) for s in plan}

    records = {}
    for done, stage in enumerate(reversed(plan)):
        if progress is not None:
            progress(done, len(plan), stage.layer)
        record = {"name": stage.layer, "kind": stage.kind, "units_before": before[stage.layer],
                  "producer": children[stage.producer][0], "consumer": children[stage.consumer][0],
                  }
        # zero padding only matters for the refactor's bias correction; pruning is exact there
        notes = [n for n in stage.notes if n != "padding" or method != "prune"]
        record.update(exact=not notes, notes=[NOTES[n] for n in notes])
        if method in ("refactor", "both"):
            record["refactor"] = _refactor(thin, children, stage, x_fit, wide_fit, need, pca_tolerance,
                                           sample_cap, seed, batch_size)
        if method in ("prune", "both"):
            record["prune"] = _prune(thin, children, stage, x_fit, wide_fit, need, search_method, repeats,
                                     seed, batch_size)
        record["units_after"] = chain.units_of(children, stage)
        record["fit_agreement"] = _agreement(thin, x_fit, wide_fit, batch_size)
        record["eval_agreement"] = _agreement(thin, x_eval, wide_eval, batch_size)
        records[stage.layer] = record
    if progress is not None:
        progress(len(plan), len(plan), "")

    modules_after = _module_parameters(thin)
    for stage in plan:
        producer = children[stage.producer][0]
        records[stage.layer]["parameters_before"] = modules_before[producer]
        records[stage.layer]["parameters_after"] = modules_after[producer]
    report = {
        "schema": SCHEMA,
        "model": dict(getattr(model, "fu_fast_config", None) or {"name": type(model).__name__}),
        "settings": {"method": method, "tolerance": tolerance, "pca_tolerance": pca_tolerance,
                     "search": search_method, "repeats": repeats, "seed": seed, "sample_cap": sample_cap,
                     "device": str(device), "precision": str(dtype).removeprefix("torch.")},
        "data": {"fit": _info(data, x_fit), "eval": _info(eval_data if eval_data is not None else data, x_eval)},
        "layers": [records[s.layer] for s in plan],
        "modules": {name: {"before": modules_before[name], "after": modules_after.get(name, 0)}
                    for name in modules_before},
        "parameters": {"before": sum(modules_before.values()), "after": sum(modules_after.values())},
        "units": {"before": sum(before.values()), "after": sum(r["units_after"] for r in records.values())},
        "agreement": {"fit": _agreement(thin, x_fit, wide_fit, batch_size),
                      "eval": _agreement(thin, x_eval, wide_eval, batch_size)},
        "accuracy": {"wide": _accuracy(model_labels=wide_eval, labels=labels_eval),
                     "thin": _accuracy(model_labels=_labels(thin, x_eval, batch_size), labels=labels_eval)},
        "timing": {"seconds": time.perf_counter() - started},
    }
    return CompressResult(thin, report)


def _refactor(thin, children, stage, x_fit, wide_fit, need, pca_tolerance, sample_cap, seed, batch_size) -> dict:
    activations = _forward(children, 0, stage.index + 1, x_fit, batch_size)
    generator = torch.Generator().manual_seed(sampling_seed(seed, stage.layer) % (2 ** 63))
    mean, covariance, samples = refactor.statistics(activations, sample_cap, generator)
    units = covariance.shape[0]
    components = redundancy(covariance, pca_tolerance).components
    order = refactor.pivot_order(covariance)
    ev = search.Evaluator(children, stage, activations, wide_fit, batch_size)

    def candidate(count: int):
        kept, dropped = np.sort(order[:count]), np.sort(order[count:])
        c, d = refactor.coefficients(mean, covariance, kept, dropped)
        weight, bias = refactor.rewrite(ev.weight, ev.bias, kept, dropped, c, d)
        return kept, weight, bias

    # A layer keeps at least one unit (a layer of none is a different architecture); zero total
    # variance gives 0 components, and then one unit carries the constant output as well as any.
    start = max(components, 1)
    lo, hi = start, units
    if ev.agreement(*candidate(start)[1:]) < need:
        # the pivot basis is nested, so more units fit better; bisect for the fewest that keep
        # the labels within tolerance (all units always do: nothing is dropped)
        while lo < hi:
            mid = (lo + hi) // 2
            if ev.agreement(*candidate(mid)[1:]) >= need:
                hi = mid
            else:
                lo = mid + 1
    kept, weight, bias = candidate(lo)
    chain.shrink(thin, children, stage, torch.as_tensor(kept), weight, bias)
    return {"samples": samples, "components": components, "kept": int(lo), "dropped": units - int(lo),
            "raised_for_tolerance": int(lo) > start}


def _prune(thin, children, stage, x_fit, wide_fit, need, search_method, repeats, seed, batch_size) -> dict:
    activations = _forward(children, 0, stage.index + 1, x_fit, batch_size)
    ev = search.Evaluator(children, stage, activations, wide_fit, batch_size)
    units = ev.weight.shape[1]
    if search_method == "auto":
        search_method = "greedy" if stage.consumer == len(children) - 1 else "random"
    if search_method == "greedy":
        dropped = search.greedy(ev, need)
    else:
        dropped = search.random_ablation(ev, need, layer=stage.layer, repeats=repeats, seed=seed)
    keep = sorted(set(range(units)) - set(dropped))
    if dropped:
        chain.shrink(thin, children, stage, torch.as_tensor(keep))
    return {"search": search_method, "dropped": len(dropped)}


@torch.no_grad()
def _forward(children, start: int, stop: int, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([chain.run(children, start, stop, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def _labels(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def _agreement(model: nn.Module, x: torch.Tensor, base: torch.Tensor, batch_size: int) -> float:
    return float((_labels(model, x, batch_size) == base).double().mean())


def _accuracy(*, model_labels: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    if labels is None:
        return None
    return float((model_labels == labels.to(model_labels.device)).double().mean())


def _gather(data, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All inputs (and labels, when every batch has them) as tensors on ``device``: the searches
    revisit the layer's activations many times, so they are kept, not streamed."""
    inputs, labels = [], []
    batches = Batches(data)
    for x, y in batches:
        inputs.append(x)
        labels.append(y)
    x = torch.cat(inputs).to(device=device, dtype=dtype)
    y = torch.cat(labels).to(device) if batches.labels_known and all(v is not None for v in labels) else None
    return x, y


def _info(data, x: torch.Tensor) -> dict:
    info = getattr(data, "info", None)
    if isinstance(info, dict):
        return {**info, "examples": x.shape[0]}
    return {"name": "tensor" if isinstance(data, (torch.Tensor, tuple, list)) else type(data).__name__,
            "examples": x.shape[0]}


def _module_parameters(model: nn.Module) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()
            if any(True for _ in module.parameters())}


def _check_settings(method, tolerance, pca_tolerance, search_method, repeats, sample_cap, batch_size) -> None:
    if method not in METHODS:
        raise FuFastError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if search_method not in SEARCHES:
        raise FuFastError(f"unknown search {search_method!r}; choose one of {', '.join(SEARCHES)}")
    # tolerance 1 leaves the labels unconstrained (the refactor then keeps exactly the PCA count)
    for name, value, top in (("tolerance", tolerance, 1.0), ("pca_tolerance", pca_tolerance, 1.0 - 1e-12)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= top:
            raise FuFastError(f"{name} must be in [0, 1{']' if top == 1.0 else ')'}, got {value!r}")
    for name, value in (("repeats", repeats), ("sample_cap", sample_cap), ("batch_size", batch_size)):
        integer_setting(value, name)
