"""The paper's models with a width factor (docs/models-and-training.md).

    from fu_fast import models
    models.names()                            # mlp, alexnet, resnet56, resnet18, inception_v3, ...
    net = models.build("resnet56", 0.5, init="he_normal", dropout=0.1)
    net.analysis_layers                       # ['layer1.0', ..., 'layer3.8'] (cut points)
    c = net.fu_fast_config                    # {"name", "width", "options"}, JSON-ready
    models.build(c["name"], c["width"], **c["options"])   # the same shapes, freshly initialised

Width multiplies the units of every fully connected layer and the filters of every conv
(inception_v3_layer: only Mixed_5d's); a layer with ``base`` units at width 1 gets
``round(base * width)``, and a width that would leave a layer with none is refused. Options,
all keyword, each with a per-model default:

    init         "default" (the model's own, below) or a scheme of fu_fast.models.init
    dropout      probability (default 0): MLP hidden layer, AlexNet FC layers, ResNets and
                 Inception before the final fc
    num_classes  output logits (mlp: 2, a binary task with argmax labels; CIFAR 10; ImageNet 1000)
    input_dim    mlp only: input features (10; the paper also uses 10000)
    input_size   image models: image side (32 CIFAR, 224 ResNet18, 299 Inception; at least 75 there)
    in_channels  alexnet only: input channels (3; 1 for grey images such as digits)

Default initialisations: MLP gaussian:0.01 and Inception truncated_normal:0.1 (the paper's);
AlexNet and the ResNets "torchvision" (He normal fan_out convs, PyTorch-default fc layers), the
initialisation torchvision gives its ResNets, since the paper names none for them. An explicit
scheme sets biases to zero.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..errors import FuFastError, integer_setting
# Each family registers itself when imported; this order is the paper's, which names() keeps.
from . import mlp, alexnet, resnet_cifar, resnet, inception  # noqa: F401,I001
from .init import canonical, initialize
from . import registry
from .registry import ModelEntry, entry

__all__ = ["names", "entry", "ModelEntry", "build", "analysis_layers", "default_options", "parameter_count",
           "initialize"]


def names() -> list[str]:
    """The model names, in the paper's order."""
    return registry.names()


def default_options(name: str) -> dict:
    """Every option of model ``name`` with its default value ("init" resolved to the scheme)."""
    return dict(entry(name).options)


def build(name: str, width: float = 1.0, **options) -> nn.Module:
    """Model ``name`` at ``width``, initialised, with ``analysis_layers`` and ``fu_fast_config``.

    Parameters are created on torch's current default device (``with torch.device("meta"):``
    builds a shape-only model). FuFastError for an unknown name or option, a bad value, or a
    width that leaves a layer without units.
    """
    model_entry = entry(name)
    builder, defaults = model_entry.builder, model_entry.options
    width = _check_width(width)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise FuFastError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {name}; "
                          f"valid: {', '.join(defaults)}")
    resolved = {key: _check_option(key, value, defaults) for key, value in {**defaults, **options}.items()}
    try:
        model = builder(width, **{key: value for key, value in resolved.items() if key != "init"})
    except FuFastError as e:
        raise FuFastError(f"{name}: {e}") from None
    initialize(model, resolved["init"])
    model.fu_fast_config = {"name": name, "width": width, "options": resolved}
    return model


def analysis_layers(name_or_model: str | nn.Module) -> list[str]:
    """The default analysed layers (cut points) of a zoo model, by name or of a built model."""
    if isinstance(name_or_model, nn.Module):
        layers = getattr(name_or_model, "analysis_layers", None)
        if layers is None:
            raise FuFastError(f"{type(name_or_model).__name__} declares no analysis_layers (not a zoo "
                              "model); name its layers explicitly")
        return list(layers)
    with torch.device("meta"):   # shapes only: no memory, no initialisation work
        return list(build(name_or_model).analysis_layers)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _check_width(width) -> float:
    if not _is_real(width) or not math.isfinite(width) or width <= 0:
        raise FuFastError(f"width must be a positive finite number (e.g. 0.25, 1, 4), got {width!r}")
    return float(width)


def _check_option(key: str, value, defaults: dict):
    """The option's value, validated and in its canonical form."""
    if key == "init":
        return defaults["init"] if value == "default" else canonical(value)
    if key == "dropout":
        if _is_real(value) and 0 <= value < 1:
            return float(value)
        raise FuFastError(f"dropout must be a probability in [0, 1), got {value!r}")
    if key == "units":   # alexnet's explicit layer sizes
        if value is None:
            return None
        if isinstance(value, (list, tuple)) and len(value) == 4 and all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value):
            return [int(v) for v in value]
        raise FuFastError(f"units must be 4 positive integers (conv1, conv2, fc3, fc4), got {value!r}")
    return integer_setting(value, key, least={"num_classes": 2, "input_dim": 1, "input_size": 1, "in_channels": 1}[key])


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
