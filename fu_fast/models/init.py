"""Weight initialisations (docs/models-and-training.md: Glorot, He, LeCun, each normal or uniform, a Gaussian of a
given std, a truncated normal, and torchvision's ResNet initialisation).

A scheme is a string:

    glorot_normal    std   sqrt(2 / (fan_in + fan_out))
    glorot_uniform   bound sqrt(6 / (fan_in + fan_out))
    he_normal        std   sqrt(2 / fan_in)
    he_uniform       bound sqrt(6 / fan_in)
    lecun_normal     std   sqrt(1 / fan_in)
    lecun_uniform    bound sqrt(3 / fan_in)
    gaussian:STD     N(0, STD^2)
    truncated_normal:STD
                     N(0, STD^2) truncated at +-2 STD, as TensorFlow's truncated_normal (the
                     paper's Inception-v3 setting). Cutting the tails makes the actual std
                     STD * sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)) ~= 0.880 STD (truncated_std).
    torchvision      as torchvision's ResNets: conv weights He normal with fan_out
                     (kaiming_normal_(mode="fan_out", nonlinearity="relu")), conv biases 0;
                     Linear layers keep PyTorch's default (weights and biases uniform in
                     +-1/sqrt(fan_in)).

Fans are PyTorch's (and Keras'): a conv's fan_in is in_channels * kernel area, its fan_out
out_channels * kernel area. Every scheme but torchvision sets all conv and linear biases to
zero. Batch norm layers always start at weight 1, bias 0 and fresh running statistics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import FuFastError

# name -> (torch.nn.init function, its keyword arguments), each matching the formula above.
_FAN_SCHEMES = {
    "glorot_normal": (nn.init.xavier_normal_, {}),
    "glorot_uniform": (nn.init.xavier_uniform_, {}),
    "he_normal": (nn.init.kaiming_normal_, {"mode": "fan_in", "nonlinearity": "relu"}),
    "he_uniform": (nn.init.kaiming_uniform_, {"mode": "fan_in", "nonlinearity": "relu"}),
    "lecun_normal": (nn.init.kaiming_normal_, {"mode": "fan_in", "nonlinearity": "linear"}),
    "lecun_uniform": (nn.init.kaiming_uniform_, {"mode": "fan_in", "nonlinearity": "linear"}),
}
_STD_SCHEMES = ("gaussian", "truncated_normal")
TORCHVISION = "torchvision"
TRUNCATION = 2.0   # truncated_normal cuts at +-2 std, as TensorFlow does

SCHEMES = (*_FAN_SCHEMES, TORCHVISION, *(f"{name}:STD" for name in _STD_SCHEMES))
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def canonical(scheme: str) -> str:
    """The scheme in its one spelling (``gaussian:1e-2`` -> ``gaussian:0.01``); FuFastError if
    it is not a scheme."""
    kind, std = _parse(scheme)
    return kind if std is None else f"{kind}:{std!r}"


def truncated_std(std: float) -> float:
    """The standard deviation of N(0, std^2) truncated at +-TRUNCATION std."""
    a = TRUNCATION
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(a / math.sqrt(2))   # 2 Phi(a) - 1
    return std * math.sqrt(1 - 2 * a * pdf / mass)


def initialize(model: nn.Module, scheme: str) -> None:
    """Initialise every conv and linear layer of ``model`` with ``scheme`` (see the module
    docstring), and every batch norm layer to weight 1, bias 0, fresh statistics."""
    kind, std = _parse(scheme)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
        elif isinstance(module, nn.Linear) and kind == TORCHVISION:
            module.reset_parameters()
        elif isinstance(module, _WEIGHTED):
            _init_weight(module.weight, kind, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _init_weight(weight: torch.Tensor, kind: str, std: float | None) -> None:
    if kind == TORCHVISION:
        nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    elif kind == "gaussian":
        nn.init.normal_(weight, 0.0, std)
    elif kind == "truncated_normal":
        nn.init.trunc_normal_(weight, 0.0, std, -TRUNCATION * std, TRUNCATION * std)
    else:
        function, kwargs = _FAN_SCHEMES[kind]
        function(weight, **kwargs)


def _parse(scheme) -> tuple[str, float | None]:
    if isinstance(scheme, str):
        kind, colon, value = scheme.partition(":")
        if not colon and (kind in _FAN_SCHEMES or kind == TORCHVISION):
            return kind, None
        if colon and kind in _STD_SCHEMES:
            try:
                std = float(value)
            except ValueError:
                std = math.nan
            if math.isfinite(std) and std > 0:
                return kind, std
    raise FuFastError(f"unknown init {scheme!r}; choose {', '.join(SCHEMES)} (STD > 0), "
                      "or default for the model's own")
