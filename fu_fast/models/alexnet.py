"""AlexNet for CIFAR-10 as in Zhang et al. 2017 ("Understanding deep learning requires
rethinking generalization"), whose TensorFlow code uses 'SAME' padding for its convolutions and
max pools and tf.nn.lrn(depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ._common import scaled
from .registry import CIFAR_OPTIONS, register_model

LRN_RADIUS, LRN_ALPHA, LRN_BETA, LRN_BIAS = 2, 2e-5, 0.75, 1.0


def tf_local_response_norm() -> nn.LocalResponseNorm:
    """LRN equal to TensorFlow's tf.nn.lrn(depth_radius=2, bias=1, alpha=2e-5, beta=0.75):

        TF:    b_c = a_c / (k + alpha * sum_{|c'-c| <= r} a_c'^2) ** beta
        torch: b_c = a_c / (k + alpha / size * sum_{|c'-c| <= size//2} a_c'^2) ** beta

    torch divides alpha by the window size and TF does not, so torch gets alpha * size.
    """
    size = 2 * LRN_RADIUS + 1
    return nn.LocalResponseNorm(size, alpha=LRN_ALPHA * size, beta=LRN_BETA, k=LRN_BIAS)


class MaxPool2dSame(nn.Module):
    """Max pooling with TensorFlow's 'SAME' padding: the output side is ceil(side / stride),
    and of an odd total padding TF puts the extra row (column) at the bottom (right). Padded
    values are -inf, so they never win the max."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for side in (x.shape[-1], x.shape[-2]):   # F.pad lists the last dimension first
            total = max((math.ceil(side / self.stride) - 1) * self.stride + self.kernel_size - side, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=-math.inf), self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


def _thin_record(wide: dict, thin: nn.Module) -> dict:
    # Thinned layers shrink independently: their sizes go in the build option units.
    return {**wide, "options": {**wide["options"], "units": list(thin.layer_units())}}


# units: per-layer sizes (conv1, conv2, fc3, fc4) overriding the width's, for thinned models.
# in_channels: 3 for CIFAR-10; 1 for grey images (scikit-learn's digits, with input_size 8).
# epochs is a ceiling: the paper stops early on the validation split.
@register_model("alexnet", options={"init": "torchvision", **CIFAR_OPTIONS, "in_channels": 3, "units": None},
                training=dict(data="cifar10", optimizer="sgd_momentum", lr=0.01, schedule="exp:0.95",
                              batch_size=128, epochs=100, weight_decay=0.0, augment=False, patience=10),
                thin_record=_thin_record)
class AlexNet(nn.Sequential):
    """conv1 5x5/1 (96) -> relu1 -> pool1 3x3/2 -> norm1; conv2 5x5/1 (256) -> relu2 -> pool2 ->
    norm2; fc3 (384) -> relu3 -> drop3; fc4 (192) -> relu4 -> drop4; out (classes). Counts at
    width 1; biases everywhere. Analysis layers: the four hidden layers norm1, norm2, relu3,
    relu4. Dropout, when asked for, acts on the FC layers' outputs (after relu3 and relu4).
    Any input side works (the pools halve it, rounding up: 8x8 digits give 4x4 and 2x2 maps)."""

    def __init__(self, width: float, *, num_classes: int, dropout: float, input_size: int, in_channels: int = 3,
                 units=None):
        # units: explicit (conv1, conv2, fc3, fc4) sizes, for the thinner networks of
        # fu_fast.compress, whose layers shrink independently (no width factor gives them).
        sizes = tuple(units) if units is not None else tuple(scaled(n, width) for n in (96, 256, 384, 192))
        super().__init__(self._layers(sizes, num_classes, dropout, input_size, in_channels))
        self.analysis_layers = ["norm1", "norm2", "relu3", "relu4"]

    def layer_units(self) -> tuple[int, int, int, int]:
        """Filters of conv1 and conv2, features of fc3 and fc4."""
        return (self.conv1.out_channels, self.conv2.out_channels, self.fc3.out_features, self.fc4.out_features)

    @staticmethod
    def _layers(units, num_classes: int, dropout: float, input_size: int, in_channels: int) -> OrderedDict:
        c1, c2, f3, f4 = units
        side = math.ceil(math.ceil(input_size / 2) / 2)   # two SAME pools of stride 2
        return OrderedDict([
            ("conv1", nn.Conv2d(in_channels, c1, 5, padding=2)),   # 'SAME' for an odd kernel at stride 1
            ("relu1", nn.ReLU()),
            ("pool1", MaxPool2dSame(3, 2)),
            ("norm1", tf_local_response_norm()),
            ("conv2", nn.Conv2d(c1, c2, 5, padding=2)),
            ("relu2", nn.ReLU()),
            ("pool2", MaxPool2dSame(3, 2)),
            ("norm2", tf_local_response_norm()),
            ("flatten", nn.Flatten()),
            ("fc3", nn.Linear(c2 * side * side, f3)),
            ("relu3", nn.ReLU()),
            ("drop3", nn.Dropout(dropout)),
            ("fc4", nn.Linear(f3, f4)),
            ("relu4", nn.ReLU()),
            ("drop4", nn.Dropout(dropout)),
            ("out", nn.Linear(f4, num_classes)),
        ])
