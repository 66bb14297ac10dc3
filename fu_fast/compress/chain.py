"""A sequential model as a chain of compressible layers, and the surgery that thins one.

A compressible layer ``L`` (a module of a flat ``nn.Sequential``) sits between

    producer (Linear/Conv2d) -> per-unit ops -> L -> pass-through ops -> consumer (Linear/Conv2d)

Its units are the producer's output features (channels). Dropping unit ``j`` removes row ``j``
of the producer (weight, bias, and the matching BatchNorm entries) and the consumer's input
columns for ``j``. That is the same network as ablating the unit (zeroing it at ``L``) exactly
when every op between producer and L acts on each unit alone, which ReLU-like maps, pooling,
dropout and BatchNorm do. Cross-channel LocalResponseNorm (AlexNet) does not: removing a channel
changes its neighbours' normalisation windows, so such a layer is compressed approximately and
flagged (its effect is in the measured agreement).

The pass-through ops between L and the consumer must be linear and map constants to constants
(dropout at eval time, flatten, average pooling), so that a unit's affine relation to other
units (the refactorisation) still holds where the consumer reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from ..errors import FuFastError

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)
_PER_CHANNEL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


@dataclass
class Stage:
    """One compressible layer: indices into the model's children and how the consumer reads it."""

    layer: str
    kind: str                      # "linear" or "conv" (the layer output's shape)
    producer: int                  # child indices
    index: int
    consumer: int
    notes: list[str] = field(default_factory=list)


def check_sequential(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's children, or FuFastError if it is not a chain compress can thin."""
    name = (getattr(model, "fu_fast_config", None) or {}).get("name")
    refusal = models.entry(name).compress_refusal if name in models.names() else None
    if refusal is not None:
        raise FuFastError(f"cannot compress {name}: {refusal}, so a unit has no single consumer "
                          "layer whose weights could absorb it; compress works on sequential models "
                          "(mlp, alexnet)")
    if not isinstance(model, nn.Sequential):
        raise FuFastError(f"cannot compress {type(model).__name__}: compress works on sequential models "
                          "(nn.Sequential chains such as mlp and alexnet); models with skip connections or "
                          "branches have no single consumer per unit")
    children = list(model.named_children())
    for child_name, child in children:
        if any(True for _ in child.children()):
            raise FuFastError(f"cannot compress: child {child_name!r} ({type(child).__name__}) is a container; "
                              "compress works on flat nn.Sequential chains")
    return children


def _is_weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def default_layers(model: nn.Module, children) -> list[str]:
    """The zoo's analysis layers, else the last per-unit op after every Linear/Conv2d that
    another Linear/Conv2d follows."""
    declared = getattr(model, "analysis_layers", None)
    if declared:
        return list(declared)
    names = []
    for i, (_, module) in enumerate(children):
        if not _is_weighted(module):
            continue
        j = i + 1
        while j < len(children) and isinstance(children[j][1], _ELEMENTWISE + _PER_CHANNEL_POOLS
                                               + (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)):
            j += 1
        if j > i + 1 and any(_is_weighted(m) for _, m in children[j:]):
            # the last op before the pass-through ones (dropout, average pooling): the analysis'
            # cut point, e.g. the ReLU
            last = j - 1
            while last > i + 1 and isinstance(children[last][1], _PASS_THROUGH):
                last -= 1
            names.append(children[last][0])
    return names


def stages(model: nn.Module, children, layers: list[str] | None) -> list[Stage]:
    """The compressible layers in forward order; FuFastError naming a layer that is not one."""
    index = {name: i for i, (name, _) in enumerate(children)}
    names = default_layers(model, children) if layers is None else list(layers)
    if not names:
        raise FuFastError("the model has no compressible layer (a Linear/Conv2d, per-unit ops, then another "
                          "Linear/Conv2d)")
    result = []
    for name in names:
        if name not in index:
            raise FuFastError(f"unknown layer {name!r}; the model's children are {', '.join(index)}")
        result.append(_stage(children, index[name]))
    result.sort(key=lambda s: s.index)
    for a, b in zip(result, result[1:]):
        if a.index == b.index:
            raise FuFastError(f"layer {a.layer!r} is named twice")
        if b.producer < a.consumer:
            raise FuFastError(f"layers {a.layer!r} and {b.layer!r} share their Linear/Conv2d; name one of them")
    return result


def _stage(children, i: int) -> Stage:
    name, _ = children[i]
    notes = []
    p = i
    while p >= 0 and not _is_weighted(children[p][1]):
        module = children[p][1]
        if isinstance(module, nn.LocalResponseNorm):
            notes.append("lrn")
        elif not isinstance(module, _ELEMENTWISE + _PER_CHANNEL_POOLS + (nn.Dropout, nn.Identity, nn.BatchNorm1d,
                                                                           nn.BatchNorm2d)) \
                and type(module).__name__ != "MaxPool2dSame":
            raise FuFastError(f"layer {name!r}: {children[p][0]} ({type(module).__name__}) between it and the "
                              "Linear/Conv2d that makes its units does not act on each unit alone")
        p -= 1
    if p < 0 or p == i:
        raise FuFastError(f"layer {name!r} is not the output of a Linear/Conv2d followed by per-unit ops "
                          "(e.g. its ReLU)")
    c = i + 1
    while c < len(children) and not _is_weighted(children[c][1]):
        module = children[c][1]
        if not isinstance(module, _PASS_THROUGH) or (isinstance(module, nn.AvgPool2d) and module.padding != 0
                                                     and module.count_include_pad):
            raise FuFastError(f"layer {name!r}: {children[c][0]} ({type(module).__name__}) lies between it and the "
                              "next Linear/Conv2d; name the layer right before the next Linear/Conv2d (only "
                              "dropout, flatten and average pooling may follow it)")
        c += 1
    if c == len(children):
        raise FuFastError(f"layer {name!r} is the network's output; only hidden layers can be compressed")
    for k in (p, c):
        module = children[k][1]
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise FuFastError(f"{children[k][0]}: compress handles ungrouped, zero-padded convolutions only")
    producer = children[p][1]
    kind = "conv" if isinstance(producer, nn.Conv2d) else "linear"
    consumer = children[c][1]
    if isinstance(consumer, nn.Conv2d) and consumer.padding != (0, 0) and consumer.padding != "valid":
        notes.append("padding")
    return Stage(name, kind, p, i, c, notes)


def units_of(children, stage: Stage) -> int:
    producer = children[stage.producer][1]
    return producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels


def consumer_view(children, stage: Stage) -> tuple[torch.Tensor, int]:
    """The consumer's weight as (out, units, R) and R: R = 1 (Linear on the units), the spatial
    positions per unit (Linear after Flatten) or the kernel's kh*kw (Conv2d)."""
    consumer = children[stage.consumer][1]
    units = units_of(children, stage)
    weight = consumer.weight
    if isinstance(consumer, nn.Linear):
        if weight.shape[1] % units:
            raise FuFastError(f"{children[stage.consumer][0]} reads {weight.shape[1]} features, not a multiple of "
                              f"the {units} units of {stage.layer}")
        r = weight.shape[1] // units
        return weight.reshape(weight.shape[0], units, r), r
    if weight.shape[1] != units:
        raise FuFastError(f"{children[stage.consumer][0]} reads {weight.shape[1]} channels, not the {units} "
                          f"of {stage.layer}")
    return weight.reshape(weight.shape[0], units, -1), weight.shape[2] * weight.shape[3]


def apply_consumer(children, stage: Stage, x_mid: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """The consumer with the given weight (in the (out, units, R) view) and bias."""
    consumer = children[stage.consumer][1]
    if isinstance(consumer, nn.Linear):
        return F.linear(x_mid, weight.reshape(weight.shape[0], -1), bias)
    return F.conv2d(x_mid, weight.reshape(consumer.weight.shape), bias, consumer.stride, consumer.padding,
                    consumer.dilation)


def contributions(children, stage: Stage, x_mid: torch.Tensor, weight: torch.Tensor, units) -> torch.Tensor:
    """What each unit in ``units`` adds to the consumer's output, shape (len(units), N, *out):
    the consumer is linear in its input, so dropping unit u subtracts exactly this."""
    consumer = children[stage.consumer][1]
    units = torch.as_tensor(units, dtype=torch.long, device=weight.device)
    n, count = x_mid.shape[0], weight.shape[1]
    if isinstance(consumer, nn.Linear):
        xm = x_mid.reshape(n, count, -1)[:, units]
        return torch.einsum("nup,oup->uno", xm, weight[:, units])
    kernel = consumer.weight.shape
    grouped = weight[:, units].transpose(0, 1).reshape(len(units) * kernel[0], 1, kernel[2], kernel[3])
    y = F.conv2d(x_mid[:, units], grouped, None, consumer.stride, consumer.padding, consumer.dilation,
                 groups=len(units))
    return y.reshape(n, len(units), kernel[0], *y.shape[2:]).transpose(0, 1)


def run(children, start: int, stop: int, x: torch.Tensor) -> torch.Tensor:
    for _, module in children[start:stop]:
        x = module(x)
    return x


def shrink(model: nn.Sequential, children, stage: Stage, keep: torch.Tensor,
           consumer_weight: torch.Tensor | None = None, consumer_bias: torch.Tensor | None = None) -> None:
    """Keep only the units ``keep`` (sorted indices) of the stage's layer, in place.

    ``consumer_weight`` (the (out, units, R) view, full width) and ``consumer_bias`` replace the
    consumer's before its columns are cut: the refactorisation's rewritten weights.
    """
    keep = keep.to(device=children[stage.producer][1].weight.device, dtype=torch.long)
    producer_name, producer = children[stage.producer]
    with torch.no_grad():
        setattr(model, producer_name, _cut_rows(producer, keep))
        for k in range(stage.producer + 1, stage.index + 1):
            name, module = children[k]
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(model, name, _cut_norm(module, keep))
        consumer_name, consumer = children[stage.consumer]
        weight, r = consumer_view(children, stage)
        if consumer_weight is not None:
            weight = consumer_weight
        bias = consumer.bias if consumer_bias is None else consumer_bias
        setattr(model, consumer_name, _cut_columns(consumer, weight[:, keep], r, bias))
    children[:] = list(model.named_children())


def _cut_rows(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    factory = {"dtype": module.weight.dtype, "device": module.weight.device}
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        new = nn.Linear(module.in_features, len(keep), bias=bias, **factory)
    else:
        new = nn.Conv2d(module.in_channels, len(keep), module.kernel_size, module.stride, module.padding,
                        module.dilation, bias=bias, **factory)
    new.weight.copy_(module.weight[keep])
    if bias:
        new.bias.copy_(module.bias[keep])
    new.train(module.training)
    return new


def _cut_norm(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(module)(len(keep), eps=module.eps, momentum=module.momentum, affine=module.affine,
                       track_running_stats=module.track_running_stats,
                       dtype=module.running_mean.dtype if module.running_mean is not None else None,
                       device=keep.device)
    for key, value in list(module.named_parameters()) + list(module.named_buffers()):
        if value.dim() == 1 and value.shape[0] == module.num_features:
            getattr(new, key).copy_(value[keep])
        elif value.dim() == 0:
            getattr(new, key).copy_(value)
    new.train(module.training)
    return new


def _cut_columns(module: nn.Module, weight: torch.Tensor, r: int, bias: torch.Tensor | None) -> nn.Module:
    """The consumer reading only the kept units; ``weight`` is (out, kept, R)."""
    factory = {"dtype": module.weight.dtype, "device": module.weight.device}
    kept = weight.shape[1]
    if isinstance(module, nn.Linear):
        new = nn.Linear(kept * r, module.out_features, bias=bias is not None, **factory)
        new.weight.copy_(weight.reshape(module.out_features, -1))
    else:
        new = nn.Conv2d(kept, module.out_channels, module.kernel_size, module.stride, module.padding,
                        module.dilation, bias=bias is not None, **factory)
        new.weight.copy_(weight.reshape(module.out_channels, kept, *module.kernel_size))
    if bias is not None:
        new.bias.copy_(bias)
    new.train(module.training)
    return new
