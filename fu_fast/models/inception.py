"""Inception-v3 (Szegedy et al. 2016) with a width factor on every conv's filters.

The layout, module names and channel counts at width 1 are torchvision's Inception3 without the
auxiliary head and with transform_input=False (23,834,568 parameters with 1000 classes; every
parameter shape equal). torchvision hard-codes its channel counts, hence this compact rewrite.
Batch norm follows the paper's TensorFlow setting: eps 0.001 and a moving-average decay of
0.9997, i.e. torch momentum 1 - 0.9997 = 3e-4. The pooling branches average with zero padding
counted in, as torchvision's do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FuFastError
from ._common import scaled
from .registry import IMAGENET_OPTIONS, register_model

MIN_INPUT_SIZE = 75   # the smallest image side whose feature maps stay non-empty down to Mixed_7c (1x1)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001, momentum=3e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35x35 module (Mixed_5b/5c/5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, in_channels: int, pool_features: int, width: float):
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch1x1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, c(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, c(pool_features), kernel_size=1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, in_channels: int, width: float):
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch3x3 = BasicConv2d(in_channels, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, stride=2)
        self.out_channels = c(384) + c(96) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """17x17 module (Mixed_6b-6e) with factorised 7x7 convolutions of ``channels_7x7`` filters."""

    def __init__(self, in_channels: int, channels_7x7: int, width: float):
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        c7 = c(channels_7x7)
        row, col = {"kernel_size": (1, 7), "padding": (0, 3)}, {"kernel_size": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, c(192), **col)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), **row)
        self.branch_pool = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            self.branch7x7dbl_5(self.branch7x7dbl_4(double)),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, in_channels: int, width: float):
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch3x3_1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), kernel_size=3, stride=2)
        self.out_channels = c(320) + c(192) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(seven),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionE(nn.Module):
    """8x8 module (Mixed_7b/7c) with expanded 1x3 and 3x1 branches."""

    def __init__(self, in_channels: int, width: float):
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        row, col = {"kernel_size": (1, 3), "padding": (0, 1)}, {"kernel_size": (3, 1), "padding": (1, 0)}
        self.branch1x1 = BasicConv2d(in_channels, c(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, c(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), **row)
        self.branch3x3_2b = BasicConv2d(c(384), c(384), **col)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), **row)
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), **col)
        self.branch_pool = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(_avg_pool(x)),
        ], 1)


# (name, filters at width 1, conv arguments)
STEM = (("Conv2d_1a_3x3", 32, {"kernel_size": 3, "stride": 2}),
        ("Conv2d_2a_3x3", 32, {"kernel_size": 3}),
        ("Conv2d_2b_3x3", 64, {"kernel_size": 3, "padding": 1}),
        ("Conv2d_3b_1x1", 80, {"kernel_size": 1}),
        ("Conv2d_4a_3x3", 192, {"kernel_size": 3}))
# (name, class, arguments between in_channels and width): pool features, 7x7 channels
MODULES = (("Mixed_5b", InceptionA, (32,)), ("Mixed_5c", InceptionA, (64,)), ("Mixed_5d", InceptionA, (64,)),
           ("Mixed_6a", InceptionB, ()),
           ("Mixed_6b", InceptionC, (128,)), ("Mixed_6c", InceptionC, (160,)),
           ("Mixed_6d", InceptionC, (160,)), ("Mixed_6e", InceptionC, (192,)),
           ("Mixed_7a", InceptionD, ()), ("Mixed_7b", InceptionE, ()), ("Mixed_7c", InceptionE, ()))
VARIED_LAYER = "Mixed_5d"   # inception_v3_layer: the third 35x35 module, "mixed 2" in the paper


class Inception3(nn.Module):
    """torchvision's Inception3 layout (no auxiliary head) with a width factor.

    Args:
        width: multiplies the filters of every conv (stem convs and every Mixed module's branches).
        varied: only the module of this name (a stem conv or Mixed module) gets ``width``; the
            others stay at width 1, except that the convs reading its output follow its
            channel count.
    """

    def __init__(self, width: float, *, num_classes: int, dropout: float, varied: str | None = None):
        super().__init__()

        def width_of(name: str) -> float:
            return width if varied in (None, name) else 1.0

        channels = 3
        for name, out_channels, conv in STEM:
            out_channels = scaled(out_channels, width_of(name))
            setattr(self, name, BasicConv2d(channels, out_channels, **conv))
            channels = out_channels
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)   # after Conv2d_2b_3x3
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)   # after Conv2d_4a_3x3
        for name, module, extra in MODULES:
            mixed = module(channels, *extra, width_of(name))
            setattr(self, name, mixed)
            channels = mixed.out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.analysis_layers = [name for name, _, _ in MODULES]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x))))
        for name, _, _ in MODULES:
            x = getattr(self, name)(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# RMSProp with TF's settings (decay 0.9, momentum 0.9, epsilon 1.0), 0.045 decayed by 0.94 every
# 2 epochs: Szegedy et al.'s schedule, which the paper's 0.045 start follows;
# docs/models-and-training.md says how the paper's own text differs.
TRAINING = dict(data="imagenet", optimizer="rmsprop", lr=0.045, schedule="exp:0.94/2", batch_size=256, epochs=90,
                weight_decay=4e-5, augment=True, patience=None)
OPTIONS = {"init": "truncated_normal:0.1", **IMAGENET_OPTIONS, "input_size": 299}
# Why fu_fast.compress cannot thin it: a module's output channels are read by several branches.
BRANCHES = "its modules concatenate parallel branches, each read by several convolutions"


@register_model("inception_v3", options=OPTIONS, training=TRAINING, training_options={"input_size": 299},
                compress_refusal=BRANCHES)
def inception_v3(width: float, *, num_classes: int, dropout: float, input_size: int) -> Inception3:
    """Every conv scaled; analysis layers Mixed_5b ... Mixed_7c."""
    _check_input_size(input_size)
    return Inception3(width, num_classes=num_classes, dropout=dropout)


@register_model("inception_v3_layer", options=OPTIONS, training=TRAINING, training_options={"input_size": 299},
                compress_refusal=BRANCHES)
def inception_v3_layer(width: float, *, num_classes: int, dropout: float, input_size: int) -> Inception3:
    """Width 1 except Mixed_5d (288 channels at width 1), the one analysis layer. The convs that
    read its output follow its channel count: Mixed_6a's, and, since Mixed_6a's max-pool branch
    passes those channels on, Mixed_6b's input convs."""
    _check_input_size(input_size)
    model = Inception3(width, num_classes=num_classes, dropout=dropout, varied=VARIED_LAYER)
    model.analysis_layers = [VARIED_LAYER]
    return model


def _check_input_size(input_size: int) -> None:
    if input_size < MIN_INPUT_SIZE:
        raise FuFastError(f"input_size {input_size} is too small for Inception-v3: "
                          f"its feature maps need images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
